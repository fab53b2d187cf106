//! Read models from the ledger: `rebuild` (jobs and stats, or a dry-run diff) and `stats`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use jobledger_events::JobId;
use jobledger_projections::{
    JobView, Period, Replacement, SqliteViewStore, Stats, StatsBuilder, ViewError, ViewStore,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::drive::{default_parts, drive_parts};
use crate::format::{Entry, EventItem, Item};
use crate::source::{HistorySource, SourceError};

/// Views a fold part writes (or hands to the comparer) at a time: one transaction (one fsync)
/// per batch. Larger batches were no faster and hold more views in memory (4,096: ~95 MB peak
/// for a rebuild, 1,024: ~45 MB).
const VIEW_BATCH: usize = 1024;

/// Stored views read per page when a dry run walks the read model.
const SCAN_PAGE: usize = 1000;

/// Problems met while folding (the damaged job's view stops before the damage).
const MAX_ERRORS_KEPT: usize = 1000;

/// Differences a dry run keeps (all are counted).
const MAX_DIFFS_KEPT: usize = 1000;

/// Where a fold's complete views go.
pub trait ViewSink: Send {
    /// Takes one job's complete view.
    fn view(&mut self, view: JobView);

    /// Called once, after the last view.
    fn flush(&mut self) {}
}

/// Folds job views from a stream of entries, handing each job's view to its sink once complete.
pub struct ViewFolder<K> {
    grouped: bool,
    /// The job being folded when jobs are contiguous, with its view (`None` before its first
    /// event folds): kept apart from `open`, so a grouped source costs no map lookup per event.
    current: Option<(JobId, Option<JobView>)>,
    /// Every job folded so far when jobs may interleave.
    open: HashMap<JobId, Option<JobView>>,
    /// Jobs whose fold hit an error: later events of them are skipped, not cascaded into more errors.
    broken: HashSet<JobId>,
    sink: K,
    /// Events folded.
    pub events: u64,
    /// Jobs handed out.
    pub jobs: u64,
    /// What could not be folded.
    pub errors: Vec<String>,
    /// All errors, counted.
    pub error_count: u64,
}

impl<K: ViewSink> ViewFolder<K> {
    /// A folder for a source whose jobs are contiguous (`grouped`) or interleaved.
    pub fn new(grouped: bool, sink: K) -> Self {
        ViewFolder {
            grouped,
            current: None,
            open: HashMap::new(),
            broken: HashSet::new(),
            sink,
            events: 0,
            jobs: 0,
            errors: Vec::new(),
            error_count: 0,
        }
    }

    fn error(&mut self, msg: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(msg);
        }
    }

    fn emit(&mut self, view: JobView) {
        self.jobs += 1;
        self.sink.view(view);
    }

    fn flush_current(&mut self) {
        if let Some((_, Some(view))) = self.current.take() {
            self.emit(view);
        }
    }

    /// Feeds one entry.
    pub fn entry(&mut self, entry: Entry) {
        self.item(entry.item());
    }

    /// Feeds one item.
    pub fn item(&mut self, item: Item<'_>) {
        match item {
            Item::Event(e) => self.event(e),
            Item::Pin(..) => self.flush_current(),
            Item::Unreadable {
                job_id,
                version,
                reason,
                pos,
            } => {
                if let Some(id) = job_id {
                    self.broken.insert(id);
                }
                self.error(format!(
                    "job {} version {}: unreadable ({reason}) {pos}",
                    job_id.map_or("?".into(), |j| j.to_string()),
                    version.map_or("?".into(), |v| v.to_string())
                ));
            }
        }
    }

    /// Folds one event.
    pub fn event(&mut self, e: EventItem<'_>) {
        let job_id = e.head.job_id;
        if self.grouped && self.current.as_ref().map(|c| c.0) != Some(job_id) {
            self.flush_current();
            self.current = Some((job_id, None));
        }
        if !self.broken.is_empty() && self.broken.contains(&job_id) {
            return;
        }
        self.events += 1;
        let view = match &mut self.current {
            Some((id, view)) if *id == job_id => view,
            _ => self.open.entry(job_id).or_default(),
        };
        let head = e.head;
        if let Err(err) = JobView::apply_in_place(view, head, || e.decode()) {
            self.broken.insert(job_id);
            self.error(err.to_string());
        }
    }

    /// Hands out the views still open (in job id order), flushes the sink and returns the
    /// counts with the sink.
    pub fn finish(mut self) -> (FoldSummary, K) {
        self.flush_current();
        let mut rest: Vec<JobView> = self.open.drain().filter_map(|(_, v)| v).collect();
        rest.sort_by_key(|v| v.job_id);
        for view in rest {
            self.emit(view);
        }
        self.sink.flush();
        let summary = FoldSummary {
            events: self.events,
            jobs: self.jobs,
            errors: std::mem::take(&mut self.errors),
            error_count: self.error_count,
        };
        (summary, self.sink)
    }
}

