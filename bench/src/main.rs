//! `jobledger-bench`: jobledger side by side with apalis (job queue on SQLite) and cqrs-es
//! (event sourcing on SQLite), measured in one run on one machine. `scripts/bench` builds and
//! runs it; see `BENCHMARKS.md`.
//!
//! The driver runs every measurement in its own child process (this binary's `measure …` for
//! jobledger, `bench-peers …` for the peers), so each has its own peak memory and a crash of one
//! does not lose the others; it prints one table of medians.

mod dev_stack;
mod figures;
mod ledger;
mod machine;
mod plan;
mod replay_fold;
mod run;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Command line of the driver.
#[derive(Parser, Debug)]
#[command(about = "jobledger benchmarked side by side with apalis and cqrs-es")]
struct Cli {
    #[command(subcommand)]
    measure: Option<Top>,
    /// A smoke run: 1,000 and 10,000 jobs, 1,000 × 3 commands, 100,000 events, one run.
    #[arg(long)]
    quick: bool,
    /// Repetitions (the table shows medians); default 3, or 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Override the time cap of every end-to-end measurement, in seconds.
    #[arg(long)]
    cap_s: Option<u64>,
    /// The `jobledger` binary (release build); default: next to this one.
    #[arg(long)]
    jobledger_bin: Option<PathBuf>,
    /// The `bench-peers` binary; default: next to this one.
    #[arg(long)]
    peers_bin: Option<PathBuf>,
    /// Also write the report (machine, durability, table) to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The hidden entry points the driver runs as child processes.
#[derive(Subcommand, Debug)]
enum Top {
    /// Measure one jobledger figure (run by the driver).
    #[command(subcommand, hide = true)]
    Measure(Measure),
}

/// One jobledger measurement; prints `FIGURE` lines.
#[derive(Subcommand, Debug)]
enum Measure {
    /// End to end through `jobledger dev` over HTTP.
    Dev {
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        cap_s: u64,
        #[arg(long)]
        bin: PathBuf,
    },
    /// Commands/s through `execute` on the SQLite store.
    Commands {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        cap_s: u64,
    },
    /// Load + fold of a 10,000-event job.
    Load {
        #[arg(long)]
        loads: usize,
    },
    /// Replay fold, verify, import and rebuild.
    Replay {
        #[arg(long)]
        events: u64,
    },
}

async fn measure(m: Measure) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match m {
        Measure::Dev {
            jobs,
            clients,
            cap_s,
            bin,
        } => {
            dev_stack::measure(&dev_stack::DevRun {
                bin,
                jobs,
                clients,
                cap: Duration::from_secs(cap_s),
            })
            .await
        }
        Measure::Commands {
            clients,
            jobs,
            cap_s,
        } => ledger::commands(dir.path(), clients, jobs, Duration::from_secs(cap_s))
            .await
            .map(|_| ()),
        Measure::Load { loads } => ledger::load(dir.path(), loads).await,
        Measure::Replay { events } => replay_fold::measure(dir.path(), events).await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Top::Measure(m)) = cli.measure {
        return measure(m).await;
    }
    let mut plan = if cli.quick {
        plan::Plan::quick()
    } else {
        plan::Plan::full()
    };
    if let Some(runs) = cli.runs {
        plan.runs = runs.max(1);
    }
    if let Some(cap) = cli.cap_s {
        plan.caps = vec![Duration::from_secs(cap)];
        plan.command_cap = Duration::from_secs(cap);
    }
    let bins = run::Binaries {
        jobledger: cli
            .jobledger_bin
            .unwrap_or_else(|| plan::sibling("jobledger")),
        bench: std::env::current_exe()?,
        peers: cli
            .peers_bin
            .unwrap_or_else(|| plan::sibling("bench-peers")),
    };
    let report = run::run(&plan, &bins)?;
    println!("{}", report.markdown);
    if let Some(out) = cli.out {
        std::fs::write(&out, &report.markdown)?;
        eprintln!("report written to {}", out.display());
    }
    if !report.failures.is_empty() {
        anyhow::bail!(
            "{} measurement(s) failed (see above)",
            report.failures.len()
        );
    }
    Ok(())
}
