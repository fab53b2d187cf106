//! The worker process: one attempt of one job, as ECS or `jobledger dev` starts it.
//!
//! Environment: `JOB_ID`, `ATTEMPT`, and `JOBLEDGER_DATA_DIR` (local ledger and objects) or, on
//! ECS, `EVENTS_TABLE` + `RESULTS_BUCKET` (DynamoDB ledger, S3 objects; feature `aws`); optional
//! `WORKER_*` settings (see `WorkerEnv::from_lookup`). SIGTERM or Ctrl-C checkpoints and stops.
//! Exit status: 0 when the attempt ended cleanly (succeeded, cancelled, interrupted, refused),
//! 1 when it failed, 2 when the environment is unusable.

use std::process::ExitCode;

use anyhow::Context as _;
use jobledger_events::SqliteEventStore;
use tokio::sync::watch;

use crate::config::WorkerEnv;
use crate::objects::FsObjectStore;
use crate::runtime::{AttemptOutcome, run_attempt};

/// Runs the attempt named by the environment and maps the outcome to the exit status.
pub async fn main_from_env() -> ExitCode {
    let env = match WorkerEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(2);
        }
    };
    match run(env).await {
        Ok(outcome) => {
            println!("{}", describe(&outcome));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env: WorkerEnv) -> anyhow::Result<AttemptOutcome> {
    if let Some(aws) = &env.aws {
        return run_on_aws(&env, aws).await;
    }
    let ledger = env.data_dir.join("ledger.sqlite3");
    let store = SqliteEventStore::open(&ledger)
        .with_context(|| format!("opening the ledger {}", ledger.display()))?;
    let objects =
        FsObjectStore::new(env.data_dir.join("objects")).context("opening the object store")?;
    let rx = stop_requests();
    Ok(run_attempt(&store, &objects, env.job_id, env.attempt, &env.config, rx).await?)
}

/// Stop requests (SIGTERM, Ctrl-C) as the watch channel the runtime polls.
fn stop_requests() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let signal = stop_signal();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("stop signal received");
        tx.send_replace(true);
    });
    rx
}

/// The ECS task: the DynamoDB ledger and the S3 bucket the task's environment names.
#[cfg(feature = "aws")]
async fn run_on_aws(
    env: &WorkerEnv,
    aws: &crate::config::AwsStorage,
) -> anyhow::Result<AttemptOutcome> {
    use jobledger_events::{DynamoEventStore, EventsTables};
    let sdk = crate::aws_clients::sdk_config().await;
    let s3 = crate::aws_clients::s3_client(&sdk);
    // No idempotency table: a worker claims no idempotency keys.
    let tables = EventsTables {
        events: aws.events_table.clone(),
        idempotency: None,
        payload_bucket: Some(aws.results_bucket.clone()),
    };
    let store = DynamoEventStore::new(aws_sdk_dynamodb::Client::new(&sdk), s3.clone(), tables);
    let objects = crate::s3::S3ObjectStore::new(s3, aws.results_bucket.clone());
    let rx = stop_requests();
    Ok(run_attempt(&store, &objects, env.job_id, env.attempt, &env.config, rx).await?)
}

/// Without the `aws` feature the worker cannot reach DynamoDB: say so rather than run locally.
#[cfg(not(feature = "aws"))]
async fn run_on_aws(
    _env: &WorkerEnv,
    aws: &crate::config::AwsStorage,
) -> anyhow::Result<AttemptOutcome> {
    anyhow::bail!(
        "EVENTS_TABLE={} is set, but this worker was built without the `aws` feature",
        aws.events_table
    )
}

/// Resolves on SIGTERM (ECS stop, Spot reclaim) or SIGINT (Ctrl-C).
///
/// SIGTERM is registered before this returns, so a signal sent as soon as the attempt starts is
/// not lost. A signal that cannot be watched never fires: failing to register must not look like
/// a request to stop.
pub fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGTERM"))
        .ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
}

fn describe(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Succeeded {
            result_uri,
            items_ok,
            items_failed,
            ..
        } => {
            format!("succeeded: {items_ok} ok, {items_failed} failed, results at {result_uri}")
        }
        AttemptOutcome::Refused(r) => format!("attempt refused: {r}"),
        AttemptOutcome::Cancelled { .. } => "job cancelled".to_string(),
        AttemptOutcome::Interrupted { checkpoint_uri } => {
            format!(
                "interrupted; checkpoint {}",
                checkpoint_uri.as_deref().unwrap_or("(none)")
            )
        }
        AttemptOutcome::Superseded(r) => format!("stopped: the job moved on ({r})"),
    }
}
