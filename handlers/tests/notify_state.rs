//! `SqliteNotifyStore` against the notifier state-store conformance cases (the same cases run
//! against `DynamoNotifyStore` on moto in `notify_dynamo.rs`).

mod notify_support;

use jobledger_handlers::notify::SqliteNotifyStore;

#[tokio::test]
async fn the_sqlite_store_keeps_the_notifier_state_promises() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).expect("open");
    notify_support::conformance(&store).await;
}

#[tokio::test]
async fn failure_counts_survive_reopening_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sqlite3");
    let job = jobledger_events::JobId::new();
    {
        let store = SqliteNotifyStore::open(&path).expect("open");
        use jobledger_handlers::notify::FailureCounter;
        assert_eq!(
            store.count_failure("notion", job, 1).await.expect("count"),
            1
        );
    }
    let store = SqliteNotifyStore::open(&path).expect("reopen");
    use jobledger_handlers::notify::FailureCounter;
    assert_eq!(
        store.count_failure("notion", job, 1).await.expect("count"),
        2
    );
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use jobledger_events::testing::noop_spec;
use jobledger_events::{ChangeFeed, Command, CommandContext, JobId, SqliteEventStore, execute};
use jobledger_handlers::notify::{
    DeadLetter, DeadLetterStore, Delivery, NewDeadLetter, NotifyEnv, NotifyError, NotifyOn,
    NotifyStateStore, RetryPolicy, Sink, SinkState, StateBuffer, StateError, SystemClock,
    consumer_name, run_sink,
};
use jobledger_projections::JobView;
use jobledger_workers::FsObjectStore;

fn sqlite_store() -> (tempfile::TempDir, SqliteNotifyStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).expect("open");
    (dir, store)
}

fn delivered(version: u64) -> SinkState {
    SinkState {
        last_version: version,
        message_version: version,
        ..SinkState::default()
    }
}

/// The SQLite store whose writes fail while `failing` is set (a full disk, a locked file).
#[derive(Clone)]
struct Flaky {
    inner: SqliteNotifyStore,
    failing: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StateError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StateError::Backend {
                retryable: true,
                message: "disk full".into(),
            });
        }
        Ok(())
    }
}

impl NotifyStateStore for Flaky {
    async fn get(&self, sink: &str, job_id: JobId) -> Result<SinkState, StateError> {
        self.inner.get(sink, job_id).await
    }

    async fn put(&self, sink: &str, job_id: JobId, state: &SinkState) -> Result<bool, StateError> {
        self.check()?;
        self.inner.put(sink, job_id, state).await
    }

    async fn put_many(
        &self,
        sink: &str,
        states: &[(JobId, SinkState)],
    ) -> Result<usize, StateError> {
        self.check()?;
        self.inner.put_many(sink, states).await
    }
}

impl DeadLetterStore for Flaky {
    async fn add(&self, letter: NewDeadLetter) -> Result<(), StateError> {
        self.inner.add(letter).await
    }

    async fn list(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        self.inner.list(sink).await
    }

    async fn remove(&self, id: i64) -> Result<bool, StateError> {
        self.inner.remove(id).await
    }
}

#[tokio::test]
async fn put_many_writes_every_state_at_once_and_never_goes_back() {
    let (_dir, store) = sqlite_store();
    let (a, b) = (JobId::new(), JobId::new());
    assert!(store.put("console", a, &delivered(5)).await.expect("put"));
    let written = store
        .put_many("console", &[(a, delivered(3)), (b, delivered(2))])
        .await
        .expect("put many");
    assert_eq!(written, 1, "the older state of a is refused");
    assert_eq!(store.get("console", a).await.expect("get"), delivered(5));
    assert_eq!(store.get("console", b).await.expect("get"), delivered(2));
    assert_eq!(store.put_many("console", &[]).await.expect("nothing"), 0);
}

