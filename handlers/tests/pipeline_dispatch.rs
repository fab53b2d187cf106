//! The dispatch policy of `jobledger dev`: fresh submissions are decided on the event itself,
//! without loading the job, and the queue's deduplication and the ledger's version check still
//! keep every job queued once.

mod pipeline_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use jobledger_events::store::LoadedJob;
use jobledger_events::{
    AppendBatch, ChangeFeed, Command, EventStore, IdempotencyRecord, JobId, RecordedEvent,
    SqliteEventStore, Status, StoreError,
};
use jobledger_handlers::dispatch::{
    DispatchPolicy, FRESH_SUBMISSION, StreamRecord, dispatch_batch_with,
};
use jobledger_handlers::launch::{LaunchPolicy, MessageResult, launch_groups};
use jobledger_handlers::ports::JobQueue;
use pipeline_support::{
    Behaviour, event_types, fixture, job, run, simulated_workers, spec, submit,
};

const TRUST: DispatchPolicy = DispatchPolicy {
    trust_fresh_submissions: true,
};

/// The ledger, counting the jobs loaded through it.
struct Counting {
    inner: SqliteEventStore,
    loads: AtomicUsize,
}

impl EventStore for Counting {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(job_id).await
    }
    async fn load_job(&self, job_id: JobId) -> Result<LoadedJob, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_job(job_id).await
    }
    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.inner.append(batch).await
    }
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }
}

async fn feed(store: &SqliteEventStore) -> Vec<StreamRecord> {
    store
        .read_after(0, 1000)
        .await
        .expect("feed")
        .into_iter()
        .map(StreamRecord::from)
        .collect()
}

#[tokio::test]
async fn fresh_submissions_are_queued_without_loading_their_jobs() {
    let f = fixture();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(submit(&f.store, spec()).await);
    }
    let store = Counting {
        inner: f.store.clone(),
        loads: AtomicUsize::new(0),
    };

    let report =
        dispatch_batch_with(&store, &f.queue, &feed(&f.store).await, Utc::now(), TRUST).await;

    assert!(report.is_complete(), "{:?}", report.error);
    assert_eq!(store.loads.load(Ordering::SeqCst), 0);
    for id in &ids {
        assert_eq!(
            event_types(&f.store, *id).await,
            ["JobSubmitted", "JobQueued"]
        );
    }
    assert_eq!(f.queue.stats().await.expect("stats").visible, 10);
}

#[tokio::test]
async fn a_fresh_submission_delivered_again_sends_no_second_message_and_records_nothing_new() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let records = feed(&f.store).await;
    let report = dispatch_batch_with(&f.store, &f.queue, &records, Utc::now(), TRUST).await;
    assert!(report.is_complete(), "{:?}", report.error);
    // The message is taken and deleted before the feed delivers the submission again.
    let got = f
        .queue
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(
        f.queue
            .delete_batch(&[got[0].receipt_handle.clone()])
            .await
            .expect("delete"),
        1
    );

    let again = dispatch_batch_with(&f.store, &f.queue, &records, Utc::now(), TRUST).await;

    assert!(again.is_complete(), "{:?}", again.error);
    assert_eq!(
        event_types(&f.store, id).await,
        ["JobSubmitted", "JobQueued"]
    );
    let stats = f.queue.stats().await.expect("stats");
    assert_eq!(
        (stats.visible, stats.in_flight),
        (0, 0),
        "the copy was deduplicated"
    );
}

#[tokio::test]
async fn an_old_submission_is_checked_against_the_ledger_before_anything_is_sent() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let records = feed(&f.store).await;
    run(
        &f.store,
        id,
        Command::Cancel {
            reason: "changed my mind".into(),
        },
    )
    .await;
    let later = Utc::now() + FRESH_SUBMISSION + chrono::Duration::seconds(1);

    let report = dispatch_batch_with(&f.store, &f.queue, &records, later, TRUST).await;

    assert!(report.is_complete(), "{:?}", report.error);
    let stats = f.queue.stats().await.expect("stats");
    assert_eq!(
        stats.visible, 0,
        "the job was loaded and refused: nothing sent"
    );
}

#[tokio::test]
async fn a_job_cancelled_before_its_fresh_submission_is_dispatched_is_never_queued_or_launched() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let records = feed(&f.store).await;
    run(
        &f.store,
        id,
        Command::Cancel {
            reason: "changed my mind".into(),
        },
    )
    .await;

    let report = dispatch_batch_with(&f.store, &f.queue, &records, Utc::now(), TRUST).await;

    assert!(report.is_complete(), "{:?}", report.error);
    assert_eq!(job(&f.store, id).await.status, Status::Cancelled);
    assert!(
        !event_types(&f.store, id)
            .await
            .contains(&"JobQueued".to_string()),
        "the ledger refused JobQueued"
    );
    // The message sent on trust is acknowledged by the launcher without launching anything.
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Succeed);
    let got = f
        .queue
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("receive");
    let results = launch_groups(
        &f.store,
        &f.queue,
        &launcher,
        &got,
        &*f.time,
        &LaunchPolicy::default(),
    )
    .await;
    assert!(
        results.iter().all(|r| matches!(r, MessageResult::Done)),
        "{results:?}"
    );
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 0);
    assert_eq!(job(&f.store, id).await.status, Status::Cancelled);
}
