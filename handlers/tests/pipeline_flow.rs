//! The local pipeline end to end: the dispatcher, launcher and sweeper loops running together over
//! the real SQLite store and queue, with simulated workers that report through `execute`.

mod pipeline_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobledger_events::{ChangeFeed, EventStore, Status};
use jobledger_handlers::local::{
    DISPATCHER, DispatcherConfig, InProcessLauncher, LauncherConfig, LedgerCandidates,
    SqliteJobQueue, SweeperConfig, run_dispatcher, run_launcher, run_sweeper,
};
use jobledger_handlers::ports::{JobMessage, JobQueue, QueueError, ReceivedMessage};
use jobledger_handlers::sweep::SweepPolicy;
use pipeline_support::{
    Behaviour, Fixture, Shutdown, event_types, fixture, simulated_workers, spec, submit, wait_until,
};

const LIMIT: Duration = Duration::from_secs(10);

/// The three loops, spawned as `jobledger dev` would.
struct Pipeline {
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    fn start(f: &Fixture, launcher: Arc<InProcessLauncher>, sweep: SweeperConfig) -> Pipeline {
        Self::start_with_queue(f, f.queue.clone(), launcher, sweep)
    }

    fn start_with_queue<Q: JobQueue + Clone + 'static>(
        f: &Fixture,
        queue: Q,
        launcher: Arc<InProcessLauncher>,
        sweep: SweeperConfig,
    ) -> Pipeline {
        let shutdown = Shutdown::new();
        let launch_config = LauncherConfig {
            wait: Duration::from_secs(1),
            ..LauncherConfig::default()
        };
        let mut tasks = Vec::new();
        {
            let (store, queue, time, stop) = (
                f.store.clone(),
                queue.clone(),
                Arc::clone(&f.time),
                shutdown.signal(),
            );
            tasks.push(tokio::spawn(async move {
                run_dispatcher(&store, &queue, &*time, &DispatcherConfig::default(), stop).await
            }));
        }
        {
            let (store, time, stop) = (f.store.clone(), Arc::clone(&f.time), shutdown.signal());
            let launcher = Arc::clone(&launcher);
            tasks.push(tokio::spawn(async move {
                run_launcher(&store, &queue, &*launcher, &*time, &launch_config, stop).await
            }));
        }
        {
            let (store, time, stop) = (f.store.clone(), Arc::clone(&f.time), shutdown.signal());
            let source = LedgerCandidates::new(f.store.clone());
            tasks.push(tokio::spawn(async move {
                run_sweeper(&store, &source, &*time, &sweep, stop).await
            }));
        }
        Pipeline { shutdown, tasks }
    }

    async fn stop(self) {
        self.shutdown.stop();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("loops stop on shutdown")
                .expect("loop did not panic");
        }
    }
}

