//! `bench-peers`: the peers jobledger is compared with, measured by the `jobledger-bench`
//! driver (which runs this binary once per figure and reads its `FIGURE` lines).

mod apalis_queue;
mod cqrs_job;
mod figures;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::figures::Durability;

/// Command line: one measurement per run.
#[derive(Parser, Debug)]
#[command(about = "apalis and cqrs-es measurements for jobledger-bench")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

/// The measurements.
#[derive(Subcommand, Debug)]
enum What {
    /// apalis + apalis-sqlite end to end with a no-op worker.
    Apalis {
        #[arg(long)]
        jobs: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 300)]
        cap_s: u64,
        #[arg(long, value_enum)]
        durability: Durability,
    },
    /// cqrs-es + sqlite-es: jobs × 3 commands.
    CqrsCommands {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        jobs: usize,
        #[arg(long, default_value_t = 300)]
        cap_s: u64,
        #[arg(long, value_enum)]
        durability: Durability,
    },
    /// cqrs-es + sqlite-es: load of a 10,000-event aggregate.
    CqrsLoad {
        #[arg(long, default_value_t = 11)]
        loads: usize,
        #[arg(long, value_enum)]
        durability: Durability,
    },
    /// Print the SQLite version the peers link.
    SqliteVersion,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().what {
        What::Apalis {
            jobs,
            clients,
            cap_s,
            durability,
        } => apalis_queue::measure(&apalis_queue::ApalisRun {
            jobs,
            clients,
            cap: Duration::from_secs(cap_s),
            durability,
        })
        .await
        .map(|_| ()),
        What::CqrsCommands {
            clients,
            jobs,
            cap_s,
            durability,
        } => cqrs_job::commands(clients, jobs, Duration::from_secs(cap_s), durability)
            .await
            .map(|_| ()),
        What::CqrsLoad { loads, durability } => cqrs_job::load(loads, durability).await,
        What::SqliteVersion => {
            let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
            let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
                .fetch_one(&pool)
                .await?;
            println!("{version}");
            Ok(())
        }
    }
}
