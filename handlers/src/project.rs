//! The projector core: keeps the `jobs` read model current from the event stream.
//!
//! Each event is folded into its job's view and written with the view store's version guard, so
//! duplicate or late deliveries change nothing. When an event arrives ahead of the view (a DynamoDB
//! stream orders records per item only, so a job's versions may come out of order across a batch),
//! the job's whole history is reloaded from the ledger and folded instead: order comes from
//! `version`, never from arrival.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jobledger_events::store::{ChangeFeed, EventStore, StoreError};
use jobledger_events::{JobId, RecordedEvent};
use jobledger_projections::{JobView, ProjectionError, ViewError, ViewStore};
use tokio::sync::watch;

use crate::batch::{BatchReport, process_in_order};

/// The change-feed consumer name (checkpoint key) of the local projector.
pub const PROJECTOR: &str = "projector";
/// Feed events read per batch by the local projector.
pub const FEED_BATCH: usize = 256;
/// Tries of an event that fails for good before the local projector skips it (its DLQ).
pub const MAX_POISON_TRIES: u32 = 5;
/// How long the local projector waits, once new events arrive at the end of the feed, for more
/// to join them: the read model lags by at most this much, and under load each batch holds many
/// events, often several of one job.
pub const PROJECTOR_LINGER: Duration = Duration::from_millis(10);
/// Longest pause between retries of a failing batch.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Why an event could not be projected.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// Reloading the job's history failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the view failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The event (or the history) cannot be folded: corrupt or undecodable.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The stream delivered a version the ledger does not hold yet (a lagging read): try again.
    #[error("job {job_id}: stream delivered version {version} but the ledger holds {head}")]
    Behind {
        /// The job.
        job_id: JobId,
        /// The delivered version.
        version: u64,
        /// The ledger's head version.
        head: u64,
    },
}

impl ProjectError {
    /// Whether delivering the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProjectError::Store(e) => e.is_retryable(),
            ProjectError::View(e) => e.is_retryable(),
            ProjectError::Projection(_) => false,
            ProjectError::Behind { .. } => true,
        }
    }
}

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projected {
    /// Folded into the view it follows and written.
    Applied,
    /// At or below the view's version: a duplicate or late delivery; nothing written.
    Skipped,
    /// Ahead of the view: the job's history was reloaded and folded.
    Rebuilt,
}

/// Views written during one batch, so consecutive events of a job need not re-read the store.
type Cache = Mutex<HashMap<JobId, JobView>>;

/// Projects `events` in order, stopping at the first failure.
///
/// The report names failed records by `event_id`; `succeeded` counts the events done from the
/// start, so a caller holding the source records (stream sequence numbers) fails `records[succeeded..]`.
pub async fn project<S: EventStore, V: ViewStore>(
    store: &S,
    views: &V,
    events: &[RecordedEvent],
) -> BatchReport<ProjectError> {
    let cache: Cache = Mutex::new(HashMap::new());
    let cache = &cache;
    process_in_order(
        events,
        |e| e.event_id.to_string(),
        |e| async move { project_one(store, views, cache, e).await.map(|_| ()) },
    )
    .await
}

/// Projects one event; see [`project`].
pub async fn project_one<S: EventStore, V: ViewStore>(
    store: &S,
    views: &V,
    cache: &Mutex<HashMap<JobId, JobView>>,
    event: &RecordedEvent,
) -> Result<Projected, ProjectError> {
    let cached = cache
        .lock()
        .ok()
        .and_then(|c| c.get(&event.job_id).cloned());
    let current = match cached {
        Some(view) => Some(view),
        None => views.get(event.job_id).await?,
    };
    let head = current.as_ref().map_or(0, |v| v.last_version);
    if event.version <= head {
        return Ok(Projected::Skipped);
    }
    let (view, outcome) = if event.version == head + 1 {
        match JobView::apply(current, event)? {
            Some(view) => (view, Projected::Applied),
            // `apply` only answers `None` for nothing folded, which cannot follow a folded event.
            None => return Ok(Projected::Skipped),
        }
    } else {
        let history = store.load(event.job_id).await?;
        let ledger_head = history.last().map_or(0, |e| e.version);
        if ledger_head < event.version {
            return Err(ProjectError::Behind {
                job_id: event.job_id,
                version: event.version,
                head: ledger_head,
            });
        }
        tracing::info!(job_id = %event.job_id, view_version = head, event_version = event.version,
            "event ahead of its view: rebuilding the view from the ledger");
        match JobView::fold(&history)? {
            Some(view) => (view, Projected::Rebuilt),
            None => return Ok(Projected::Skipped),
        }
    };
    let written = views.upsert(&view).await?;
    if let Ok(mut c) = cache.lock() {
        if written {
            c.insert(view.job_id, view);
        } else {
            // Someone wrote a newer view meanwhile: read it again next time.
            c.remove(&event.job_id);
        }
    }
    Ok(outcome)
}

