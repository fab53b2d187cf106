//! apalis + apalis-sqlite: N no-op jobs pushed by C concurrent producers into a file-backed
//! SQLite queue while one worker (apalis defaults) runs them; the clock stops when the queue's
//! table shows every job `Done`, or at the time cap.
//!
//! Unlike jobledger's figure there is no HTTP hop: producers push in-process, which favours
//! apalis. Its peak RSS is this whole process (producers included).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_sqlite::callback::HookCallbackListener;
use apalis_sqlite::{Config, SqlitePool, SqlitePoolOptions, SqliteStorage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::figures::{Durability, emit, peak_rss_mb, percentile_ms};

/// The job's argument: just its number, like jobledger's one-item no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoopJob {
    /// Which job of the run.
    pub id: usize,
}

/// The no-op worker function.
async fn noop(_job: NoopJob) -> Result<(), BoxDynError> {
    Ok(())
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct ApalisRun {
    /// Jobs to push.
    pub jobs: usize,
    /// Concurrent producers.
    pub clients: usize,
    /// Wall-clock cap for pushing and finishing.
    pub cap: Duration,
    /// Connection durability.
    pub durability: Durability,
}

/// Opens the queue database the way `durability` says, runs apalis's migrations, and returns
/// the pool with the update-hook listener of the README's event-driven worker.
async fn open(
    file: &Path,
    durability: Durability,
) -> anyhow::Result<(SqlitePool, HookCallbackListener)> {
    let url = format!("sqlite:{}?mode=rwc", file.display());
    match durability {
        Durability::Default => {
            // As its README: connect with the hook, then `setup` (WAL, and
            // `synchronous = OFF` on the one connection it runs on).
            let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
            SqliteStorage::setup(&pool).await?;
            Ok((pool, listener))
        }
        Durability::Full => {
            // `setup` on a throwaway pool, so no measured connection keeps its OFF; WAL stays
            // (it is a property of the file) and new connections get SQLite's default, FULL.
            let setup = SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await?;
            SqliteStorage::setup(&setup).await?;
            setup.close().await;
            let (pool, listener) = SqliteStorage::connect_with_callback(&url)?;
            let (journal,): (String,) = sqlx09::query_as("PRAGMA journal_mode")
                .fetch_one(&pool)
                .await?;
            let (synchronous,): (i64,) = sqlx09::query_as("PRAGMA synchronous")
                .fetch_one(&pool)
                .await?;
            anyhow::ensure!(
                journal.eq_ignore_ascii_case("wal") && synchronous == 2,
                "apalis pool runs journal_mode={journal}, synchronous={synchronous}; wanted WAL and 2 (FULL)"
            );
            Ok((pool, listener))
        }
    }
}

async fn done_count(pool: &SqlitePool) -> usize {
    // A busy database is "unknown this time", not a failure: the next poll retries.
    sqlx09::query_as::<_, (i64,)>("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
        .fetch_one(pool)
        .await
        .map_or(0, |(n,)| n as usize)
}

/// What one run got through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Jobs pushed before the cap.
    pub pushed: usize,
    /// Pushes the queue refused (each job is tried once).
    pub refused: usize,
    /// Jobs `Done` before the cap.
    pub done: usize,
}

/// `status: count` of every job, for the progress lines (where a capped run stopped).
async fn status_counts(pool: &SqlitePool) -> String {
    let rows = sqlx09::query_as::<_, (String, i64, i64)>(
        "SELECT status, COUNT(*), MAX(attempts) FROM Jobs GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|(status, n, attempts)| format!("{status}: {n}, max attempts {attempts}"))
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("status unknown: {e}"),
    }
}

/// Measures one run; emits `apalis.<durability>.<jobs>.*` figures.
pub async fn measure(run: &ApalisRun) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let (pool, listener) = open(&dir.path().join("apalis.sqlite3"), run.durability).await?;
    // The README's event-driven worker: woken by SQLite's update hook, polling every 500 ms as a
    // fallback. (Plain `SqliteStorage::new` polling parks the worker whenever the queue runs
    // empty until the next heartbeat, 30 s by default: its figure would measure that wait.)
    let config = Config::default().queue("bench");
    let strategy = Strategy::new()
        .stream(listener.ready_chunks(config.batch_size))
        .interval(Duration::from_millis(500));
    let storage = SqliteStorage::<NoopJob>::new(&pool).with_config(config);
    let worker = WorkerBuilder::new("bench-worker")
        .backend(storage.clone().poll_with_strategy(strategy))
        .build(noop);
    let worker = tokio::spawn(worker.run());

    let start = Instant::now();
    let deadline = start + run.cap;
    let next = Arc::new(AtomicUsize::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..run.clients.max(1) {
        let (mut storage, next, jobs) = (storage.clone(), next.clone(), run.jobs);
        producers.spawn(async move {
            let mut pushes = Pushes::default();
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= jobs {
                    break;
                }
                let t = Instant::now();
                match storage.push(NoopJob { id }).await {
                    Ok(_) => pushes.latencies.push(t.elapsed()),
                    // A refused push (e.g. `database is locked` once sqlx's busy timeout runs out
                    // under write contention) is the peer's behaviour at this load: counted and
                    // reported, not a failed measurement.
                    Err(e) => pushes.refuse(format!("push {id}: {e}")),
                }
            }
            pushes
        });
    }
    let mut pushes = Pushes::default();
    while let Some(joined) = producers.join_next().await {
        pushes.merge(joined?);
    }
    if let Some(first) = &pushes.first_refusal {
        eprintln!(
            "  apalis refused {} push(es); first: {first}",
            pushes.refused
        );
    }
    let Pushes {
        mut latencies,
        refused,
        ..
    } = pushes;
    let pushed_in = start.elapsed();
    let mut done = 0;
    let mut said = Instant::now();
    while Instant::now() < deadline {
        if said.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "  … {done} of {} Done after {:.0} s ({})",
                run.jobs,
                start.elapsed().as_secs_f64(),
                status_counts(&pool).await
            );
            said = Instant::now();
        }
        if worker.is_finished() {
            anyhow::bail!("the apalis worker stopped early: {:?}", worker.await);
        }
        done = done_count(&pool).await;
        if done >= run.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    worker.abort();
    latencies.sort();
    let k = format!("apalis.{}.{}", run.durability.key(), run.jobs);
    emit(format!("{k}.refused"), refused as f64);
    emit(
        format!("{k}.jobs_per_s"),
        done as f64 / elapsed.as_secs_f64(),
    );
    emit(format!("{k}.done"), done as f64);
    emit(format!("{k}.submitted"), latencies.len() as f64);
    emit(
        format!("{k}.submits_per_s"),
        latencies.len() as f64 / pushed_in.as_secs_f64(),
    );
    emit(format!("{k}.p50_ms"), percentile_ms(&latencies, 0.5));
    emit(format!("{k}.p99_ms"), percentile_ms(&latencies, 0.99));
    emit(format!("{k}.rss_mb"), peak_rss_mb());
    eprintln!(
        "  apalis ({}) {} jobs: {done} Done in {:.1} s ({} pushed)",
        run.durability.key(),
        run.jobs,
        elapsed.as_secs_f64(),
        latencies.len()
    );
    Ok(Outcome {
        pushed: latencies.len(),
        refused,
        done,
    })
}

