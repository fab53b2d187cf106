//! `replay`: the auditor's tool on its own (also reachable as `jobledger replay`).

use std::process::ExitCode;

use clap::Parser;
use jobledger_replay::{ReplayCommand, SourceArgs, run_to_exit};

/// Replays job histories: history, state, verify, rebuild, export, import, stats.
#[derive(Parser)]
#[command(name = "replay", version)]
struct Cli {
    #[command(flatten)]
    source: SourceArgs,
    #[command(subcommand)]
    command: ReplayCommand,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    run_to_exit(cli.command, cli.source).await
}
