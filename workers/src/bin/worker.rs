//! `worker`: runs one attempt of one job, as ECS (or `jobledger dev`) starts it.
//! See `jobledger_workers::process` for the environment and exit codes.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    jobledger_workers::process::main_from_env().await
}