#[tokio::test]
async fn a_buffer_holds_writes_until_flushed_and_reads_its_own_writes() {
    let (_dir, store) = sqlite_store();
    let buffer = StateBuffer::new(&store, "console");
    let job = JobId::new();
    assert_eq!(
        buffer.get("console", job).await.expect("get"),
        SinkState::default()
    );
    assert!(
        buffer
            .put("console", job, &delivered(1))
            .await
            .expect("put")
    );
    assert!(
        buffer
            .put("console", job, &delivered(2))
            .await
            .expect("put")
    );
    assert!(
        !buffer
            .put("console", job, &delivered(1))
            .await
            .expect("put"),
        "a late write loses in the buffer too"
    );
    assert_eq!(buffer.get("console", job).await.expect("get"), delivered(2));
    assert_eq!(
        store.get("console", job).await.expect("get"),
        SinkState::default(),
        "nothing is written before the flush"
    );
    assert_eq!(buffer.pending(), 1);
    assert_eq!(buffer.flush().await.expect("flush"), 1);
    assert_eq!(buffer.pending(), 0);
    assert_eq!(store.get("console", job).await.expect("get"), delivered(2));
    assert_eq!(
        buffer.flush().await.expect("flush"),
        0,
        "nothing left to write"
    );
}

#[tokio::test]
async fn another_sinks_state_passes_straight_through_the_buffer() {
    let (_dir, store) = sqlite_store();
    let buffer = StateBuffer::new(&store, "console");
    let job = JobId::new();
    assert!(buffer.put("notion", job, &delivered(4)).await.expect("put"));
    assert_eq!(store.get("notion", job).await.expect("get"), delivered(4));
    assert_eq!(buffer.pending(), 0);
}

#[tokio::test]
async fn a_newer_state_stored_meanwhile_wins_at_the_flush_and_is_read_again() {
    let (_dir, store) = sqlite_store();
    let buffer = StateBuffer::new(&store, "console");
    let job = JobId::new();
    assert_eq!(
        buffer.get("console", job).await.expect("get"),
        SinkState::default()
    );
    // A redrive from the CLI delivers a later version behind the loop's back.
    assert!(store.put("console", job, &delivered(9)).await.expect("put"));
    assert!(
        buffer
            .put("console", job, &delivered(2))
            .await
            .expect("put")
    );
    assert_eq!(buffer.flush().await.expect("flush"), 0);
    assert_eq!(store.get("console", job).await.expect("get"), delivered(9));
    assert_eq!(
        buffer.get("console", job).await.expect("get"),
        delivered(9),
        "the buffer forgets what the store refused and reads it again"
    );
}

#[tokio::test]
async fn a_created_external_object_is_written_at_once_and_its_updates_wait() {
    let (_dir, store) = sqlite_store();
    let buffer = StateBuffer::new(&store, "slack-bot");
    let job = JobId::new();
    let created = SinkState {
        external_id: Some("1700000000.000100".into()),
        channel: Some("C0CHAN".into()),
        message_version: 1,
        ..SinkState::default()
    };
    assert!(buffer.put("slack-bot", job, &created).await.expect("put"));
    assert_eq!(store.get("slack-bot", job).await.expect("get"), created);
    assert_eq!(buffer.pending(), 0);
    let updated = SinkState {
        last_version: 1,
        ..created.clone()
    };
    assert!(buffer.put("slack-bot", job, &updated).await.expect("put"));
    assert_eq!(
        buffer.pending(),
        1,
        "an update of the same message waits for the flush"
    );
    assert_eq!(store.get("slack-bot", job).await.expect("get"), created);
}

#[tokio::test]
async fn a_failed_flush_keeps_the_states_pending_for_the_next_one() {
    let (_dir, inner) = sqlite_store();
    let store = Flaky {
        inner: inner.clone(),
        failing: Arc::new(AtomicBool::new(true)),
    };
    let buffer = StateBuffer::new(&store, "console");
    let (a, b) = (JobId::new(), JobId::new());
    buffer.put("console", a, &delivered(1)).await.expect("put");
    buffer.put("console", b, &delivered(3)).await.expect("put");
    assert!(buffer.flush().await.is_err());
    assert_eq!(buffer.pending(), 2);
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(buffer.flush().await.expect("flush"), 2);
    assert_eq!(inner.get("console", a).await.expect("get"), delivered(1));
    assert_eq!(inner.get("console", b).await.expect("get"), delivered(3));
}

