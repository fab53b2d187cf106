//! The `ViewStore` port: where job views and stats are kept, with a version-guarded write.

use std::future::Future;

use jobledger_events::{JobId, JobKind, Status};

use crate::job_view::JobView;
use crate::stats::Stats;

/// The most views one `list` call returns; larger limits are clamped to it.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Which jobs to list. Newest first means most recently updated first (`updated_at`, then `job_id`, descending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs of this kind.
    pub kind: Option<JobKind>,
    /// Page size, clamped to `1..=MAX_LIST_LIMIT`.
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The views, newest first.
    pub jobs: Vec<JobView>,
    /// Pass back as `ListQuery::cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What can go wrong in a view store. The API maps `BadCursor` to 400, the rest to 503 (retryable) or 500.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The cursor was not made by this store.
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
    /// A stored view cannot be decoded. Never skipped silently.
    #[error("corrupt view of job {job_id}: {reason}")]
    Corrupt {
        /// The job, as stored.
        job_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The database itself failed.
    #[error("view store backend error{}: {source}", if *.retryable { " (retryable)" } else { "" })]
    Backend {
        /// Whether trying again may help (busy, throttled, timeouts).
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ViewError {
    /// A backend error from any cause.
    pub fn backend(
        retryable: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ViewError::Backend {
            retryable,
            source: source.into(),
        }
    }

    /// Whether a retry of the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ViewError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// The read model's storage. Written only by the projector (and by a replay rebuild).
pub trait ViewStore: Send + Sync {
    /// Writes the view if the store has none for the job or holds an older `last_version`;
    /// returns whether it wrote. Duplicate or late writes change nothing.
    fn upsert(&self, view: &JobView) -> impl Future<Output = Result<bool, ViewError>> + Send;

    /// Version-guarded `upsert` of many views (a rebuild); returns how many were written.
    /// Stores may write them in one transaction.
    fn upsert_many(
        &self,
        views: &[JobView],
    ) -> impl Future<Output = Result<usize, ViewError>> + Send {
        async move {
            let mut written = 0;
            for view in views {
                written += usize::from(self.upsert(view).await?);
            }
            Ok(written)
        }
    }

    /// One job's view.
    fn get(&self, job_id: JobId)
    -> impl Future<Output = Result<Option<JobView>, ViewError>> + Send;

    /// A page of views, newest first, filtered by status and kind. The cursor is opaque and stays
    /// valid while jobs are added (new jobs appear before it, never after it).
    fn list(&self, q: &ListQuery) -> impl Future<Output = Result<Page, ViewError>> + Send;

    /// Up to `limit` views with `job_id` greater than `after`, in `job_id` order (oldest job first,
    /// job ids being UUID v7): to walk every view in bounded memory.
    fn scan(
        &self,
        after: Option<JobId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobView>, ViewError>> + Send;

    /// Every view in `job_id` order (for replay diffs and stats); built on `scan`.
    fn all(&self) -> impl Future<Output = Result<Vec<JobView>, ViewError>> + Send {
        async move {
            let mut out: Vec<JobView> = Vec::new();
            loop {
                let page = self.scan(out.last().map(|v| v.job_id), 500).await?;
                if page.is_empty() {
                    return Ok(out);
                }
                out.extend(page);
            }
        }
    }

    /// Removes every view and the saved stats (before a rebuild from the ledger).
    fn clear(&self) -> impl Future<Output = Result<(), ViewError>> + Send;

    /// Before a rebuild writes every view: the store may stop waiting for the disk at each of
    /// its commits, and stop keeping secondary indexes, until [`ViewStore::finish_bulk_write`]
    /// (a rebuild that stops part-way is run again anyway, and the live projector never calls
    /// this).
    fn start_bulk_write(&self) -> impl Future<Output = Result<(), ViewError>> + Send {
        async { Ok(()) }
    }

    /// After a rebuild's writes: the indexes are whole, everything written so far is on disk,
    /// and commits wait for the disk again.
    fn finish_bulk_write(&self) -> impl Future<Output = Result<(), ViewError>> + Send {
        async { Ok(()) }
    }

    /// Saves the latest stats, replacing earlier ones.
    fn save_stats(&self, stats: &Stats) -> impl Future<Output = Result<(), ViewError>> + Send;

    /// The saved stats, if any.
    fn load_stats(&self) -> impl Future<Output = Result<Option<Stats>, ViewError>> + Send;
}
