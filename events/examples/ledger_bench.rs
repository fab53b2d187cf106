//! Throughput and load-time figures of the embedded ledger (`SqliteEventStore`, `synchronous=FULL`).
//!
//! ```text
//! cargo run --release -p jobledger-events --example ledger_bench
//! ```
//!
//! The workload is `jobledger_events::workload`, the same code the side-by-side bench
//! (`bench/src/ledger.rs`, `scripts/bench`) runs, so both print the same figures: commands/s
//! (each through `execute`, counted once its append is committed and fsynced) with 1 and 64
//! clients, each on a fresh store after an untimed warm-up; and the load of a 10,000-event job,
//! whole and folded into its aggregate. Every rate is given per second and per CPU-second of the
//! process. Environment: `LEDGER_BENCH_DIR` (where the database files go; default: the system
//! temp dir — put it on the disk you want to measure), `LEDGER_BENCH_JOBS` (jobs of each commands
//! run, default 10,000), `LEDGER_BENCH_LOADS` (timed loads of the long job, default 21).

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use jobledger_events::workload::{
    LONG_JOB_PROGRESS_EVENTS, LoadKind, append_long_job, measure_commands, median, time_loads,
    warm_up_jobs,
};
use jobledger_events::{Command, CommandContext, SqliteEventStore, execute};

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn env_usize(name: &str, default: usize) -> BenchResult<usize> {
    match std::env::var(name) {
        Ok(s) => Ok(s
            .parse()
            .map_err(|e| format!("{name}={s:?} is not a count: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One commands figure on a fresh store in `dir`.
async fn commands(dir: &Path, clients: usize, jobs: usize) -> BenchResult<()> {
    let store = SqliteEventStore::open(dir.join(format!("commands-{clients}.db")))?;
    let before = store.writer_stats();
    let run = measure_commands(&store, clients, jobs, Duration::from_secs(3_600)).await?;
    let after = store.writer_stats();
    let transactions = after.transactions - before.transactions;
    println!(
        "{clients:>2} client(s): {:>7.0} commands/s, {:>7.0} per CPU-s ({jobs} jobs x 3 after {} warm-up jobs; {:.2} s wall, {:.2} s CPU; {:.1} appends per commit, {:.2} ms per COMMIT)",
        run.per_s(),
        run.per_cpu_s(),
        warm_up_jobs(clients),
        run.wall.as_secs_f64(),
        run.cpu.as_secs_f64(),
        (after.requests - before.requests) as f64 / transactions.max(1) as f64,
        (after.commit_time - before.commit_time).as_secs_f64() * 1e3 / transactions.max(1) as f64,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let base = std::env::var_os("LEDGER_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let jobs = env_usize("LEDGER_BENCH_JOBS", 10_000)?;
    let loads = env_usize("LEDGER_BENCH_LOADS", 21)?.max(1);
    let dir = tempfile::tempdir_in(&base)?;
    println!(
        "ledger_bench: SQLite WAL, synchronous=FULL, files in {}",
        dir.path().display()
    );
    println!(
        "cores: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    for clients in [1, 64] {
        commands(dir.path(), clients, jobs).await?;
    }

    let db = dir.path().join("load.db");
    let store = SqliteEventStore::open(&db)?;
    let (long, events) = append_long_job(&store).await?;
    for (kind, what) in [
        (
            LoadKind::History,
            "load of a 10,000-event job (every event)",
        ),
        (
            LoadKind::Aggregate,
            "load + fold of a 10,000-event aggregate",
        ),
    ] {
        let (times, span) = time_loads(&store, long, events, loads, kind).await?;
        let (fastest, slowest) = (times.iter().min(), times.iter().max());
        println!(
            "{what}: median {:.2} ms (min {:.2}, max {:.2}; {loads} runs); {:.2} ms CPU per load",
            ms(median(&times)),
            ms(fastest.copied().unwrap_or_default()),
            ms(slowest.copied().unwrap_or_default()),
            ms(span.cpu) / loads as f64,
        );
    }
    let mut commands = Vec::new();
    for done in 0..11 {
        let ctx = CommandContext::new("worker:bench", Utc::now());
        let command = Command::ReportProgress {
            attempt: 1,
            done: LONG_JOB_PROGRESS_EVENTS as u64 + done,
            failed: 0,
            total: LONG_JOB_PROGRESS_EVENTS as u64 + 1 + 11,
            checkpoint_uri: None,
        };
        let started = Instant::now();
        execute(&store, long, &command, &ctx).await?;
        commands.push(started.elapsed());
    }
    println!(
        "one command on that job (load 10k + decide + append): median {:.2} ms",
        ms(median(&commands))
    );

    drop(store);
    // Fold the WAL into the main file so the size is the data's, not the log's.
    let conn = rusqlite::Connection::open(&db)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    drop(conn);
    let bytes = file_len(&db) + file_len(&db.with_extension("db-wal"));
    println!(
        "disk: {bytes} bytes for {stored} events = {:.0} bytes/event",
        bytes as f64 / stored.max(1) as f64
    );
    Ok(())
}
