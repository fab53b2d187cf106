//! Read models from the ledger: `rebuild` (jobs and stats, or a dry-run diff) and `stats`.

use std::collections::{BTreeMap, HashMap, HashSet};

use jobledger_events::{JobId, RecordedEvent};
use jobledger_projections::{JobView, Period, Stats, StatsBuilder, ViewStore};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::drive::{default_parts, drive_parts};
use crate::format::Entry;
use crate::source::{HistorySource, SourceError};

/// Views written per transaction by `rebuild`: one commit (one fsync) per batch, not per job.
const WRITE_BATCH: usize = 1024;

/// Problems met while folding (the damaged job's view stops before the damage).
const MAX_ERRORS_KEPT: usize = 1000;

/// Folds job views from a stream of entries, handing each job's view out once it is complete.
pub struct ViewFolder {
    grouped: bool,
    open: HashMap<JobId, JobView>,
    current: Option<JobId>,
    /// Jobs whose fold hit an error: later events of them are skipped, not cascaded into more errors.
    broken: HashSet<JobId>,
    emit: Box<dyn FnMut(JobView) + Send>,
    /// Events folded.
    pub events: u64,
    /// Jobs handed out.
    pub jobs: u64,
    /// What could not be folded.
    pub errors: Vec<String>,
    /// All errors, counted.
    pub error_count: u64,
}

