//! jobledger's own store, measured the way the cqrs-es peer is: N jobs × 3 commands (submit,
//! queue, launch), each through `execute` (load → decide → append, acknowledged only once
//! committed with `synchronous=FULL`), over 1 or many clients; and the load of a 10,000-event job
//! folded into its aggregate (what `execute` does before deciding, and what cqrs-es's
//! `load_aggregate` does).
//!
//! The workload is `jobledger_events::workload`, the code `events/examples/ledger_bench.rs` runs
//! too, so both benches measure the same thing the same way.

use std::path::Path;
use std::time::Duration;

use jobledger_events::SqliteEventStore;
use jobledger_events::workload::{LoadKind, append_long_job, measure_commands, median, time_loads};

use crate::figures::emit;

/// Runs `jobs` jobs × 3 commands over `clients` clients (after an untimed warm-up) until done or
/// `cap`; emits `ledger.commands.<clients>.per_s` and `.per_cpu_s`, and returns how many
/// commands were acknowledged in the timed run.
pub async fn commands(
    dir: &Path,
    clients: usize,
    jobs: usize,
    cap: Duration,
) -> anyhow::Result<usize> {
    let store = SqliteEventStore::open(dir.join("ledger.sqlite3"))?;
    let clients = clients.max(1);
    let run = measure_commands(&store, clients, jobs, cap).await?;
    emit(format!("ledger.commands.{clients}.per_s"), run.per_s());
    emit(
        format!("ledger.commands.{clients}.per_cpu_s"),
        run.per_cpu_s(),
    );
    emit(format!("ledger.commands.{clients}.done"), run.count as f64);
    Ok(run.count)
}

/// Appends a 10,000-event job, then times `loads` loads of it (after one untimed), folded into
/// the aggregate and read whole; emits the medians as `ledger.load10k.ms` (aggregate) and
/// `ledger.load10k_history.ms`, and the CPU time per load.
pub async fn load(dir: &Path, loads: usize) -> anyhow::Result<()> {
    let store = SqliteEventStore::open(dir.join("ledger.sqlite3"))?;
    let (job_id, events) = append_long_job(&store).await?;
    let loads = loads.max(1);
    for (kind, key) in [
        (LoadKind::Aggregate, "ledger.load10k"),
        (LoadKind::History, "ledger.load10k_history"),
    ] {
        let (times, span) = time_loads(&store, job_id, events, loads, kind).await?;
        emit(format!("{key}.ms"), median(&times).as_secs_f64() * 1e3);
        emit(
            format!("{key}.cpu_ms"),
            span.cpu.as_secs_f64() * 1e3 / loads as f64,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_command_of_every_job_is_acknowledged_even_when_jobs_do_not_split_evenly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let acknowledged = commands(dir.path(), 4, 10, Duration::from_secs(60))
            .await
            .expect("commands run");
        assert_eq!(acknowledged, 30);
        let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).expect("open");
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .expect("count");
        let warm_up = jobledger_events::workload::warm_up_jobs(4) as i64 * 3;
        assert_eq!(stored, warm_up + 30);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zero_cap_acknowledges_nothing_and_does_not_fail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let acknowledged = commands(dir.path(), 2, 10, Duration::ZERO)
            .await
            .expect("commands run");
        assert_eq!(acknowledged, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_in_a_missing_directory_is_an_error() {
        let err = commands(
            Path::new("/nonexistent/bench"),
            1,
            1,
            Duration::from_secs(5),
        )
        .await
        .expect_err("cannot open");
        assert!(!err.to_string().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_long_job_loads_back_whole_and_running() {
        let dir = tempfile::tempdir().expect("temp dir");
        // `load` fails unless all 10,000 events come back, and fold to a RUNNING job.
        load(dir.path(), 1).await.expect("load");
    }
}
