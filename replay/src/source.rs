//! Where histories are read from: the embedded SQLite ledger or an export file; DynamoDB plugs in
//! through the same [`HistorySource`] trait (Query by job; parallel Scan by segments).
//!
//! Every source hands out [`Entry`]s: readable events, head pins and unreadable items, so a damaged
//! ledger is reported rather than aborting the read. Payloads are decoded (and upcast) only through
//! `RecordedEvent::decode` by the consumers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jobledger_events::{ChangeFeed, EventStore, JobId, SqliteEventStore, StoreError};
use tokio::sync::mpsc;

use crate::format::{Entry, Pos, next_line, open_reader, parse_line, sourced};

/// Entries per batch handed from a reader to a consumer: large enough to make the hand-off cheap.
pub const BATCH: usize = 2048;

/// A stream of entry batches filled by a reader running beside the consumer.
pub type Feed = mpsc::Receiver<Result<Vec<Entry>, SourceError>>;

/// A source failed as a whole (not a damaged item, which is an [`Entry::Unreadable`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source is not there or not usable.
    #[error("{0}")]
    Unavailable(String),
}

/// Something replay can read job histories from.
pub trait HistorySource: Send + Sync {
    /// For messages, e.g. `ledger /data/ledger.sqlite3`.
    fn describe(&self) -> String;

    /// Whether each job's events are followed by a head pin (export files).
    fn has_pins(&self) -> bool;

    /// Whether a job's entries are contiguous (a consumer may close a job when the next starts).
    fn grouped(&self) -> bool;

    /// One job's entries in version order (empty when the job is unknown).
    fn job(
        &self,
        job_id: JobId,
        check: bool,
    ) -> impl Future<Output = Result<Vec<Entry>, SourceError>> + Send;

    /// How far a full scan goes, in the unit the scan reports its position in (for progress bars).
    fn extent(&self) -> impl Future<Output = Result<u64, SourceError>> + Send;

    /// Every entry, each job's in version order (jobs may interleave unless `grouped`), read on a
    /// task of its own. With `check` the reader also recomputes hashes (spreading the work on two
    /// cores). The reader stores its position (out of [`HistorySource::extent`]) in `position`.
    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError>;
}

/// The embedded ledger `<data-dir>/ledger.sqlite3`, read through the public store API.
#[derive(Clone)]
pub struct SqliteSource {
    store: SqliteEventStore,
    path: PathBuf,
}

impl SqliteSource {
    /// Opens an existing ledger (never creates one: a typo should not look like an empty ledger).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        if !path.exists() {
            return Err(SourceError::Unavailable(format!(
                "no ledger at {}",
                path.display()
            )));
        }
        Ok(SqliteSource {
            store: SqliteEventStore::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Wraps an open store.
    pub fn from_store(store: SqliteEventStore, path: &Path) -> Self {
        SqliteSource {
            store,
            path: path.to_path_buf(),
        }
    }

    /// The store.
    pub fn store(&self) -> &SqliteEventStore {
        &self.store
    }
}

/// Feed page size: big pages amortise the query, small enough to keep memory flat.
const PAGE: usize = 4096;

impl HistorySource for SqliteSource {
    fn describe(&self) -> String {
        format!("ledger {}", self.path.display())
    }

    fn has_pins(&self) -> bool {
        false
    }

    fn grouped(&self) -> bool {
        false
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        match self.store.load(job_id).await {
            Ok(events) => Ok(events
                .into_iter()
                .map(|e| Entry::Event(sourced(e, Pos::None, check)))
                .collect()),
            Err(StoreError::Corrupt {
                version, reason, ..
            }) => Ok(vec![Entry::Unreadable {
                pos: Pos::None,
                job_id: Some(job_id),
                version,
                reason,
            }]),
            Err(e) => Err(e.into()),
        }
    }

    async fn extent(&self) -> Result<u64, SourceError> {
        // The last seq, found by bisection with one-row reads: the feed API has no count.
        let (mut lo, mut hi) = (0u64, 1u64);
        while !self
            .store
            .read_after(hi, 1)
            .await
            .map(|r| r.is_empty())
            .unwrap_or(false)
        {
            lo = hi;
            hi = hi.saturating_mul(2);
            if hi == u64::MAX / 2 {
                break;
            }
        }
        // Invariant: something after `lo` (or lo = 0), nothing after `hi`.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.store.read_after(mid, 1).await {
                Ok(rows) if rows.is_empty() => hi = mid,
                _ => lo = mid,
            }
        }
        Ok(hi)
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = scan_feed(&store, check, &tx, &position).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }
}