/// What a fold went through.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FoldSummary {
    /// Events folded.
    pub events: u64,
    /// Views produced.
    pub jobs: u64,
    /// Problems (first 1,000).
    pub errors: Vec<String>,
    /// Problems, counted.
    pub error_count: u64,
}

impl FoldSummary {
    /// Adds the counts of another part of the same fold.
    fn add(&mut self, part: FoldSummary) {
        self.events += part.events;
        self.jobs += part.jobs;
        self.error_count += part.error_count;
        let room = MAX_ERRORS_KEPT.saturating_sub(self.errors.len());
        self.errors.extend(part.errors.into_iter().take(room));
    }
}

/// Folds every view of a source in up to `parts` parts, each into a sink of its own made by
/// `make`; returns the fold's counts and the sinks, one per part.
pub async fn fold_views<S, K, M>(
    src: &S,
    show: bool,
    what: &str,
    parts: usize,
    make: M,
) -> Result<(FoldSummary, Vec<K>), SourceError>
where
    S: HistorySource,
    K: ViewSink + 'static,
    M: Fn() -> K,
{
    let grouped = src.grouped();
    let folders = drive_parts(
        src,
        false,
        show,
        what,
        parts,
        || ViewFolder::new(grouped, make()),
        |f, item| f.item(item),
    )
    .await?;
    // Finishing hands the last views to the sinks, which may block: not on the async runtime.
    tokio::task::spawn_blocking(move || {
        let mut total = FoldSummary::default();
        let mut sinks = Vec::with_capacity(folders.len());
        for folder in folders {
            let (summary, sink) = folder.finish();
            total.add(summary);
            sinks.push(sink);
        }
        (total, sinks)
    })
    .await
    .map_err(|e| SourceError::Unavailable(format!("fold failed: {e}")))
}

/// The figures of several parts of one fold, as if one builder had counted every view.
fn merge_stats(period: Period, parts: Vec<StatsBuilder>) -> Stats {
    parts
        .into_iter()
        .fold(StatsBuilder::new(period), |mut all, part| {
            all.merge(part);
            all
        })
        .finish()
}

/// `stats` over a period, folded straight from the ledger (each part keeps its own figures).
pub async fn stats<S: HistorySource>(
    src: &S,
    period: Period,
    show: bool,
) -> anyhow::Result<(Stats, FoldSummary)> {
    let (summary, parts) = fold_views(src, show, "stats", default_parts(), || {
        StatsBuilder::new(period)
    })
    .await?;
    Ok((merge_stats(period, parts), summary))
}

impl ViewSink for StatsBuilder {
    fn view(&mut self, view: JobView) {
        self.add(&view);
    }
}

/// Where a rebuild's batches of views go.
enum Target<V> {
    /// Nowhere (stats only).
    Nowhere,
    /// To the dry run's comparer.
    Compare(mpsc::Sender<Vec<JobView>>),
    /// Into the store, from the part's own thread: the batch is serialised there, on every core
    /// at once, and only the store's writes take turns.
    Write {
        store: V,
        runtime: tokio::runtime::Handle,
        /// Set by the first part that fails, so the others stop writing too.
        failed: Arc<AtomicBool>,
    },
}

/// A part's sink in `rebuild`: counts stats and hands views on in batches.
struct Batches<V> {
    stats: StatsBuilder,
    batch: Vec<JobView>,
    target: Target<V>,
    written: u64,
    error: Option<ViewError>,
}

impl<V: ViewStore> Batches<V> {
    fn new(target: Target<V>) -> Self {
        Batches {
            stats: StatsBuilder::new(Period::ALL),
            batch: Vec::new(),
            target,
            written: 0,
            error: None,
        }
    }

