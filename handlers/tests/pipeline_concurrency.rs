//! The dispatch and launch cores working on many jobs at once: every job queued and launched
//! exactly once, a job's requests in feed order, and a failure of one job neither stopping the
//! others nor being lost.

mod pipeline_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use jobledger_events::event::{Capacity, JobEvent};
use jobledger_events::{
    AppendBatch, ChangeFeed, Clock, Command, CommandContext, EventStore, IdempotencyRecord, JobId,
    SqliteEventStore, Status, StoreError, execute,
};
use jobledger_handlers::dispatch::{DispatchError, StreamRecord, dispatch_batch};
use jobledger_handlers::launch::{LaunchPolicy, MessageResult, launch_groups};
use jobledger_handlers::local::{InProcessLauncher, QueueConfig, SqliteJobQueue, WorkFn};
use jobledger_handlers::ports::{
    JobMessage, JobQueue, LaunchError, LaunchResult, ReceivedMessage, TaskLauncher,
};
use pipeline_support::{TestTime, job, run, spec, submit, succeed};

const VIS: Duration = Duration::from_secs(60);

struct World {
    _dir: tempfile::TempDir,
    store: SqliteEventStore,
    queue: SqliteJobQueue,
    time: Arc<TestTime>,
}

/// A ledger and a queue that hands out up to 256 messages per receive, as `jobledger dev`'s does.
fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("events.db")).expect("ledger");
    let time = Arc::new(TestTime::default());
    let clock = Arc::clone(&time);
    let queue = SqliteJobQueue::open_with(
        dir.path().join("queue.db"),
        QueueConfig {
            max_batch: 256,
            ..QueueConfig::default()
        },
    )
    .expect("queue")
    .with_clock(Arc::new(move || {
        use jobledger_handlers::ports::TimeSource;
        clock.now()
    }));
    World {
        _dir: dir,
        store,
        queue,
        time,
    }
}

async fn feed(store: &SqliteEventStore) -> Vec<StreamRecord> {
    store
        .read_after(0, 10_000)
        .await
        .expect("feed")
        .into_iter()
        .map(StreamRecord::from)
        .collect()
}

async fn submit_many(store: &SqliteEventStore, n: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(submit(store, spec()).await);
    }
    ids
}

async fn receive(queue: &SqliteJobQueue) -> Vec<ReceivedMessage> {
    queue
        .receive(256, VIS, Duration::ZERO)
        .await
        .expect("receive")
}

fn jobs_of(messages: &[ReceivedMessage]) -> Vec<(JobId, u32)> {
    messages
        .iter()
        .map(|m| {
            let body = JobMessage::from_body(&m.body).expect("job message");
            (body.job_id, body.attempt)
        })
        .collect()
}

async fn types(store: &SqliteEventStore, id: JobId) -> Vec<String> {
    store
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// Checks a job's history is gap-free and hash-chained.
async fn assert_chained(store: &SqliteEventStore, id: JobId) {
    let history = store.load(id).await.expect("load");
    let mut prev = jobledger_events::Hash::ZERO;
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1, "job {id}: gap-free versions");
        assert_eq!(
            e.prev_hash, prev,
            "job {id}: chained at version {}",
            e.version
        );
        prev = e.hash;
    }
}

/// The ledger, with appends for one chosen job failing (a backend error) while it is set.
struct FailingFor {
    inner: SqliteEventStore,
    job: Mutex<Option<JobId>>,
}

impl EventStore for FailingFor {
    async fn load(
        &self,
        job_id: JobId,
    ) -> Result<Vec<jobledger_events::RecordedEvent>, StoreError> {
        self.inner.load(job_id).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        if *self.job.lock().expect("lock") == Some(batch.job_id) {
            return Err(StoreError::backend(true, "database is locked"));
        }
        self.inner.append(batch).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }
}

