//! `SharedFeed`: consumers following the change feed close behind each other share the newest
//! events, and every consumer still sees every event once, in order, whatever it reads when.

mod pipeline_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use jobledger_events::store::LoadedJob;
use jobledger_events::{
    AppendBatch, ChangeFeed, EventStore, FeedEvent, IdempotencyRecord, JobId, RecordedEvent,
    SqliteEventStore, StoreError,
};
use jobledger_handlers::local::SharedFeed;
use pipeline_support::{spec, submit};

/// The ledger, counting feed reads and failing them while `failing` is set.
#[derive(Clone)]
struct Counting {
    inner: SqliteEventStore,
    reads: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl EventStore for Counting {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.load(job_id).await
    }
    async fn load_job(&self, job_id: JobId) -> Result<LoadedJob, StoreError> {
        self.inner.load_job(job_id).await
    }
    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.inner.append(batch).await
    }
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }
}

impl ChangeFeed for Counting {
    async fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::backend(true, "database is locked"));
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_after(seq, limit).await
    }
    async fn wait_after(&self, seq: u64) {
        self.inner.wait_after(seq).await
    }
    async fn checkpoint(&self, consumer: &str) -> Result<u64, StoreError> {
        self.inner.checkpoint(consumer).await
    }
    async fn save_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StoreError> {
        self.inner.save_checkpoint(consumer, seq).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    ledger: SqliteEventStore,
    store: Counting,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteEventStore::open(dir.path().join("events.db")).expect("ledger");
    World {
        store: Counting {
            inner: ledger.clone(),
            reads: Arc::new(AtomicUsize::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
        },
        ledger,
        _dir: dir,
    }
}

async fn submit_many(store: &SqliteEventStore, n: usize) {
    for _ in 0..n {
        submit(store, spec()).await;
    }
}

fn seqs(page: &[FeedEvent]) -> Vec<u64> {
    page.iter().map(|f| f.seq).collect()
}

#[tokio::test]
async fn consumers_close_behind_each_other_read_each_event_from_the_store_once() {
    let w = world();
    submit_many(&w.ledger, 30).await;
    let feed = SharedFeed::new(w.store.clone(), 100);

    let a = feed.read_after(0, 10).await.expect("a");
    let b = feed.read_after(0, 10).await.expect("b");
    assert_eq!(a, b);
    assert_eq!(a, w.ledger.read_after(0, 10).await.expect("store"));
    assert_eq!(
        w.store.reads.load(Ordering::SeqCst),
        1,
        "b was served from memory"
    );

    let a = feed.read_after(10, 15).await.expect("a");
    let b = feed.read_after(10, 5).await.expect("b");
    let c = feed.read_after(3, 4).await.expect("c");
    assert_eq!(seqs(&a), (11..=25).collect::<Vec<_>>());
    assert_eq!(seqs(&b), (11..=15).collect::<Vec<_>>());
    assert_eq!(seqs(&c), (4..=7).collect::<Vec<_>>());
    assert_eq!(w.store.reads.load(Ordering::SeqCst), 2);

    // Past what memory holds, the store answers, and the window grows with it.
    let d = feed.read_after(25, 100).await.expect("d");
    assert_eq!(seqs(&d), (26..=30).collect::<Vec<_>>());
    assert!(feed.read_after(30, 10).await.expect("end").is_empty());
    let e = feed.read_after(20, 100).await.expect("e");
    assert_eq!(seqs(&e), (21..=30).collect::<Vec<_>>());
    assert_eq!(w.store.reads.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn every_consumer_sees_every_event_once_in_order_whatever_the_interleaving() {
    let w = world();
    // A small window, so consumers keep falling out of it and back in.
    let feed = SharedFeed::new(w.store.clone(), 8);
    let limits = [3usize, 7, 50];
    let mut positions = [0u64; 3];
    let mut seen: [Vec<FeedEvent>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut rng = 12345u64;
    let mut appended = 0;
    let mut calls = 0;
    for _ in 0..400 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (rng >> 33) as usize % 4;
        if pick == 3 {
            if appended < 120 {
                submit_many(&w.ledger, 1 + (rng >> 40) as usize % 4).await;
                appended = w.ledger.read_after(0, 10_000).await.expect("all").len();
            }
            continue;
        }
        calls += 1;
        let page = feed
            .read_after(positions[pick], limits[pick])
            .await
            .expect("read");
        assert!(page.len() <= limits[pick]);
        if let Some(last) = page.last() {
            positions[pick] = last.seq;
        }
        seen[pick].extend(page);
    }
    for (i, limit) in limits.iter().enumerate() {
        // Catch up to the end.
        loop {
            calls += 1;
            let page = feed.read_after(positions[i], *limit).await.expect("read");
            let Some(last) = page.last() else { break };
            positions[i] = last.seq;
            seen[i].extend(page);
        }
    }
    let all = w.ledger.read_after(0, 10_000).await.expect("all");
    assert!(all.len() >= 100, "{} events", all.len());
    for (i, got) in seen.iter().enumerate() {
        assert_eq!(got, &all, "consumer {i} saw the feed as the store holds it");
    }
    let reads = w.store.reads.load(Ordering::SeqCst);
    assert!(
        reads < calls,
        "some reads were served from memory: {reads} of {calls} went to the store"
    );
}

#[tokio::test]
async fn a_reader_far_behind_reads_from_the_store_and_leaves_the_window_to_the_others() {
    let w = world();
    submit_many(&w.ledger, 40).await;
    let feed = SharedFeed::new(w.store.clone(), 10);
    feed.read_after(30, 100).await.expect("front");
    assert_eq!(w.store.reads.load(Ordering::SeqCst), 1);

    let old = feed.read_after(0, 5).await.expect("behind");
    assert_eq!(seqs(&old), [1, 2, 3, 4, 5]);
    assert_eq!(w.store.reads.load(Ordering::SeqCst), 2);
    let front = feed.read_after(32, 100).await.expect("front again");
    assert_eq!(seqs(&front), (33..=40).collect::<Vec<_>>());
    assert_eq!(
        w.store.reads.load(Ordering::SeqCst),
        2,
        "the window still holds the front"
    );
}

#[tokio::test]
async fn a_failing_store_fails_the_read_and_a_later_read_recovers() {
    let w = world();
    submit_many(&w.ledger, 5).await;
    let feed = SharedFeed::new(w.store.clone(), 100);
    w.store.failing.store(true, Ordering::SeqCst);
    let err = feed.read_after(0, 10).await.expect_err("the store is down");
    assert!(err.is_retryable(), "{err}");
    w.store.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        seqs(&feed.read_after(0, 10).await.expect("read")),
        [1, 2, 3, 4, 5]
    );
}

#[tokio::test]
async fn a_window_of_nothing_sends_every_read_to_the_store() {
    let w = world();
    submit_many(&w.ledger, 5).await;
    let feed = SharedFeed::new(w.store.clone(), 0);
    for _ in 0..3 {
        assert_eq!(feed.read_after(0, 10).await.expect("read").len(), 5);
    }
    assert_eq!(w.store.reads.load(Ordering::SeqCst), 3);
    assert!(feed.read_after(0, 0).await.expect("nothing").is_empty());
}