/// Reads the whole feed in seq order. A corrupt row fails its whole page, so the reader then walks
/// row by row to report the row and step over it.
async fn scan_feed(
    store: &SqliteEventStore,
    check: bool,
    tx: &mpsc::Sender<Result<Vec<Entry>, SourceError>>,
    position: &AtomicU64,
) -> Result<(), SourceError> {
    let mut seq = 0u64;
    let mut single_rows = 0usize;
    loop {
        let limit = if single_rows > 0 { 1 } else { PAGE };
        match store.read_after(seq, limit).await {
            Ok(rows) => {
                let Some(last) = rows.last() else {
                    return Ok(());
                };
                seq = last.seq;
                position.store(seq, Ordering::Relaxed);
                single_rows = single_rows.saturating_sub(1);
                let batch = rows
                    .into_iter()
                    .map(|f| Entry::Event(sourced(f.event, Pos::Seq(f.seq), check)))
                    .collect();
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
            }
            Err(StoreError::Corrupt {
                job_id,
                version,
                reason,
            }) if single_rows == 0 => {
                // Find the bad row one row at a time; `reason` is seen again there.
                let _ = (job_id, version, reason);
                single_rows = PAGE;
            }
            Err(StoreError::Corrupt {
                job_id,
                version,
                reason,
            }) => {
                let entry = Entry::Unreadable {
                    pos: Pos::Seq(seq + 1),
                    job_id: job_id.parse().ok(),
                    version,
                    reason,
                };
                if tx.send(Ok(vec![entry])).await.is_err() {
                    return Ok(());
                }
                seq = skip_corrupt(store, seq).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The seq just before the next readable row after a corrupt one at `seq + 1`.
async fn skip_corrupt(store: &SqliteEventStore, seq: u64) -> Result<u64, SourceError> {
    // Seqs are dense in practice, so the next readable row is found within a few probes.
    for k in 1..=1024u64 {
        match store.read_after(seq + k, 1).await {
            Ok(rows) => {
                return Ok(rows.first().map_or(seq + k, |r| r.seq - 1));
            }
            Err(StoreError::Corrupt { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SourceError::Unavailable(format!(
        "more than 1024 unreadable rows after seq {seq}"
    )))
}

/// An export file (`.jsonl` or `.jsonl.zst`), read line by line on a thread of its own.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// A source over `path` (checked to be readable).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        std::fs::metadata(path).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileSource {
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads every entry, calling `f` on each batch; stops early when `f` returns false.
    /// `position` follows the bytes of the file consumed (compressed bytes for `.zst`).
    pub fn read_batches(
        &self,
        check: bool,
        position: &Arc<AtomicU64>,
        mut f: impl FnMut(Vec<Entry>) -> bool,
    ) -> Result<(), SourceError> {
        let mut reader =
            open_reader(&self.path, Some(Arc::clone(position))).map_err(|e| self.io(e))?;
        let mut line = Vec::with_capacity(4096);
        let mut n = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        while next_line(&mut *reader, &mut line).map_err(|e| self.io(e))? {
            n += 1;
            batch.push(parse_line(&line, Pos::Line(n), check));
            if batch.len() == BATCH && !f(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
            {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            f(batch);
        }
        Ok(())
    }
}

impl HistorySource for FileSource {
    fn describe(&self) -> String {
        format!("export {}", self.path.display())
    }

    fn has_pins(&self) -> bool {
        true
    }

    fn grouped(&self) -> bool {
        true
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut current: Option<JobId> = None;
            this.read_batches(check, &Arc::default(), |batch| {
                for entry in batch {
                    // An unreadable line that names no job belongs to the job around it.
                    let owner = entry.job_id().or(current);
                    if let Some(id) = entry.job_id() {
                        current = Some(id);
                    }
                    if owner == Some(job_id) {
                        out.push(entry);
                    }
                }
                true
            })?;
            Ok(out)
        })
        .await
        .map_err(|e| SourceError::Unavailable(format!("reader thread failed: {e}")))?
    }

    async fn extent(&self) -> Result<u64, SourceError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| self.io(e))
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || {
                let res = this.read_batches(check, &position, |batch| {
                    tx.blocking_send(Ok(batch)).is_ok()
                });
                if let Err(e) = res {
                    let _ = tx.blocking_send(Err(e));
                }
            })
            .map_err(|e| self.io(e))?;
        Ok(rx)
    }
}

/// Either source, chosen at run time by the command line.
#[derive(Clone)]
pub enum AnySource {
    /// The embedded ledger.
    Sqlite(SqliteSource),
    /// An export file.
    File(FileSource),
}

impl HistorySource for AnySource {
    fn describe(&self) -> String {
        match self {
            AnySource::Sqlite(s) => s.describe(),
            AnySource::File(s) => s.describe(),
        }
    }

    fn has_pins(&self) -> bool {
        matches!(self, AnySource::File(_))
    }

    fn grouped(&self) -> bool {
        matches!(self, AnySource::File(_))
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.job(job_id, check).await,
            AnySource::File(s) => s.job(job_id, check).await,
        }
    }

    async fn extent(&self) -> Result<u64, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.extent().await,
            AnySource::File(s) => s.extent().await,
        }
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.scan(check, position),
            AnySource::File(s) => s.scan(check, position),
        }
    }
}
