//! jobledger's own store, measured the way the cqrs-es peer is: N jobs × 3 commands (submit,
//! queue, launch), each through `execute` (load → decide → append, acknowledged only once
//! committed with `synchronous=FULL`), over 1 or many clients; and the load of a 10,000-event job
//! folded back into its aggregate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use jobledger_events::event::Capacity;
use jobledger_events::testing::{append_history, build_history, noop_spec};
use jobledger_events::{
    Command, CommandContext, EventStore, Job, JobId, SqliteEventStore, Status, execute,
};

use crate::figures::emit;

/// The three single-event commands each job gets, as in `events/examples/ledger_bench.rs`.
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

/// Runs `jobs` jobs × 3 commands over `clients` clients until done or `cap`; emits
/// `ledger.commands.<clients>.per_s` and returns how many commands were acknowledged.
pub async fn commands(
    dir: &Path,
    clients: usize,
    jobs: usize,
    cap: Duration,
) -> anyhow::Result<usize> {
    let store = SqliteEventStore::open(dir.join("ledger.sqlite3"))?;
    let clients = clients.max(1);
    let per_client = jobs.div_ceil(clients);
    let started = Instant::now();
    let deadline = started + cap;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let store = store.clone();
        let mine = per_client.min(jobs.saturating_sub(client * per_client));
        tasks.spawn(async move {
            let actor = format!("api-key:bench-{client}");
            let commands = job_commands();
            let mut acknowledged = 0usize;
            for _ in 0..mine {
                if Instant::now() >= deadline {
                    break;
                }
                let job = JobId::new();
                for command in &commands {
                    let ctx = CommandContext::new(actor.as_str(), Utc::now());
                    execute(&store, job, command, &ctx).await?;
                    acknowledged += 1;
                }
            }
            Ok::<_, anyhow::Error>(acknowledged)
        });
    }
    let mut acknowledged = 0;
    while let Some(joined) = tasks.join_next().await {
        acknowledged += joined??;
    }
    let secs = started.elapsed().as_secs_f64();
    emit(
        format!("ledger.commands.{clients}.per_s"),
        acknowledged as f64 / secs,
    );
    emit(
        format!("ledger.commands.{clients}.done"),
        acknowledged as f64,
    );
    Ok(acknowledged)
}

/// Appends a 10,000-event job, then times `loads` loads of it, each folded into the aggregate;
/// emits the median as `ledger.load10k.ms`.
pub async fn load(dir: &Path, loads: usize) -> anyhow::Result<()> {
    let store = SqliteEventStore::open(dir.join("ledger.sqlite3"))?;
    let job_id = JobId::new();
    // 4 events take the job to RUNNING; 9,996 progress reports make 10,000.
    let history = build_history(job_id, 9_996);
    append_history(&store, &history, 500).await?;
    let mut times = Vec::new();
    for _ in 0..loads.max(1) {
        let started = Instant::now();
        let events = store.load(job_id).await?;
        let mut job = Job::default();
        for e in &events {
            job = job.evolve(&e.decode().context("decoding a stored event")?);
        }
        times.push(started.elapsed());
        if events.len() != history.len() || job.status != Status::Running {
            bail!(
                "loaded {} events into a {:?} job; appended {}",
                events.len(),
                job.status,
                history.len()
            );
        }
    }
    times.sort();
    emit(
        "ledger.load10k.ms",
        times[(times.len() - 1) / 2].as_secs_f64() * 1e3,
    );
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
        assert_eq!(stored, 30);
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
        // `load` fails unless all 10,000 events come back and fold to RUNNING.
        load(dir.path(), 1).await.expect("load");
    }
}