    fn send(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        match &self.target {
            Target::Nowhere => {}
            Target::Compare(tx) => {
                if tx.blocking_send(batch).is_err() {
                    // The comparer stopped on an error it reports itself.
                    self.target = Target::Nowhere;
                }
            }
            Target::Write {
                store,
                runtime,
                failed,
            } => {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                match runtime.block_on(store.upsert_many(&batch)) {
                    Ok(n) => self.written += n as u64,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        self.error = Some(e);
                    }
                }
            }
        }
    }
}

impl<V: ViewStore> ViewSink for Batches<V> {
    fn view(&mut self, view: JobView) {
        self.stats.add(&view);
        if !matches!(self.target, Target::Nowhere) {
            self.batch.push(view);
            if self.batch.len() == VIEW_BATCH {
                self.send();
            }
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.send();
        }
        // Closes the channel to the comparer once every part has flushed.
        self.target = Target::Nowhere;
    }
}

/// Which read models `rebuild` recomputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Projection {
    /// Job views.
    Jobs,
    /// Saved stats (all time).
    Stats,
    /// Both.
    All,
}

/// How one stored view differs from the rebuilt one.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ViewDiff {
    /// The job.
    pub job_id: JobId,
    /// `missing` (not in the read model), `extra` (not in the ledger) or `differs`.
    pub change: &'static str,
    /// For `differs`: field → [stored, rebuilt].
    pub fields: BTreeMap<String, (serde_json::Value, serde_json::Value)>,
}

/// What `rebuild` did (or, with `--dry-run`, would change).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildReport {
    /// The fold.
    pub fold: FoldSummary,
    /// Views written.
    pub written: u64,
    /// Differences between the read model and the ledger (dry run only; first 1,000).
    pub diffs: Vec<ViewDiff>,
    /// All differing views, counted (dry run only).
    pub diff_count: u64,
    /// Stats fields that differ: field → [stored, rebuilt] (dry run only).
    pub stats_diff: BTreeMap<String, (serde_json::Value, serde_json::Value)>,
    /// Whether the read model held saved stats before the rebuild.
    pub stats_saved: bool,
}

/// Field-by-field difference of two JSON objects.
pub fn json_diff(
    stored: &serde_json::Value,
    rebuilt: &serde_json::Value,
) -> BTreeMap<String, (serde_json::Value, serde_json::Value)> {
    let mut out = BTreeMap::new();
    let empty = serde_json::Map::new();
    let a = stored.as_object().unwrap_or(&empty);
    let b = rebuilt.as_object().unwrap_or(&empty);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (
            a.get(k).cloned().unwrap_or(serde_json::Value::Null),
            b.get(k).cloned().unwrap_or(serde_json::Value::Null),
        );
        if x != y {
            out.insert(k.clone(), (x, y));
        }
    }
    out
}

/// Recomputes the read models from the ledger into `views`; never calls a reactor (nothing is
/// notified). With `dry_run`, writes nothing and reports how the read model differs instead.
///
/// Views are folded on every core, each part writing its views in large batches (serialised on
/// its own thread; the store's writes take turns). A dry run of a source that hands out jobs in
/// job id order ([`HistorySource::sorted`]) folds in one part and merges its views with one
/// ordered walk of the read model; other sources look each view up and walk the read model once
/// at the end for views of jobs the ledger lacks.
pub async fn rebuild<S, V>(
    src: &S,
    views: &V,
    projection: Projection,
    dry_run: bool,
    show: bool,
) -> anyhow::Result<RebuildReport>
where
    S: HistorySource,
    V: ViewStore + Clone + 'static,
{
    rebuild_views(src, views, projection, dry_run, show)
        .await
        .map_err(|e| {
            if e.is::<WritesStopped>() {
                e.context(
                    "the read model is incomplete until a rebuild finishes (the ledger is \
                     untouched; run rebuild again)",
                )
            } else {
                e
            }
        })
}