/// Views the local projector keeps between batches before it starts over (a bound on memory).
pub const VIEW_CACHE_LIMIT: usize = 50_000;

/// Views of unfinished jobs as the local projector last wrote them, so consecutive batches need
/// not read a job's view again; emptied before a batch once it holds more than its limit.
#[derive(Debug)]
pub struct ProjectorCache {
    views: HashMap<JobId, JobView>,
    limit: usize,
}

impl Default for ProjectorCache {
    fn default() -> Self {
        ProjectorCache::new(VIEW_CACHE_LIMIT)
    }
}

impl ProjectorCache {
    /// A cache of at most about `limit` views.
    pub fn new(limit: usize) -> Self {
        ProjectorCache {
            views: HashMap::new(),
            limit,
        }
    }

    /// Views held now.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether it holds no view.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

/// Projects `events` in order into views held in `cache`, and writes every view the batch changed
/// with one [`ViewStore::upsert_many`] (one transaction, one fsync for the whole batch, instead of
/// one per event). Same report as [`project`]: on a failure, the events before it are written.
///
/// The store's version guard keeps the cache honest: when a write is refused (someone wrote a
/// newer view) the batch's views are dropped from the cache and read again next time. When the
/// write fails, nothing of the batch is reported done and nothing unwritten stays cached.
pub async fn project_batch<S: EventStore, V: ViewStore>(
    store: &S,
    views: &V,
    cache: &mut ProjectorCache,
    events: &[RecordedEvent],
) -> BatchReport<ProjectError> {
    if cache.views.len() > cache.limit {
        cache.views.clear();
    }
    let cache = &mut cache.views;
    let mut changed: Vec<JobId> = Vec::new();
    let mut succeeded = 0;
    let mut error = None;
    for event in events {
        match next_view(store, views, cache, event).await {
            Ok(None) => {}
            Ok(Some(view)) => {
                if !changed.contains(&view.job_id) {
                    changed.push(view.job_id);
                }
                cache.insert(view.job_id, view);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        succeeded += 1;
    }
    if !changed.is_empty() {
        let dirty: Vec<JobView> = changed
            .iter()
            .filter_map(|id| cache.get(id).cloned())
            .collect();
        match views.upsert_many(&dirty).await {
            Ok(written) if written == dirty.len() => {
                // A finished job rarely gets another event: its view need not stay in memory.
                for view in dirty.iter().filter(|v| v.status.is_terminal()) {
                    cache.remove(&view.job_id);
                }
            }
            Ok(_) => {
                // Some view was newer in the store: read those jobs again next time.
                for id in &changed {
                    cache.remove(id);
                }
            }
            Err(e) => {
                for id in &changed {
                    cache.remove(id);
                }
                succeeded = 0;
                error = Some(e.into());
            }
        }
    }
    BatchReport {
        failed_ids: events[succeeded..]
            .iter()
            .map(|e| e.event_id.to_string())
            .collect(),
        succeeded,
        error,
    }
}

/// The job's view after `event`, from the cached or stored view when the event follows it, else
/// folded from the ledger; `None` when the event changes nothing (a duplicate or late delivery).
async fn next_view<S: EventStore, V: ViewStore>(
    store: &S,
    views: &V,
    cache: &HashMap<JobId, JobView>,
    event: &RecordedEvent,
) -> Result<Option<JobView>, ProjectError> {
    let current = match cache.get(&event.job_id) {
        Some(view) => Some(view.clone()),
        // A job's first event starts its view: nothing to read. Should the store hold a later
        // view (the feed replayed after a restart), its version guard refuses this one.
        None if event.version == 1 => None,
        None => views.get(event.job_id).await?,
    };
    let head = current.as_ref().map_or(0, |v| v.last_version);
    if event.version <= head {
        return Ok(None);
    }
    if event.version == head + 1 {
        return Ok(JobView::apply(current, event)?);
    }
    let history = store.load(event.job_id).await?;
    let ledger_head = history.last().map_or(0, |e| e.version);
    if ledger_head < event.version {
        return Err(ProjectError::Behind {
            job_id: event.job_id,
            version: event.version,
            head: ledger_head,
        });
    }
    tracing::info!(job_id = %event.job_id, view_version = head, event_version = event.version,
        "event ahead of its view: rebuilding the view from the ledger");
    Ok(JobView::fold(&history)?)
}

/// Follows the change feed and keeps the views current until `shutdown` turns true (or its sender
/// is dropped): the local projector of `jobledger dev`.
///
/// The position is saved as the `projector` checkpoint after each batch. A failing event is retried
/// with backoff (at most [`MAX_RETRY_DELAY`] apart); one that fails for good is skipped after
/// [`MAX_POISON_TRIES`] tries and logged, as the Lambda's on-failure destination would take it.
/// Returns an error only if the checkpoint cannot be read at start.
pub async fn run_projector<S, V>(
    store: &S,
    views: &V,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProjectError>
where
    S: EventStore + ChangeFeed,
    V: ViewStore,
{
    let mut checkpoint = store.checkpoint(PROJECTOR).await?;
    // (feed position, tries) of the event that failed last.
    let mut failing: (u64, u32) = (0, 0);
    let mut cache = ProjectorCache::default();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let feed = match store.read_after(checkpoint, FEED_BATCH).await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error = %e, "projector cannot read the change feed");
                failing = (checkpoint, failing.1 + 1);
                if pause(retry_delay(failing.1), &mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        if feed.is_empty() {
            tokio::select! {
                _ = store.wait_after(checkpoint) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            // Let a few more commits land: one batch then writes them, and a job's consecutive
            // events, with one view write and one transaction.
            if pause(PROJECTOR_LINGER, &mut shutdown).await {
                return Ok(());
            }
            continue;
        }
        let seqs: Vec<u64> = feed.iter().map(|f| f.seq).collect();
        let events: Vec<RecordedEvent> = feed.into_iter().map(|f| f.event).collect();
        let report = project_batch(store, views, &mut cache, &events).await;
        let mut next = match report.succeeded {
            0 => checkpoint,
            n => seqs[n - 1],
        };
        let failed = seqs.get(report.succeeded).zip(events.get(report.succeeded));
        if let (Some(error), Some((&seq, failed))) = (report.error, failed) {
            let tries = if failing.0 == seq { failing.1 + 1 } else { 1 };
            failing = (seq, tries);
            if !error.is_retryable() && tries >= MAX_POISON_TRIES {
                tracing::error!(error = %error, job_id = %failed.job_id, version = failed.version,
                    seq, tries, "projector skips an event that keeps failing");
                next = seq;
            } else {
                tracing::warn!(error = %error, job_id = %failed.job_id, version = failed.version,
                    seq, tries, "projector will retry");
            }
        }
        if next != checkpoint {
            checkpoint = next;
            // The position is also kept in memory: a failed save only means replaying a little after a restart.
            if let Err(e) = store.save_checkpoint(PROJECTOR, checkpoint).await {
                tracing::warn!(error = %e, "projector cannot save its checkpoint");
            }
        }
        if failing.0 > checkpoint && pause(retry_delay(failing.1), &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Exponential backoff from 100 ms, capped at [`MAX_RETRY_DELAY`].
fn retry_delay(tries: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << tries.min(16));
    Duration::from_millis(ms).min(MAX_RETRY_DELAY)
}

/// Sleeps for `delay`; returns true if shutdown was asked for meanwhile.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.wait_for(|stop| *stop) => return true,
    }
    *shutdown.borrow()
}
