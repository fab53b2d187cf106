//! `SharedFeed`: the ledger with its newest change-feed events kept in memory, so the consumers of
//! `jobledger dev` (projector, dispatcher, notifier) that follow the feed close behind each other
//! read each event from SQLite once between them instead of once each.
//!
//! Consumers keep their own positions and checkpoints; this only changes where a page comes from.
//! A read that the memory window covers is answered from it; any other read goes to the store, and
//! a page that continues the window is added to it. Pages are always consecutive feed events from
//! the asked position on, as the store would answer them, possibly shorter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use jobledger_events::store::LoadedJob;
use jobledger_events::{
    AppendBatch, ChangeFeed, EventStore, FeedEvent, IdempotencyRecord, JobId, RecordedEvent,
    StoreError,
};

/// Feed events kept in memory by default: a few batches of every consumer.
pub const SHARED_FEED_EVENTS: usize = 2048;

/// A ledger whose recent feed is shared by its local consumers. Cheap to clone; clones share the
/// window.
#[derive(Clone, Debug)]
pub struct SharedFeed<S> {
    store: S,
    window: Arc<Mutex<Window>>,
}

/// The newest events read from the store: every feed event after `from`, in order, up to the
/// last one held.
#[derive(Debug)]
struct Window {
    from: u64,
    events: VecDeque<FeedEvent>,
    capacity: usize,
}

impl Window {
    /// The events after `seq`, at most `limit`, if the window holds every event after `seq` up
    /// to its end and at least one of them.
    fn after(&self, seq: u64, limit: usize) -> Option<Vec<FeedEvent>> {
        let last = self.events.back()?.seq;
        if seq < self.from || seq >= last {
            return None;
        }
        let start = self.events.partition_point(|e| e.seq <= seq);
        Some(self.events.range(start..).take(limit).cloned().collect())
    }

    /// Adds `page`, the store's answer to a read after `seq`, where it continues the window.
    fn extend(&mut self, seq: u64, page: &[FeedEvent]) {
        if self.capacity == 0 {
            return;
        }
        match self.events.back().map(|e| e.seq) {
            // The page overlaps or touches the window's end: keep what is new.
            Some(last) if seq >= self.from && seq <= last => {
                self.events
                    .extend(page.iter().filter(|e| e.seq > last).cloned());
            }
            // A reader far behind the window: leave the window to the readers at the front.
            Some(_) if seq < self.from => return,
            // Nothing held, or the page starts past the window's end: it starts a new window.
            _ => {
                self.from = seq;
                self.events.clear();
                self.events.extend(page.iter().cloned());
            }
        }
        while self.events.len() > self.capacity {
            if let Some(dropped) = self.events.pop_front() {
                self.from = dropped.seq;
            }
        }
    }
}

impl<S> SharedFeed<S> {
    /// `store` with a window of its newest `capacity` feed events (0 keeps nothing).
    pub fn new(store: S, capacity: usize) -> Self {
        SharedFeed {
            store,
            window: Arc::new(Mutex::new(Window {
                from: 0,
                events: VecDeque::with_capacity(capacity.min(SHARED_FEED_EVENTS)),
                capacity,
            })),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.store
    }
}

impl<S: EventStore> EventStore for SharedFeed<S> {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.load(job_id).await
    }

    async fn load_job(&self, job_id: JobId) -> Result<LoadedJob, StoreError> {
        self.store.load_job(job_id).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.store.append(batch).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.store.idempotency(key).await
    }
}

impl<S: ChangeFeed> ChangeFeed for SharedFeed<S> {
    async fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A poisoned window is only a lost cache: read from the store.
        if let Some(page) = self.window.lock().ok().and_then(|w| w.after(seq, limit)) {
            return Ok(page);
        }
        let page = self.store.read_after(seq, limit).await?;
        if !page.is_empty()
            && let Ok(mut window) = self.window.lock()
        {
            window.extend(seq, &page);
        }
        Ok(page)
    }

    async fn wait_after(&self, seq: u64) {
        self.store.wait_after(seq).await
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64, StoreError> {
        self.store.checkpoint(consumer).await
    }

    async fn save_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StoreError> {
        self.store.save_checkpoint(consumer, seq).await
    }
}
