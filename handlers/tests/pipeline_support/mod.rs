//! Shared helpers of the pipeline tests: stores in a temp dir, a movable clock, a simulated worker.

// Each pipeline test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobledger_events::event::Usage;
use jobledger_events::execute::fold;
use jobledger_events::testing::noop_spec;
use jobledger_events::{
    Clock, Command, CommandContext, EventStore, Job, JobId, JobSpec, SqliteEventStore, execute,
};
use jobledger_handlers::local::{InProcessLauncher, QueueConfig, SqliteJobQueue, WorkFn};
use jobledger_handlers::ports::TimeSource;

/// A store, a queue and the directory holding both.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: SqliteEventStore,
    pub queue: SqliteJobQueue,
    pub time: Arc<TestTime>,
}

/// A fresh store and queue; the queue follows `time`.
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("events.db")).expect("open store");
    let time = Arc::new(TestTime::default());
    let clock = Arc::clone(&time);
    let queue = SqliteJobQueue::open_with(dir.path().join("queue.db"), QueueConfig::default())
        .expect("open queue")
        .with_clock(Arc::new(move || clock.now()));
    Fixture {
        dir,
        store,
        queue,
        time,
    }
}

/// The system clock shifted by an offset tests can move, and a fixed jitter.
pub struct TestTime {
    offset_ms: AtomicI64,
    /// Jitter as a fraction in thousandths (0 = retry at once, 1000 = the full backoff).
    jitter_milli: AtomicI64,
}

impl Default for TestTime {
    fn default() -> Self {
        TestTime {
            offset_ms: AtomicI64::new(0),
            jitter_milli: AtomicI64::new(0),
        }
    }
}

impl TestTime {
    /// Moves time forward.
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl TimeSource for TestTime {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    fn jitter(&self) -> f64 {
        self.jitter_milli.load(Ordering::SeqCst) as f64 / 1000.0
    }
}

/// A valid one-item job spec.
pub fn spec() -> JobSpec {
    noop_spec(1)
}

/// Submits a job as a client would.
pub async fn submit(store: &SqliteEventStore, spec: JobSpec) -> JobId {
    let id = JobId::new();
    run(store, id, Command::Submit(spec)).await;
    id
}

/// Executes a command that must be accepted.
pub async fn run(store: &SqliteEventStore, id: JobId, command: Command) {
    run_at(store, Utc::now(), id, command).await;
}

/// Executes a command that must be accepted, recorded at `now`.
pub async fn run_at(store: &SqliteEventStore, now: DateTime<Utc>, id: JobId, command: Command) {
    let ctx = CommandContext::new("test", now);
    execute(store, id, &command, &ctx)
        .await
        .unwrap_or_else(|e| panic!("{} on {id}: {e}", command.name()));
}

/// The job folded from its ledger.
pub async fn job(store: &SqliteEventStore, id: JobId) -> Job {
    let history = store.load(id).await.expect("load");
    fold(id, &history).expect("fold").0
}

/// The job's event types, in order.
pub async fn event_types(store: &SqliteEventStore, id: JobId) -> Vec<String> {
    store
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// Waits (polling the ledger) until `done` holds for the job, or panics after `limit`.
pub async fn wait_until(
    store: &SqliteEventStore,
    id: JobId,
    limit: Duration,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let j = job(store, id).await;
        if done(&j) {
            return j;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "job {id} did not get there in {limit:?}: {j:?}\n{:?}",
                event_types(store, id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A successful attempt, as a worker reports it.
pub fn succeed(attempt: u32) -> Command {
    Command::Succeed {
        attempt,
        result_uri: format!("file:///results/{attempt}.jsonl"),
        result_sha256: "0".repeat(64),
        items_ok: 1,
        items_failed: 0,
        usage: Usage::default(),
    }
}

/// What a simulated worker does for an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Claims the attempt and succeeds.
    Succeed,
    /// Claims the attempt and then goes silent forever (a lost worker).
    Vanish,
    /// Claims the attempt and fails it, retryable, with the full 5 s first backoff.
    FailRetryable,
}

/// An in-process launcher whose workers go through `execute` like the real worker does, counting
/// launches; `behaviour(attempt)` picks what each attempt does.
pub fn simulated_workers(
    store: &SqliteEventStore,
    launches: Arc<AtomicUsize>,
    behaviour: impl Fn(u32) -> Behaviour + Send + Sync + 'static,
) -> InProcessLauncher {
    let store = store.clone();
    let behaviour = Arc::new(behaviour);
    let work: WorkFn = Arc::new(move |job_id, attempt| {
        launches.fetch_add(1, Ordering::SeqCst);
        let store = store.clone();
        let behaviour = Arc::clone(&behaviour);
        Box::pin(async move {
            let ctx = CommandContext::new(format!("worker:test-{attempt}"), Utc::now());
            let start = Command::StartAttempt {
                attempt,
                worker: format!("test-{attempt}"),
            };
            if execute(&store, job_id, &start, &ctx).await.is_err() {
                return;
            }
            let last = match behaviour(attempt) {
                Behaviour::Succeed => succeed(attempt),
                Behaviour::Vanish => return,
                Behaviour::FailRetryable => Command::FailAttempt {
                    attempt,
                    error: "model endpoint unavailable".into(),
                    retryable: true,
                    clock: Clock {
                        now: Utc::now(),
                        jitter: 1.0,
                    },
                },
            };
            let _ = execute(&store, job_id, &last, &ctx).await;
        })
    });
    InProcessLauncher::new(work, 4)
}

/// A shutdown signal for the driver loops.
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Shutdown {
    /// A signal not yet given.
    pub fn new() -> Self {
        Shutdown(tokio::sync::watch::channel(false).0)
    }

    /// A future resolving when the signal is given.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Gives the signal.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