fn fast_sweeps(heartbeat_limit_s: i64) -> SweeperConfig {
    SweeperConfig {
        every: Duration::from_millis(50),
        policy: SweepPolicy {
            heartbeat_limit: chrono::Duration::seconds(heartbeat_limit_s),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_reaches_succeeded() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = Arc::new(simulated_workers(&f.store, Arc::clone(&launches), |_| {
        Behaviour::Succeed
    }));
    let pipeline = Pipeline::start(&f, Arc::clone(&launcher), fast_sweeps(300));

    let ids = [
        submit(&f.store, spec()).await,
        submit(&f.store, spec()).await,
    ];
    for id in ids {
        let j = wait_until(&f.store, id, LIMIT, |j| j.status.is_terminal()).await;
        assert_eq!((j.status, j.attempt), (Status::Succeeded, 1));
        let types = event_types(&f.store, id).await;
        assert_eq!(types[..2], ["JobSubmitted", "JobQueued"]);
        assert_eq!(types.iter().filter(|t| *t == "AttemptStarted").count(), 1);
        assert_eq!(types.last().map(String::as_str), Some("JobSucceeded"));
    }
    pipeline.stop().await;
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    let stats = f.queue.stats().await.expect("stats");
    assert_eq!(
        (stats.visible, stats.in_flight, stats.dead),
        (0, 0, 0),
        "every message acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dispatcher_replaying_the_feed_launches_nothing_twice() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = Arc::new(simulated_workers(&f.store, Arc::clone(&launches), |_| {
        Behaviour::Succeed
    }));
    let id = submit(&f.store, spec()).await;
    let pipeline = Pipeline::start(&f, Arc::clone(&launcher), fast_sweeps(300));
    wait_until(&f.store, id, LIMIT, |j| j.status == Status::Succeeded).await;
    pipeline.stop().await;

    // As if the checkpoint had been lost: the whole feed is delivered again, twice over.
    f.store
        .save_checkpoint(DISPATCHER, 0)
        .await
        .expect("rewind");
    let pipeline = Pipeline::start(&f, Arc::clone(&launcher), fast_sweeps(300));
    let end = f
        .store
        .read_after(0, 1000)
        .await
        .expect("feed")
        .last()
        .map_or(0, |e| e.seq);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while f.store.checkpoint(DISPATCHER).await.expect("checkpoint") < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatcher did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.stop().await;
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 1);
    let types = event_types(&f.store, id).await;
    assert_eq!(types.iter().filter(|t| *t == "JobQueued").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_heartbeats_is_timed_out_by_the_sweeper_and_retried() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = Arc::new(simulated_workers(
        &f.store,
        Arc::clone(&launches),
        |attempt| {
            if attempt == 1 {
                Behaviour::Vanish
            } else {
                Behaviour::Succeed
            }
        },
    ));
    let pipeline = Pipeline::start(&f, Arc::clone(&launcher), fast_sweeps(60));
    let id = submit(&f.store, spec()).await;
    wait_until(&f.store, id, LIMIT, |j| j.status == Status::Running).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pipeline_support::job(&f.store, id).await.status,
        Status::Running,
        "not before the limit"
    );

    f.time.advance(chrono::Duration::seconds(61));
    let j = wait_until(&f.store, id, LIMIT, |j| j.status.is_terminal()).await;
    assert_eq!((j.status, j.attempt), (Status::Succeeded, 2));
    pipeline.stop().await;

    assert_eq!(launches.load(Ordering::SeqCst), 2);
    let history = f.store.load(id).await.expect("load");
    let timed_out = history
        .iter()
        .find(|e| e.event_type == "AttemptTimedOut")
        .expect("AttemptTimedOut recorded");
    assert_eq!(timed_out.actor, "system:sweeper");
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    let from = types
        .iter()
        .position(|t| *t == "AttemptTimedOut")
        .expect("timed out");
    assert_eq!(
        types[from..from + 3],
        ["AttemptTimedOut", "RetryScheduled", "JobQueued"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_its_not_before_in_the_running_pipeline() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = Arc::new(simulated_workers(
        &f.store,
        Arc::clone(&launches),
        |attempt| {
            if attempt == 1 {
                Behaviour::FailRetryable
            } else {
                Behaviour::Succeed
            }
        },
    ));
    let pipeline = Pipeline::start(&f, Arc::clone(&launcher), fast_sweeps(300));
    let id = submit(&f.store, spec()).await;
    let waiting = wait_until(&f.store, id, LIMIT, |j| j.attempt == 2).await;
    let not_before = waiting.not_before.expect("not_before");
    // The worker failed with the full jitter: the first backoff is 5 s.
    assert!(
        not_before > chrono::Utc::now() + chrono::Duration::seconds(3),
        "{not_before}"
    );

    let j = wait_until(&f.store, id, LIMIT, |j| j.status.is_terminal()).await;
    assert_eq!((j.status, j.attempt), (Status::Succeeded, 2));
    pipeline.stop().await;
    let history = f.store.load(id).await.expect("load");
    let second_start = history
        .iter()
        .filter(|e| e.event_type == "AttemptStarted")
        .nth(1)
        .expect("attempt 2 started");
    assert!(
        second_start.at >= not_before,
        "started {} before {not_before}",
        second_start.at
    );
    assert_eq!(launches.load(Ordering::SeqCst), 2);
}

/// A queue whose first `fail` sends fail, to check the dispatcher's checkpoint discipline.
#[derive(Clone)]
struct FlakyQueue {
    inner: SqliteJobQueue,
    fail: Arc<AtomicUsize>,
}

impl JobQueue for FlakyQueue {
    async fn send(&self, message: &JobMessage) -> Result<String, QueueError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(QueueError::backend(true, "throttled"));
        }
        self.inner.send(message).await
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, visibility, wait).await
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt_handle).await
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.inner.change_visibility(receipt_handle, timeout).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_keeps_its_checkpoint_before_a_failed_record_and_retries_it() {
    let f = fixture();
    let fail = Arc::new(AtomicUsize::new(2));
    let queue = FlakyQueue {
        inner: f.queue.clone(),
        fail: Arc::clone(&fail),
    };
    let first = submit(&f.store, spec()).await;
    let second = submit(&f.store, spec()).await;
    // Dispatch only: no launcher, so the feed holds exactly the events we look at.
    let shutdown = Shutdown::new();
    let (store, time, stop) = (f.store.clone(), Arc::clone(&f.time), shutdown.signal());
    let q = queue.clone();
    let task = tokio::spawn(async move {
        run_dispatcher(&store, &q, &*time, &DispatcherConfig::default(), stop).await
    });

    for id in [first, second] {
        wait_until(&f.store, id, LIMIT, |j| j.status == Status::Queued).await;
    }
    assert_eq!(fail.load(Ordering::SeqCst), 0, "both failures were hit");
    let end = f
        .store
        .read_after(0, 1000)
        .await
        .expect("feed")
        .last()
        .map_or(0, |e| e.seq);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while f.store.checkpoint(DISPATCHER).await.expect("checkpoint") != end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint not at the feed's end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.stop();
    task.await.expect("dispatcher stopped");
    assert_eq!(
        f.queue.stats().await.expect("stats").visible,
        2,
        "one message per job"
    );
}

#[tokio::test]
async fn the_loops_stop_promptly_on_shutdown_while_idle() {
    let f = fixture();
    let launcher = Arc::new(simulated_workers(
        &f.store,
        Arc::new(AtomicUsize::new(0)),
        |_| Behaviour::Succeed,
    ));
    let pipeline = Pipeline::start(&f, launcher, SweeperConfig::default());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    pipeline.stop().await;
    assert!(started.elapsed() < Duration::from_secs(1));
}
