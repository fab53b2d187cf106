//! Where histories are read from: the embedded SQLite ledger or an export file; DynamoDB plugs in
//! through the same [`HistorySource`] trait (Query by job; parallel Scan by segments). Full scans
//! can be split in parts of whole jobs, read and folded on every core.
//!
//! Every source hands out [`Entry`]s: readable events, head pins and unreadable items, so a damaged
//! ledger is reported rather than aborting the read. Payloads are decoded (and upcast) only through
//! `RecordedEvent::decode` by the consumers.

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use jobledger_events::{EventStore, JobId, SqliteEventStore, StoreError};
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

    /// Every entry like [`HistorySource::scan`], split over at most `parts` feeds filled at once,
    /// each holding whole jobs (so each can go to a consumer of its own). Within a feed, entries
    /// are ordered as in `scan` (grouped by job when [`HistorySource::grouped`]). By default one
    /// feed: the source cannot split.
    fn scan_parts(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
    ) -> Result<Vec<Feed>, SourceError> {
        let _ = parts;
        Ok(vec![self.scan(check, position)?])
    }
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

impl HistorySource for SqliteSource {
    fn describe(&self) -> String {
        format!("ledger {}", self.path.display())
    }

    fn has_pins(&self) -> bool {
        false
    }

    /// Scans read the table in key order: each job's events together.
    fn grouped(&self) -> bool {
        true
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

    /// The last feed position: about the number of events, which a scan counts.
    async fn extent(&self) -> Result<u64, SourceError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::sqlite_scan::extent(&path))
            .await
            .map_err(|e| SourceError::Unavailable(format!("reader thread failed: {e}")))?
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        let mut feeds = crate::sqlite_scan::scan_parts(&self.path, check, 1, position)?;
        feeds
            .pop()
            .ok_or_else(|| SourceError::Unavailable("no reader started".into()))
    }

    fn scan_parts(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
    ) -> Result<Vec<Feed>, SourceError> {
        crate::sqlite_scan::scan_parts(&self.path, check, parts, position)
    }
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

/// Bytes of whole jobs handed to one parser at a time.
const CHUNK: usize = 256 * 1024;

/// Consecutive lines of an export file, ending after a pin (or at the end of the file).
struct Chunk {
    /// The line number of the first line.
    first_line: u64,
    bytes: Vec<u8>,
}

impl Chunk {
    /// Parses every line, handing batches to `f`; false once `f` refused one.
    fn parse(&self, check: bool, mut f: impl FnMut(Vec<Entry>) -> bool) -> bool {
        let mut batch = Vec::with_capacity(BATCH);
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', &self.bytes).chain(
            // A last line without its newline.
            (self.bytes.last().is_some_and(|&b| b != b'\n')).then_some(self.bytes.len()),
        );
        for (n, end) in (self.first_line..).zip(ends) {
            batch.push(parse_line(&self.bytes[start..end], Pos::Line(n), check));
            start = end + 1;
            if batch.len() == BATCH && !f(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
            {
                return false;
            }
        }
        batch.is_empty() || f(batch)
    }
}

