//! The ledger's benchmark workload (feature `testing`): one definition for the events crate's own
//! bench (`events/examples/ledger_bench.rs`) and the side-by-side bench (`bench/src/ledger.rs`),
//! so both measure the same thing the same way.
//!
//! * Commands: N jobs × 3 single-event commands (submit, queue, launch), each through
//!   [`execute`] (load → decide → append) and counted once its append is acknowledged, spread
//!   over C concurrent clients. A run starts with an untimed warm-up of the same shape, so the
//!   figure is the store's steady state, not a new file's first writes (see [`warm_up_jobs`]).
//! * Loads: a 10,000-event job read back whole ([`LoadKind::History`], `EventStore::load`) or
//!   folded into its aggregate ([`LoadKind::Aggregate`], `EventStore::load_job`, what `execute`
//!   does), timed after one untimed load.
//!
//! Every run reports wall-clock time and the process's CPU time: the machine may be shared, and
//! the rate per CPU-second moves less with its load than the rate per second.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::command::Command;
use crate::event::Capacity;
use crate::execute::{CommandContext, ExecuteError, execute};
use crate::ids::JobId;
use crate::job::Status;
use crate::store::{EventStore, StoreError};
use crate::testing::{append_history, build_history, noop_spec};

/// Progress reports of the long job: with submit, queue, launch and start it has 10,000 events.
pub const LONG_JOB_PROGRESS_EVENTS: usize = 9_996;

/// The three single-event commands each job gets: submit, queue, launch.
pub fn job_commands() -> [Command; 3] {
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

/// Jobs of the untimed warm-up before a measured run with `clients` clients.
///
/// Enough commits to fill SQLite's write-ahead log once (it is checkpointed and restarted after
/// 1,000 pages; each commit writes a few pages per appended event): until then every commit also
/// grows the log file, which costs more per fsync than rewriting it in the steady state.
pub fn warm_up_jobs(clients: usize) -> usize {
    (clients.max(1) * 16).max(100)
}

/// User + system CPU time of this process so far, all threads (Linux `/proc/self/stat`, in clock
/// ticks of 10 ms; zero where that file does not exist).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|s| s.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Duration::from_millis((user + system) * 10),
        _ => Duration::ZERO,
    }
}

/// What a measured run took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timed {
    /// Commands acknowledged (or loads done).
    pub count: usize,
    /// Wall-clock time.
    pub wall: Duration,
    /// CPU time of the whole process (every thread) over the same span.
    pub cpu: Duration,
}