/// What one producer got through: latencies of accepted pushes and the refused ones.
#[derive(Default)]
struct Pushes {
    latencies: Vec<Duration>,
    refused: usize,
    first_refusal: Option<String>,
}

impl Pushes {
    fn refuse(&mut self, why: String) {
        self.refused += 1;
        self.first_refusal.get_or_insert(why);
    }

    fn merge(&mut self, other: Pushes) {
        self.latencies.extend(other.latencies);
        self.refused += other.refused;
        if self.first_refusal.is_none() {
            self.first_refusal = other.first_refusal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(durability: Durability) -> Outcome {
        measure(&ApalisRun {
            jobs: 40,
            clients: 4,
            cap: Duration::from_secs(60),
            durability,
        })
        .await
        .expect("apalis run")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_pushed_job_is_done_at_default_durability() {
        assert_eq!(
            run(Durability::Default).await,
            Outcome {
                pushed: 40,
                refused: 0,
                done: 40
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_pushed_job_is_done_at_full_durability() {
        assert_eq!(
            run(Durability::Full).await,
            Outcome {
                pushed: 40,
                refused: 0,
                done: 40
            }
        );
    }

    #[tokio::test]
    async fn an_unwritable_queue_file_is_a_clear_error() {
        let err = open(Path::new("/nonexistent-dir/q.sqlite3"), Durability::Full)
            .await
            .expect_err("no such directory");
        assert!(!err.to_string().is_empty());
    }
}
