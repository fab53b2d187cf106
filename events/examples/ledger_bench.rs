//! Throughput and load-time figures of the embedded ledger (`SqliteEventStore`, `synchronous=FULL`).
//!
//! ```text
//! cargo run --release -p jobledger-events --example ledger_bench
//! ```
//!
//! Every command goes through `execute` (load → decide → append) and counts only once its append
//! is acknowledged, i.e. committed and fsynced. Environment:
//! `LEDGER_BENCH_DIR` (where the database files go; default: the system temp dir — put it on the
//! disk you want to measure), `LEDGER_BENCH_JOBS` (jobs of the 64-client run, default 10,000),
//! `LEDGER_BENCH_LOADS` (how many times the 10,000-event job is loaded, default 21).

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use jobledger_events::event::Capacity;
use jobledger_events::testing::{append_history, build_history, noop_spec};
use jobledger_events::{Command, CommandContext, EventStore, JobId, SqliteEventStore, execute};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The three single-event commands each job gets: submit, queue, launch.
fn job_commands() -> [Command; 3] {
    [
        Command::Submit(noop_spec(3)),
        Command::MarkQueued {
            attempt: 1,
            message_id: "bench-message".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "bench-task".into(),
            capacity: Capacity::Local,
        },
    ]
}

/// Runs `jobs` jobs × 3 commands split over `clients` concurrent clients; returns commands/s.
async fn commands_per_second(
    store: &SqliteEventStore,
    clients: usize,
    jobs: usize,
) -> BenchResult<f64> {
    let per_client = jobs / clients;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let store = store.clone();
        tasks.spawn(async move {
            let actor = format!("api-key:bench-{client}");
            let commands = job_commands();
            for _ in 0..per_client {
                let job = JobId::new();
                for command in &commands {
                    let ctx = CommandContext::new(actor.as_str(), Utc::now());
                    execute(&store, job, command, &ctx).await?;
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok((per_client * clients * 3) as f64 / started.elapsed().as_secs_f64())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let base = std::env::var_os("LEDGER_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let jobs: usize = std::env::var("LEDGER_BENCH_JOBS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir_in(&base)?;
    let db = dir.path().join("bench.db");
    println!(
        "ledger_bench: SQLite WAL, synchronous=FULL, file {}",
        db.display()
    );
    println!(
        "cores: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let loads: usize = std::env::var("LEDGER_BENCH_LOADS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(21)
        .max(1);
    let store = SqliteEventStore::open(&db)?;
    let one = commands_per_second(&store, 1, jobs / 10).await?;
    println!(
        "1 client:   {one:>9.0} commands/s ({} jobs x 3 commands)",
        jobs / 10
    );

    let before = store.writer_stats();
    let many = commands_per_second(&store, 64, jobs).await?;
    let after = store.writer_stats();
    let transactions = after.transactions - before.transactions;
    println!(
        "64 clients: {many:>9.0} commands/s ({jobs} jobs x 3 commands; {transactions} transactions, {:.1} appends per commit)",
        (after.requests - before.requests) as f64 / transactions.max(1) as f64
    );

    let long = JobId::new();
    let history = build_history(long, 9_996);
    append_history(&store, &history, 500).await?;
    let mut times = Vec::new();
    for _ in 0..loads {
        let started = Instant::now();
        let loaded = store.load(long).await?;
        times.push(started.elapsed());
        if loaded.len() != history.len() {
            return Err(
                format!("loaded {} events, appended {}", loaded.len(), history.len()).into(),
            );
        }
    }
    let (fastest, slowest) = (times.iter().min().copied(), times.iter().max().copied());
    println!(
        "load of a {}-event job: median {:.2} ms (min {:.2}, max {:.2}, {loads} runs)",
        history.len(),
        median(times).as_secs_f64() * 1e3,
        fastest.unwrap_or_default().as_secs_f64() * 1e3,
        slowest.unwrap_or_default().as_secs_f64() * 1e3,
    );
    let mut commands = Vec::new();
    for done in 0..11 {
        let ctx = CommandContext::new("worker:bench", Utc::now());
        let command = Command::ReportProgress {
            attempt: 1,
            done: 9_996 + done,
            failed: 0,
            total: 9_997 + 11,
            checkpoint_uri: None,
        };
        let started = Instant::now();
        execute(&store, long, &command, &ctx).await?;
        commands.push(started.elapsed());
    }
    println!(
        "one command on that job (load 10k + decide + append): median {:.2} ms",
        median(commands).as_secs_f64() * 1e3
    );

    let events = store.writer_stats().events;
    drop(store);
    // Fold the WAL into the main file so the size is the data's, not the log's.
    let conn = rusqlite::Connection::open(&db)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    drop(conn);
    let bytes = file_len(&db) + file_len(&db.with_extension("db-wal"));
    println!(
        "disk: {bytes} bytes for {stored} events = {:.0} bytes/event (this run appended {events})",
        bytes as f64 / stored.max(1) as f64
    );
    Ok(())
}