impl Timed {
    /// Count per wall-clock second.
    pub fn per_s(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Count per CPU-second of the process.
    pub fn per_cpu_s(&self) -> f64 {
        self.count as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// Runs `jobs` new jobs × [`job_commands`] over `clients` concurrent clients; a client starts no
/// new job after `deadline`. Returns the commands acknowledged.
pub async fn run_commands<S>(
    store: &S,
    clients: usize,
    jobs: usize,
    deadline: Option<Instant>,
) -> Result<usize, ExecuteError>
where
    S: EventStore + Clone + 'static,
{
    let clients = clients.max(1);
    let per_client = jobs.div_ceil(clients);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let store = store.clone();
        let mine = per_client.min(jobs.saturating_sub(client * per_client));
        tasks.spawn(async move {
            let actor = format!("api-key:bench-{client}");
            let commands = job_commands();
            let mut acknowledged = 0usize;
            for _ in 0..mine {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let job = JobId::new();
                for command in &commands {
                    let ctx = CommandContext::new(actor.as_str(), Utc::now());
                    execute(&store, job, command, &ctx).await?;
                    acknowledged += 1;
                }
            }
            Ok::<_, ExecuteError>(acknowledged)
        });
    }
    let mut acknowledged = 0;
    while let Some(joined) = tasks.join_next().await {
        acknowledged += joined.map_err(|e| StoreError::backend(false, e))??;
    }
    Ok(acknowledged)
}

/// The commands figure: an untimed warm-up of [`warm_up_jobs`], then `jobs` jobs timed, capped
/// at `cap` (the figure is then the rate of what was acknowledged within it).
pub async fn measure_commands<S>(
    store: &S,
    clients: usize,
    jobs: usize,
    cap: Duration,
) -> Result<Timed, ExecuteError>
where
    S: EventStore + Clone + 'static,
{
    run_commands(store, clients, warm_up_jobs(clients), None).await?;
    let (started, cpu) = (Instant::now(), process_cpu());
    let count = run_commands(store, clients, jobs, Some(started + cap)).await?;
    Ok(Timed {
        count,
        wall: started.elapsed(),
        cpu: process_cpu().saturating_sub(cpu),
    })
}

/// Appends the long job the load figures read (its events built in memory, appended in batches
/// of 500); returns its id and length.
pub async fn append_long_job<S: EventStore>(store: &S) -> Result<(JobId, usize), StoreError> {
    let job_id = JobId::new();
    let history = build_history(job_id, LONG_JOB_PROGRESS_EVENTS);
    append_history(store, &history, 500).await?;
    Ok((job_id, history.len()))
}

/// How the long job is read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// Every event, as stored (`EventStore::load`).
    History,
    /// Folded into the aggregate (`EventStore::load_job`): what a command does first.
    Aggregate,
}

/// Loads a job of `events` events once untimed, then `loads` times; returns each timed load's
/// duration (in order) and the whole span. A load that does not return the whole job, or (as an
/// aggregate) not a `RUNNING` job of that version, is an error.
pub async fn time_loads<S: EventStore>(
    store: &S,
    job_id: JobId,
    events: usize,
    loads: usize,
    kind: LoadKind,
) -> Result<(Vec<Duration>, Timed), StoreError> {
    let check = |got: usize, status: Option<Status>| {
        if got == events && status.is_none_or(|s| s == Status::Running) {
            Ok(())
        } else {
            Err(StoreError::backend(
                false,
                format!("loaded {got} events ({status:?}); the job has {events}"),
            ))
        }
    };
    let mut times = Vec::with_capacity(loads);
    let mut span = None;
    for i in 0..=loads {
        if i == 1 {
            span = Some((Instant::now(), process_cpu()));
        }
        let started = Instant::now();
        match kind {
            LoadKind::History => check(store.load(job_id).await?.len(), None)?,
            LoadKind::Aggregate => {
                let loaded = store.load_job(job_id).await?;
                check(loaded.job.version as usize, Some(loaded.job.status))?;
            }
        }
        if i > 0 {
            times.push(started.elapsed());
        }
    }
    let (started, cpu) = span.unwrap_or_else(|| (Instant::now(), process_cpu()));
    Ok((
        times,
        Timed {
            count: loads,
            wall: started.elapsed(),
            cpu: process_cpu().saturating_sub(cpu),
        },
    ))
}

/// The median of some durations (the lower middle for an even count; zero for none).
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteEventStore;

    fn store() -> (tempfile::TempDir, SqliteEventStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteEventStore::open(dir.path().join("ledger.db")).expect("open");
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_gets_its_three_commands_even_when_jobs_do_not_split_evenly() {
        let (_dir, store) = store();
        let acknowledged = run_commands(&store, 4, 10, None).await.expect("run");
        assert_eq!(acknowledged, 30);
        assert_eq!(store.writer_stats().events, 30);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_passed_deadline_starts_no_job() {
        let (_dir, store) = store();
        let acknowledged = run_commands(&store, 2, 10, Some(Instant::now()))
            .await
            .expect("run");
        assert_eq!(acknowledged, 0);
        assert_eq!(store.writer_stats().events, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_measured_run_counts_only_the_timed_commands_after_its_warm_up() {
        let (_dir, store) = store();
        let run = measure_commands(&store, 2, 5, Duration::from_secs(60))
            .await
            .expect("run");
        assert_eq!(run.count, 15);
        let warm_up = warm_up_jobs(2) as u64 * 3;
        assert_eq!(store.writer_stats().events, warm_up + 15);
        assert!(run.per_s() > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_store_fails_the_run() {
        let (_dir, store) = store();
        // Another connection takes the table away from under the store's connections.
        let conn = rusqlite::Connection::open(store.path()).expect("open");
        conn.execute_batch("DROP TABLE events").expect("drop");
        let result = run_commands(&store, 2, 2, None).await;
        assert!(result.is_err(), "gave {result:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_kinds_of_load_read_the_whole_long_job() {
        let (_dir, store) = store();
        let (job_id, events) = append_long_job(&store).await.expect("append");
        assert_eq!(events, LONG_JOB_PROGRESS_EVENTS + 4);
        for kind in [LoadKind::History, LoadKind::Aggregate] {
            let (times, span) = time_loads(&store, job_id, events, 2, kind)
                .await
                .expect("loads");
            assert_eq!((times.len(), span.count), (2, 2), "{kind:?}");
        }
        let wrong = time_loads(&store, job_id, events + 1, 1, LoadKind::Aggregate).await;
        assert!(wrong.is_err(), "a short load must be an error");
    }

    #[test]
    fn the_median_is_the_lower_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[ms(4), ms(1), ms(3), ms(2)]), ms(2));
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(process_cpu() > Duration::ZERO);
    }
}