/// A sink that records each version it shows, one call per version.
#[derive(Clone, Default)]
struct Recorder {
    shown: Arc<Mutex<Vec<(JobId, u64)>>>,
}

impl Recorder {
    fn shown(&self) -> Vec<(JobId, u64)> {
        let mut shown = self.shown.lock().expect("lock").clone();
        shown.sort();
        shown
    }
}

impl Sink for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn on(&self) -> NotifyOn {
        NotifyOn::Every
    }

    fn wants(&self, _view: &JobView) -> bool {
        true
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        if state.message_version >= d.view.last_version {
            return Ok(None);
        }
        self.shown
            .lock()
            .expect("lock")
            .push((d.view.job_id, d.view.last_version));
        Ok(Some(SinkState {
            message_version: d.view.last_version,
            ..state.clone()
        }))
    }
}

/// Runs the sink loop until it has shown `expected` deliveries (or a few seconds passed), then
/// stops it; answers what it showed.
async fn run_loop(
    ledger: &SqliteEventStore,
    states: &Flaky,
    objects: &FsObjectStore,
    expected: usize,
) -> Vec<(JobId, u64)> {
    let sink = Recorder::default();
    let env = NotifyEnv {
        store: ledger,
        states,
        objects,
        clock: &SystemClock,
        link_ttl: Duration::from_secs(60),
    };
    let retry = RetryPolicy {
        max_tries: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let watcher = async {
        for _ in 0..300 {
            if sink.shown().len() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A moment more: the loop flushes (or fails to) after its batch.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send_replace(true);
    };
    let (ran, ()) = tokio::join!(run_sink(&env, &sink, &retry, rx), watcher);
    ran.expect("the loop starts");
    sink.shown()
}

#[tokio::test]
async fn a_sink_loop_that_cannot_save_its_states_keeps_its_checkpoint_so_a_restart_sends_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).expect("ledger");
    let objects = FsObjectStore::new(dir.path().join("objects")).expect("objects");
    let inner = SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).expect("states");
    let states = Flaky {
        inner: inner.clone(),
        failing: Arc::new(AtomicBool::new(true)),
    };
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = JobId::new();
        let ctx = CommandContext::new("api-key:test", Utc::now());
        execute(&ledger, job, &Command::Submit(noop_spec(1)), &ctx)
            .await
            .expect("submit");
        jobs.push((job, 1));
    }
    jobs.sort();

    // The states cannot be written: everything is shown, but nothing counts as delivered.
    assert_eq!(run_loop(&ledger, &states, &objects, 3).await, jobs);
    assert_eq!(
        ledger
            .checkpoint(&consumer_name("recorder"))
            .await
            .expect("checkpoint"),
        0,
        "the checkpoint does not pass records whose states were not saved"
    );
    for (job, _) in &jobs {
        assert_eq!(
            inner.get("recorder", *job).await.expect("get"),
            SinkState::default()
        );
    }

    // After a restart with a working store, they are sent again — re-sent, never lost.
    states.failing.store(false, Ordering::SeqCst);
    assert_eq!(run_loop(&ledger, &states, &objects, 3).await, jobs);
    assert_eq!(
        ledger
            .checkpoint(&consumer_name("recorder"))
            .await
            .expect("checkpoint"),
        3
    );
    for (job, _) in &jobs {
        assert_eq!(
            inner.get("recorder", *job).await.expect("get").last_version,
            1
        );
    }

    // Delivered and saved: a third run sends nothing.
    assert_eq!(run_loop(&ledger, &states, &objects, 1).await, []);
}