#[tokio::test]
async fn many_jobs_dispatched_at_once_are_each_queued_exactly_once_and_a_redelivery_adds_nothing() {
    let w = world();
    let ids = submit_many(&w.store, 150).await;
    let records = feed(&w.store).await;

    let report = dispatch_batch(&w.store, &w.queue, &records, Utc::now()).await;

    assert!(report.is_complete(), "{:?}", report.error);
    for id in &ids {
        assert_eq!(types(&w.store, *id).await, ["JobSubmitted", "JobQueued"]);
    }
    let messages = receive(&w.queue).await;
    let sent: HashSet<(JobId, u32)> = jobs_of(&messages).into_iter().collect();
    assert_eq!(messages.len(), 150, "one message per job");
    assert_eq!(sent, ids.iter().map(|id| (*id, 1)).collect());

    // The feed delivers the same batch again (a restart before the checkpoint was saved).
    let again = dispatch_batch(&w.store, &w.queue, &records, Utc::now()).await;
    assert!(again.is_complete(), "{:?}", again.error);
    for id in &ids {
        assert_eq!(types(&w.store, *id).await, ["JobSubmitted", "JobQueued"]);
    }
    let stats = w.queue.stats().await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight), (0, 150), "no new message");
}

#[tokio::test]
async fn a_jobs_requests_in_one_batch_are_handled_in_feed_order() {
    let w = world();
    let others = submit_many(&w.store, 5).await;
    // A job that ran attempt 1, failed it and waits for attempt 2: its feed holds both requests.
    let retried = submit(&w.store, spec()).await;
    for command in [
        Command::MarkQueued {
            attempt: 1,
            message_id: "m-1".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "local:1".into(),
            capacity: Capacity::Local,
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "w".into(),
        },
        Command::FailAttempt {
            attempt: 1,
            error: "model unavailable".into(),
            retryable: true,
            clock: Clock {
                now: Utc::now(),
                jitter: 0.0,
            },
        },
    ] {
        run(&w.store, retried, command).await;
    }
    assert_eq!(job(&w.store, retried).await.status, Status::RetryWait);

    let report = dispatch_batch(&w.store, &w.queue, &feed(&w.store).await, Utc::now()).await;

    assert!(report.is_complete(), "{:?}", report.error);
    let history = w.store.load(retried).await.expect("load");
    let queued: Vec<u32> = history
        .iter()
        .filter_map(|e| match e.decode().expect("decode") {
            JobEvent::JobQueued(q) => Some(q.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(
        queued,
        [1, 2],
        "the old request is seen as handled, then attempt 2 is queued"
    );
    let mut sent = jobs_of(&receive(&w.queue).await);
    sent.sort();
    let mut expected: Vec<(JobId, u32)> = others.iter().map(|id| (*id, 1)).collect();
    expected.push((retried, 2));
    expected.sort();
    assert_eq!(sent, expected, "no message for the attempt already run");
}

#[tokio::test]
async fn a_dispatch_failure_for_one_job_does_not_stop_the_others_and_is_retried() {
    let w = world();
    let ids = submit_many(&w.store, 20).await;
    let records = feed(&w.store).await;
    let unlucky = ids[4];
    let store = FailingFor {
        inner: w.store.clone(),
        job: Mutex::new(Some(unlucky)),
    };

    let report = dispatch_batch(&store, &w.queue, &records, Utc::now()).await;

    assert_eq!(
        report.succeeded, 4,
        "the records before the failed one are done"
    );
    assert_eq!(report.failed_ids.len(), 16);
    assert!(
        matches!(report.error, Some(DispatchError::Execute(_))),
        "{:?}",
        report.error
    );
    for id in &ids {
        let expected = if *id == unlucky {
            Status::Submitted
        } else {
            Status::Queued
        };
        assert_eq!(job(&w.store, *id).await.status, expected, "job {id}");
    }

    // The failed record and every later one are delivered again; the store works again.
    *store.job.lock().expect("lock") = None;
    let retry = dispatch_batch(&store, &w.queue, &records[report.succeeded..], Utc::now()).await;
    assert!(retry.is_complete(), "{:?}", retry.error);
    for id in &ids {
        assert_eq!(types(&w.store, *id).await, ["JobSubmitted", "JobQueued"]);
    }
    let mut sent = jobs_of(&receive(&w.queue).await);
    sent.sort();
    let mut expected: Vec<(JobId, u32)> = ids.iter().map(|id| (*id, 1)).collect();
    expected.sort();
    assert_eq!(sent, expected, "the re-sent message was deduplicated");
}

/// Workers that claim and succeed, counting launches per job.
fn counting_workers(
    store: &SqliteEventStore,
    launches: Arc<Mutex<HashMap<JobId, usize>>>,
) -> InProcessLauncher {
    let store = store.clone();
    let work: WorkFn = Arc::new(move |job_id, attempt| {
        *launches.lock().expect("lock").entry(job_id).or_default() += 1;
        let store = store.clone();
        Box::pin(async move {
            let ctx = CommandContext::new("worker:test", Utc::now());
            let start = Command::StartAttempt {
                attempt,
                worker: "test".into(),
            };
            if execute(&store, job_id, &start, &ctx).await.is_ok() {
                let _ = execute(&store, job_id, &succeed(attempt), &ctx).await;
            }
        })
    });
    InProcessLauncher::new(work, 16)
}

/// A launcher failing (retryably) the first launch of one job.
struct FirstLaunchFails<L> {
    inner: L,
    job: JobId,
    failed: AtomicUsize,
}

impl<L: TaskLauncher> TaskLauncher for FirstLaunchFails<L> {
    async fn launch(&self, job_id: JobId, attempt: u32) -> Result<LaunchResult, LaunchError> {
        if job_id == self.job && self.failed.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(LaunchError::retryable("no capacity"));
        }
        self.inner.launch(job_id, attempt).await
    }
}

#[tokio::test]
async fn many_jobs_launched_at_once_each_run_once_and_one_failure_is_retried_alone() {
    let w = world();
    let ids = submit_many(&w.store, 100).await;
    let report = dispatch_batch(&w.store, &w.queue, &feed(&w.store).await, Utc::now()).await;
    assert!(report.is_complete(), "{:?}", report.error);
    let launches = Arc::new(Mutex::new(HashMap::new()));
    let unlucky = ids[37];
    let launcher = FirstLaunchFails {
        inner: counting_workers(&w.store, Arc::clone(&launches)),
        job: unlucky,
        failed: AtomicUsize::new(0),
    };
    let messages = receive(&w.queue).await;
    assert_eq!(messages.len(), 100);

    let results = launch_groups(
        &w.store,
        &w.queue,
        &launcher,
        &messages,
        &*w.time,
        &LaunchPolicy::default(),
    )
    .await;

    let mut handled = Vec::new();
    for (m, result) in messages.iter().zip(&results) {
        let (job_id, _) = jobs_of(std::slice::from_ref(m))[0];
        match result {
            MessageResult::Done => handled.push(m.receipt_handle.clone()),
            MessageResult::Failed(e) => {
                assert_eq!(job_id, unlucky, "only the unlucky job fails: {e}");
                assert!(e.is_fault());
            }
            MessageResult::Untried => panic!("one message per job: nothing is left untried"),
        }
    }
    assert_eq!(handled.len(), 99, "the other jobs are launched");
    assert_eq!(w.queue.delete_batch(&handled).await.expect("delete"), 99);
    assert_eq!(job(&w.store, unlucky).await.status, Status::Queued);

    // The failed message comes back after its visibility timeout and launches this time.
    w.time.advance(chrono::Duration::seconds(61));
    let again = receive(&w.queue).await;
    assert_eq!(jobs_of(&again), [(unlucky, 1)]);
    assert_eq!(again[0].receive_count, 2);
    let results = launch_groups(
        &w.store,
        &w.queue,
        &launcher,
        &again,
        &*w.time,
        &LaunchPolicy::default(),
    )
    .await;
    assert!(matches!(results[..], [MessageResult::Done]), "{results:?}");

    launcher.inner.wait_idle().await;
    let launches = launches.lock().expect("lock").clone();
    assert_eq!(launches.len(), 100);
    assert!(
        launches.values().all(|n| *n == 1),
        "every job launched once"
    );
    for id in &ids {
        assert_eq!(
            job(&w.store, *id).await.status,
            Status::Succeeded,
            "job {id}"
        );
        let types = types(&w.store, *id).await;
        let count = |t: &str| types.iter().filter(|x| *x == t).count();
        for once in ["JobQueued", "AttemptStarted", "JobSucceeded"] {
            assert_eq!(count(once), 1, "job {id}: {types:?}");
        }
        // A worker that finishes before the launcher's append leaves no TaskLaunched: the ledger
        // refuses a launch record for a finished job.
        assert!(count("TaskLaunched") <= 1, "job {id}: {types:?}");
        assert_chained(&w.store, *id).await;
    }
}