/// [`rebuild`], saying nothing of the state a failed rebuild leaves the read model in.
async fn rebuild_views<S, V>(
    src: &S,
    views: &V,
    projection: Projection,
    dry_run: bool,
    show: bool,
) -> anyhow::Result<RebuildReport>
where
    S: HistorySource,
    V: ViewStore + Clone + 'static,
{
    let write_jobs = matches!(projection, Projection::Jobs | Projection::All);
    let write_stats = matches!(projection, Projection::Stats | Projection::All);
    let writes_views = write_jobs && !dry_run;
    let previous_stats = views.load_stats().await?;
    if writes_views {
        views.clear().await?;
        if let (false, Some(previous)) = (write_stats, &previous_stats) {
            // `clear` dropped the saved stats too; a jobs-only rebuild puts them back untouched,
            // at once, so a rebuild that fails later does not lose them.
            views.save_stats(previous).await?;
        }
        views.start_bulk_write().await?;
    }
    let ordered = dry_run && src.sorted();
    let (tx, rx) = mpsc::channel::<Vec<JobView>>(1);
    let store = views.clone();
    let comparer = tokio::spawn(async move {
        let mut out = Consumed::default();
        match (dry_run && write_jobs, ordered) {
            (false, _) => {}
            (true, true) => merge_views(&store, rx, &mut out).await?,
            (true, false) => look_up_views(&store, rx, &mut out).await?,
        }
        Ok::<_, anyhow::Error>(out)
    });
    // A writing part waits while the store writes its batch: one part more keeps every core folding.
    let parts = match (ordered, writes_views) {
        (true, _) => 1,
        (false, true) => default_parts() + 1,
        (false, false) => default_parts(),
    };
    let (runtime, failed) = (tokio::runtime::Handle::current(), Arc::default());
    let folded = fold_views(src, show, "rebuild", parts, || {
        Batches::new(match (write_jobs, dry_run) {
            (false, _) => Target::Nowhere,
            (true, true) => Target::Compare(tx.clone()),
            (true, false) => Target::Write {
                store: views.clone(),
                runtime: runtime.clone(),
                failed: Arc::clone(&failed),
            },
        })
    })
    .await;
    drop(tx);
    let consumed = comparer.await;
    // Saved before the bulk write ends, so its last sync covers them too.
    let folded = match (folded, consumed) {
        (Ok((fold, parts)), Ok(Ok(mut consumed))) => {
            let mut stats = Vec::with_capacity(parts.len());
            let mut write_error = None;
            for part in parts {
                consumed.written += part.written;
                write_error = write_error.or(part.error);
                stats.push(part.stats);
            }
            let stats = merge_stats(Period::ALL, stats);
            match write_error {
                Some(cause) => Err(anyhow::Error::new(WritesStopped {
                    written: consumed.written,
                    jobs: fold.jobs,
                    cause,
                })),
                None if write_stats && !dry_run => views
                    .save_stats(&stats)
                    .await
                    .map(|()| (fold, consumed, stats))
                    .map_err(anyhow::Error::new),
                None => Ok((fold, consumed, stats)),
            }
        }
        (Err(e), _) => Err(e.into()),
        (_, Err(e)) => Err(e.into()),
        (_, Ok(Err(e))) => Err(e),
    };
    // Every view written is on disk again before anything else can return.
    let finished = if writes_views {
        views.finish_bulk_write().await
    } else {
        Ok(())
    };
    let (fold, consumed, stats) = folded?;
    finished?;
    let mut report = RebuildReport {
        fold,
        written: consumed.written,
        diffs: consumed.diffs,
        diff_count: consumed.diff_count,
        stats_diff: BTreeMap::new(),
        stats_saved: previous_stats.is_some(),
    };
    // Stats are saved only by a rebuild (the live projector keeps job views alone), so a read
    // model without saved stats has nothing to differ from.
    if let (true, true, Some(previous)) = (dry_run, write_stats, &previous_stats) {
        report.stats_diff = json_diff(
            &serde_json::to_value(previous)?,
            &serde_json::to_value(&stats)?,
        );
    }
    Ok(report)
}

/// A rebuild's view writes failed part-way.
#[derive(Debug, thiserror::Error)]
#[error("rebuild stopped after writing {written} of {jobs} view(s)")]
pub struct WritesStopped {
    /// Views written before the failure.
    pub written: u64,
    /// Jobs folded.
    pub jobs: u64,
    /// The view store's error.
    #[source]
    pub cause: ViewError,
}

/// [`rebuild`] of the embedded read model at `path`. When no other connection has it open, the
/// read models are written into a new file that replaces it whole once complete (half the bytes
/// written, and a rebuild that fails leaves the old read model as it was); else, such as while
/// `jobledger dev` runs, in place. A dry run and a stats-only rebuild always work in place.
pub async fn rebuild_embedded<S: HistorySource>(
    src: &S,
    path: &Path,
    projection: Projection,
    dry_run: bool,
    show: bool,
) -> anyhow::Result<RebuildReport> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let replacement = match (dry_run, projection) {
        (false, Projection::Jobs | Projection::All) => Replacement::claim(path)?,
        _ => None,
    };
    let Some(replacement) = replacement else {
        let views = SqliteViewStore::open(path)?;
        return rebuild(src, &views, projection, dry_run, show).await;
    };
    let views = replacement.new_store()?;
    let report = rebuild_views(src, &views, projection, false, show)
        .await
        .with_context(|| {
            format!(
                "the new read model was thrown away: {} is as it was (the ledger is untouched; \
                 run rebuild again)",
                path.display()
            )
        })?;
    replacement.replace(views)?;
    Ok(report)
}

