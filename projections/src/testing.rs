//! Test helpers (feature `testing`): a view store that lets a test watch and fail its calls.

use std::sync::Arc;

use jobledger_events::JobId;

use crate::{JobView, ListQuery, Page, Stats, ViewError, ViewStore};

/// A call a [`WatchedViews`] shows its hook before passing it on.
#[derive(Debug)]
pub enum ViewCall<'a> {
    /// `upsert` of one view.
    Upsert(&'a JobView),
    /// `upsert_many` of a batch.
    UpsertMany(&'a [JobView]),
    /// `get` of one job's view.
    Get(JobId),
}

/// What a [`WatchedViews`] calls first: an error fails the call, `Ok` passes it on.
type Hook = dyn Fn(ViewCall<'_>) -> Result<(), ViewError> + Send + Sync;

/// A view store that shows its writes and reads to a hook, which may count them or fail them;
/// everything else goes straight to `inner`. Clones share the hook.
#[derive(Clone)]
pub struct WatchedViews<V> {
    inner: V,
    hook: Arc<Hook>,
}

impl<V> WatchedViews<V> {
    /// Wraps `inner`; `hook` sees each `upsert`, `upsert_many` and `get` first.
    pub fn new(
        inner: V,
        hook: impl Fn(ViewCall<'_>) -> Result<(), ViewError> + Send + Sync + 'static,
    ) -> Self {
        WatchedViews {
            inner,
            hook: Arc::new(hook),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &V {
        &self.inner
    }
}

impl<V: ViewStore> ViewStore for WatchedViews<V> {
    async fn upsert(&self, view: &JobView) -> Result<bool, ViewError> {
        (self.hook)(ViewCall::Upsert(view))?;
        self.inner.upsert(view).await
    }

    async fn upsert_many(&self, views: &[JobView]) -> Result<usize, ViewError> {
        (self.hook)(ViewCall::UpsertMany(views))?;
        self.inner.upsert_many(views).await
    }

    async fn get(&self, job_id: JobId) -> Result<Option<JobView>, ViewError> {
        (self.hook)(ViewCall::Get(job_id))?;
        self.inner.get(job_id).await
    }

    async fn list(&self, q: &ListQuery) -> Result<Page, ViewError> {
        self.inner.list(q).await
    }

    async fn scan(&self, after: Option<JobId>, limit: usize) -> Result<Vec<JobView>, ViewError> {
        self.inner.scan(after, limit).await
    }

    async fn clear(&self) -> Result<(), ViewError> {
        self.inner.clear().await
    }

    async fn start_bulk_write(&self) -> Result<(), ViewError> {
        self.inner.start_bulk_write().await
    }

    async fn finish_bulk_write(&self) -> Result<(), ViewError> {
        self.inner.finish_bulk_write().await
    }

    async fn save_stats(&self, stats: &Stats) -> Result<(), ViewError> {
        self.inner.save_stats(stats).await
    }

    async fn load_stats(&self) -> Result<Option<Stats>, ViewError> {
        self.inner.load_stats().await
    }
}