impl ViewFolder {
    /// A folder for a source whose jobs are contiguous (`grouped`) or interleaved.
    pub fn new(grouped: bool, emit: impl FnMut(JobView) + Send + 'static) -> Self {
        ViewFolder {
            grouped,
            open: HashMap::new(),
            current: None,
            broken: HashSet::new(),
            emit: Box::new(emit),
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

    fn flush_current(&mut self) {
        if let Some(id) = self.current.take()
            && let Some(view) = self.open.remove(&id)
        {
            self.jobs += 1;
            (self.emit)(view);
        }
    }

    /// Feeds one entry.
    pub fn entry(&mut self, entry: Entry) {
        match entry {
            Entry::Event(e) => self.event(&e.event),
            Entry::Pin(..) => self.flush_current(),
            Entry::Unreadable {
                job_id,
                version,
                reason,
                pos,
                ..
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
    pub fn event(&mut self, e: &RecordedEvent) {
        if self.grouped && self.current != Some(e.job_id) {
            self.flush_current();
            self.current = Some(e.job_id);
        }
        if self.broken.contains(&e.job_id) {
            return;
        }
        self.events += 1;
        let before = self.open.remove(&e.job_id);
        match JobView::apply(before.clone(), e) {
            Ok(Some(view)) => {
                self.open.insert(e.job_id, view);
            }
            Ok(None) => {}
            Err(err) => {
                self.broken.insert(e.job_id);
                if let Some(view) = before {
                    self.open.insert(e.job_id, view);
                }
                self.error(err.to_string());
            }
        }
    }

    /// Hands out the views still open (in job id order) and returns the counts.
    pub fn finish(mut self) -> FoldSummary {
        self.flush_current();
        let mut rest: Vec<JobView> = self.open.drain().map(|(_, v)| v).collect();
        rest.sort_by_key(|v| v.job_id);
        for view in rest {
            self.jobs += 1;
            (self.emit)(view);
        }
        FoldSummary {
            events: self.events,
            jobs: self.jobs,
            errors: std::mem::take(&mut self.errors),
            error_count: self.error_count,
        }
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

/// Folds every view of a source, sending each to `tx` (bounded, so memory stays flat).
pub async fn fold_views<S: HistorySource>(
    src: &S,
    show: bool,
    what: &str,
    tx: mpsc::Sender<JobView>,
) -> Result<FoldSummary, SourceError> {
    let grouped = src.grouped();
    let folders = drive_parts(
        src,
        false,
        show,
        what,
        default_parts(),
        || {
            let tx = tx.clone();
            ViewFolder::new(grouped, move |view| {
                // The receiver only goes away on an error it reports itself.
                let _ = tx.blocking_send(view);
            })
        },
        |f, entry| f.entry(entry),
    )
    .await?;
    drop(tx);
    // Finishing hands out the last views with blocking sends: not on the async runtime.
    tokio::task::spawn_blocking(move || {
        let mut total = FoldSummary::default();
        for folder in folders {
            let s = folder.finish();
            total.events += s.events;
            total.jobs += s.jobs;
            total.error_count += s.error_count;
            let room = MAX_ERRORS_KEPT.saturating_sub(total.errors.len());
            total.errors.extend(s.errors.into_iter().take(room));
        }
        total
    })
    .await
    .map_err(|e| SourceError::Unavailable(format!("fold failed: {e}")))
}

/// `stats` over a period, folded straight from the ledger.
pub async fn stats<S: HistorySource>(
    src: &S,
    period: Period,
    show: bool,
) -> anyhow::Result<(Stats, FoldSummary)> {
    let (tx, mut rx) = mpsc::channel::<JobView>(1024);
    let collect = tokio::spawn(async move {
        let mut builder = OrderedStats::new(period);
        while let Some(view) = rx.recv().await {
            builder.add(&view);
        }
        builder.finish()
    });
    let summary = fold_views(src, show, "stats", tx).await?;
    let stats = collect.await?;
    Ok((stats, summary))
}

/// Stats of views that arrive in any order (a split scan folds parts at once), equal to the
/// stats of the same views in job id order: a float sum depends on its order, so costs are kept
/// (16 + 8 bytes a job, like the durations the builder keeps) and summed in job id order.
struct OrderedStats {
    builder: StatsBuilder,
    period: Period,
    costs: Vec<(JobId, f64)>,
}

impl OrderedStats {
    fn new(period: Period) -> Self {
        OrderedStats {
            builder: StatsBuilder::new(period),
            period,
            costs: Vec::new(),
        }
    }

    fn add(&mut self, view: &JobView) {
        self.builder.add(view);
        if self.period.contains(view.created_at) {
            self.costs.push((view.job_id, view.cost_usd));
        }
    }

    fn finish(mut self) -> Stats {
        let mut stats = self.builder.finish();
        self.costs.sort_unstable_by_key(|(id, _)| *id);
        stats.total_cost_usd = self.costs.iter().fold(0.0, |sum, (_, c)| sum + c);
        stats
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
    let (tx, mut rx) = mpsc::channel::<JobView>(1024);
    let store = views.clone();
    let write_jobs = matches!(projection, Projection::Jobs | Projection::All);
    let previous_stats = views.load_stats().await?;
    if !dry_run && write_jobs {
        views.clear().await?;
    }
    let sink = tokio::spawn(async move {
        let mut builder = OrderedStats::new(Period::ALL);
        let mut written = 0u64;
        let mut diffs = Vec::new();
        let mut diff_count = 0u64;
        let mut seen = HashSet::new();
        let mut pending = Vec::with_capacity(WRITE_BATCH);
        while let Some(view) = rx.recv().await {
            builder.add(&view);
            if dry_run {
                seen.insert(view.job_id);
                if write_jobs {
                    let stored = store.get(view.job_id).await?;
                    let diff = match stored {
                        None => Some(("missing", BTreeMap::new())),
                        Some(s) if s != view => Some((
                            "differs",
                            json_diff(&serde_json::to_value(&s)?, &serde_json::to_value(&view)?),
                        )),
                        Some(_) => None,
                    };
                    if let Some((change, fields)) = diff {
                        diff_count += 1;
                        if diffs.len() < 1000 {
                            diffs.push(ViewDiff {
                                job_id: view.job_id,
                                change,
                                fields,
                            });
                        }
                    }
                }
            } else if write_jobs {
                pending.push(view);
                if pending.len() == WRITE_BATCH {
                    written += store.upsert_many(&pending).await? as u64;
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            written += store.upsert_many(&pending).await? as u64;
        }
        if dry_run && write_jobs {
            // Views of jobs the ledger does not have, walked page by page.
            let mut after = None;
            loop {
                let page = store.scan(after, 500).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.job_id);
                for v in page.iter().filter(|v| !seen.contains(&v.job_id)) {
                    diff_count += 1;
                    if diffs.len() < 1000 {
                        diffs.push(ViewDiff {
                            job_id: v.job_id,
                            change: "extra",
                            fields: BTreeMap::new(),
                        });
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>((builder.finish(), written, diffs, diff_count))
    });
    let fold = fold_views(src, show, "rebuild", tx).await;
    let (stats, written, diffs, diff_count) = sink.await??;
    let fold = fold?;
    let mut report = RebuildReport {
        fold,
        written,
        diffs,
        diff_count,
        stats_diff: BTreeMap::new(),
    };
    let write_stats = matches!(projection, Projection::Stats | Projection::All);
    if dry_run {
        if write_stats {
            let stored = serde_json::to_value(&previous_stats)?;
            report.stats_diff = if previous_stats.is_none() {
                BTreeMap::from([("stats".to_string(), (stored, serde_json::to_value(&stats)?))])
            } else {
                json_diff(&stored, &serde_json::to_value(&stats)?)
            };
        }
    } else if write_stats {
        views.save_stats(&stats).await?;
    } else if let Some(previous) = previous_stats {
        // `clear` dropped the saved stats too; a jobs-only rebuild puts them back untouched.
        views.save_stats(&previous).await?;
    }
    Ok(report)
}