/// What the writer or the comparer of a rebuild did.
#[derive(Default)]
struct Consumed {
    written: u64,
    diffs: Vec<ViewDiff>,
    diff_count: u64,
}

impl Consumed {
    fn differs(&mut self, job_id: JobId, change: &'static str, fields: DiffFields) {
        self.diff_count += 1;
        if self.diffs.len() < MAX_DIFFS_KEPT {
            self.diffs.push(ViewDiff {
                job_id,
                change,
                fields,
            });
        }
    }

    /// Compares a stored view with the rebuilt one.
    fn compare(&mut self, stored: Option<JobView>, rebuilt: &JobView) -> anyhow::Result<()> {
        match stored {
            None => self.differs(rebuilt.job_id, "missing", BTreeMap::new()),
            Some(s) if s != *rebuilt => {
                let fields = json_diff(&serde_json::to_value(&s)?, &serde_json::to_value(rebuilt)?);
                self.differs(rebuilt.job_id, "differs", fields);
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Field → [stored, rebuilt].
type DiffFields = BTreeMap<String, (serde_json::Value, serde_json::Value)>;

/// The read model walked in job id order, a page at a time.
struct StoredViews<'a, V> {
    store: &'a V,
    page: VecDeque<JobView>,
    after: Option<JobId>,
    done: bool,
}

impl<V: ViewStore> StoredViews<'_, V> {
    /// The next stored view's job, reading the next page when needed.
    async fn peek(&mut self) -> anyhow::Result<Option<JobId>> {
        if self.page.is_empty() && !self.done {
            let page = self.store.scan(self.after, SCAN_PAGE).await?;
            self.after = page.last().map(|v| v.job_id).or(self.after);
            self.done = page.is_empty();
            self.page.extend(page);
        }
        Ok(self.page.front().map(|v| v.job_id))
    }
}

/// Merges rebuilt views, arriving in job id order, with one ordered walk of the read model.
async fn merge_views<V: ViewStore>(
    store: &V,
    mut rx: mpsc::Receiver<Vec<JobView>>,
    out: &mut Consumed,
) -> anyhow::Result<()> {
    let mut stored = StoredViews {
        store,
        page: VecDeque::new(),
        after: None,
        done: false,
    };
    let mut last = None;
    while let Some(batch) = rx.recv().await {
        for view in batch {
            if let Some(previous) = last
                && view.job_id <= previous
            {
                anyhow::bail!(
                    "the source handed out job {} after job {previous}: not in job id order",
                    view.job_id
                );
            }
            last = Some(view.job_id);
            // Stored views before this job are of jobs the ledger does not have.
            while let Some(id) = stored.peek().await?
                && id < view.job_id
            {
                stored.page.pop_front();
                out.differs(id, "extra", BTreeMap::new());
            }
            let same = stored.peek().await? == Some(view.job_id);
            let found = if same { stored.page.pop_front() } else { None };
            out.compare(found, &view)?;
        }
    }
    while let Some(id) = stored.peek().await? {
        stored.page.pop_front();
        out.differs(id, "extra", BTreeMap::new());
    }
    Ok(())
}

/// Looks each rebuilt view up (the views may come in any order), then walks the read model once
/// for views of jobs the ledger does not have.
async fn look_up_views<V: ViewStore>(
    store: &V,
    mut rx: mpsc::Receiver<Vec<JobView>>,
    out: &mut Consumed,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    while let Some(batch) = rx.recv().await {
        for view in batch {
            seen.insert(view.job_id);
            out.compare(store.get(view.job_id).await?, &view)?;
        }
    }
    let mut stored = StoredViews {
        store,
        page: VecDeque::new(),
        after: None,
        done: false,
    };
    while let Some(id) = stored.peek().await? {
        stored.page.pop_front();
        if !seen.contains(&id) {
            out.differs(id, "extra", BTreeMap::new());
        }
    }
    Ok(())
}