impl FileSource {
    /// Cuts the file into chunks of whole jobs (just after a pin line) and deals them out in
    /// turn. Reads big blocks straight into the chunk: one copy of each byte, no per-line work.
    fn split(
        &self,
        position: &Arc<AtomicU64>,
        parsers: &[std::sync::mpsc::SyncSender<Chunk>],
    ) -> Result<(), SourceError> {
        let mut reader = open_block_reader(&self.path, position).map_err(|e| self.io(e))?;
        let mut chunk = Chunk {
            first_line: 1,
            bytes: Vec::with_capacity(2 * CHUNK),
        };
        let mut eof = false;
        for turn in (0..parsers.len()).cycle() {
            // Fill to a chunk's size, then cut after the last complete pin line (or at the end).
            let cut = loop {
                if !eof && chunk.bytes.len() < CHUNK {
                    let want = (CHUNK - chunk.bytes.len()) as u64;
                    let read = (&mut reader)
                        .take(want)
                        .read_to_end(&mut chunk.bytes)
                        .map_err(|e| self.io(e))?;
                    eof = read == 0;
                    continue;
                }
                if eof {
                    break chunk.bytes.len();
                }
                match last_pin_end(&chunk.bytes) {
                    Some(cut) => break cut,
                    // No whole job yet: read on.
                    None => {
                        let want = CHUNK as u64;
                        let read = (&mut reader)
                            .take(want)
                            .read_to_end(&mut chunk.bytes)
                            .map_err(|e| self.io(e))?;
                        eof = read == 0;
                    }
                }
            };
            if cut == 0 {
                return Ok(());
            }
            let lines = memchr::memchr_iter(b'\n', &chunk.bytes[..cut]).count() as u64;
            let mut rest = Vec::with_capacity(2 * CHUNK);
            rest.extend_from_slice(&chunk.bytes[cut..]);
            chunk.bytes.truncate(cut);
            let next = Chunk {
                first_line: chunk.first_line + lines,
                bytes: rest,
            };
            if parsers[turn]
                .send(std::mem::replace(&mut chunk, next))
                .is_err()
            {
                // A consumer stopped (it reports its own error).
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Just past the newline ending the last complete pin line of `bytes`, if there is one.
fn last_pin_end(bytes: &[u8]) -> Option<usize> {
    let finder = memchr::memmem::FinderRev::new(b"\n{\"pin\"");
    let mut end = bytes.len();
    while let Some(start) = finder.rfind(&bytes[..end]) {
        if let Some(nl) = memchr::memchr(b'\n', &bytes[start + 1..]) {
            return Some(start + 1 + nl + 1);
        }
        end = start;
    }
    None
}

/// A reader of an export's lines in big blocks: the file itself (no buffer in between) or its
/// zstd decoder. `position` follows the bytes of the file read.
fn open_block_reader(
    path: &Path,
    position: &Arc<AtomicU64>,
) -> std::io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 4];
    let n = File::open(path)?.read(&mut magic)?;
    if crate::format::is_zstd(path) || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        return Ok(Box::new(open_reader(path, Some(Arc::clone(position)))?));
    }
    Ok(Box::new(CountingFile {
        file: File::open(path)?,
        position: Arc::clone(position),
    }))
}

/// A file that counts the bytes read from it.
struct CountingFile {
    file: File,
    position: Arc<AtomicU64>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.position
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
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

    fn scan_parts(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
    ) -> Result<Vec<Feed>, SourceError> {
        if parts <= 1 {
            return Ok(vec![self.scan(check, position)?]);
        }
        let mut feeds = Vec::with_capacity(parts);
        let mut chunk_txs = Vec::with_capacity(parts);
        let mut error_tx = None;
        for i in 0..parts {
            let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
            let (tx, rx) = mpsc::channel(4);
            error_tx.get_or_insert_with(|| tx.clone());
            std::thread::Builder::new()
                .name(format!("replay-parse-{i}"))
                .spawn(move || {
                    for chunk in chunk_rx {
                        if !chunk.parse(check, |batch| tx.blocking_send(Ok(batch)).is_ok()) {
                            return;
                        }
                    }
                })
                .map_err(|e| self.io(e))?;
            feeds.push(rx);
            chunk_txs.push(chunk_tx);
        }
        let this = self.clone();
        std::thread::Builder::new()
            .name("replay-split".into())
            .spawn(move || {
                if let Err(e) = this.split(&position, &chunk_txs)
                    && let Some(tx) = error_tx
                {
                    let _ = tx.blocking_send(Err(e));
                }
            })
            .map_err(|e| self.io(e))?;
        Ok(feeds)
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
    /// A DynamoDB events table.
    #[cfg(feature = "dynamodb")]
    Dynamo(crate::dynamo_source::DynamoSource),
}

impl HistorySource for AnySource {
    fn describe(&self) -> String {
        match self {
            AnySource::Sqlite(s) => s.describe(),
            AnySource::File(s) => s.describe(),
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.describe(),
        }
    }

    fn has_pins(&self) -> bool {
        matches!(self, AnySource::File(_))
    }

    fn grouped(&self) -> bool {
        true
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.job(job_id, check).await,
            AnySource::File(s) => s.job(job_id, check).await,
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.job(job_id, check).await,
        }
    }

    async fn extent(&self) -> Result<u64, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.extent().await,
            AnySource::File(s) => s.extent().await,
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.extent().await,
        }
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.scan(check, position),
            AnySource::File(s) => s.scan(check, position),
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.scan(check, position),
        }
    }

    fn scan_parts(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
    ) -> Result<Vec<Feed>, SourceError> {
        match self {
            AnySource::Sqlite(s) => s.scan_parts(check, parts, position),
            AnySource::File(s) => s.scan_parts(check, parts, position),
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.scan_parts(check, parts, position),
        }
    }
}
