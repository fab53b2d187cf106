//! Where histories are read from: the embedded SQLite ledger or an export file; DynamoDB plugs in
//! through the same [`HistorySource`] trait (Query by job; parallel Scan by segments). Full scans
//! can be split in parts of whole jobs, read and folded on every core.
//!
//! Every source hands out [`Entry`]s: readable events, head pins and unreadable items, so a damaged
//! ledger is reported rather than aborting the read. Folds and `verify` take the same entries as
//! borrowed [`Item`]s on the reading threads themselves ([`HistorySource::visit_parts`]), where
//! export files and the SQLite ledger lend events straight out of their read buffers with the
//! payload already decoded. Payloads are decoded (and upcast) only through `events`' `upcast`.

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use jobledger_events::{JobId, StoreError};
use tokio::sync::mpsc;

use crate::format::{Entry, Item, Pos, next_line, open_reader, parse_line, visit_line};

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

    /// Whether a scan in one part hands out jobs in ascending job id order, so a consumer can
    /// merge it with another ordered walk (the view table). False unless the source knows.
    fn sorted(&self) -> bool {
        false
    }

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

    /// Every entry like [`HistorySource::scan_parts`], handed as an [`Item`] to `f` with a state
    /// of its own per part (made by `make`) on the thread that reads the part: no hand-off
    /// between threads, and a source may lend items straight out of its read buffer. Join the
    /// handles for the states. By default, one thread per feed of `scan_parts`.
    fn visit_parts<T, M, F>(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
        make: M,
        f: F,
    ) -> Result<Vec<Visit<T>>, SourceError>
    where
        T: Send + 'static,
        M: Fn() -> T,
        F: Fn(&mut T, Item<'_>) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let feeds = self.scan_parts(check, parts, position)?;
        let mut handles = Vec::with_capacity(feeds.len());
        for (i, mut feed) in feeds.into_iter().enumerate() {
            let (f, mut state) = (Arc::clone(&f), make());
            handles.push(spawn(format!("replay-visit-{i}"), move || {
                while let Some(batch) = feed.blocking_recv() {
                    for entry in batch? {
                        f(&mut state, entry.item());
                    }
                }
                Ok(state)
            })?);
        }
        Ok(handles)
    }
}

/// A thread running one part of a visit; joined for the part's state.
pub type Visit<T> = std::thread::JoinHandle<Result<T, SourceError>>;

/// Starts a named reader thread.
pub fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<Visit<T>, SourceError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| SourceError::Unavailable(format!("cannot start a reader thread: {e}")))
}

/// The embedded ledger `<data-dir>/ledger.sqlite3`, read through read-only connections: an
/// auditor's reads never write to the ledger (no schema, no journal mode change).
#[derive(Clone)]
pub struct SqliteSource {
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
        crate::sqlite_scan::check_ledger(path)?;
        Ok(SqliteSource {
            path: path.to_path_buf(),
        })
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

    /// The table's key starts with the job id.
    fn sorted(&self) -> bool {
        true
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::sqlite_scan::job_entries(&path, job_id, check))
            .await
            .map_err(|e| SourceError::Unavailable(format!("reader thread failed: {e}")))?
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

    fn visit_parts<T, M, F>(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
        make: M,
        f: F,
    ) -> Result<Vec<Visit<T>>, SourceError>
    where
        T: Send + 'static,
        M: Fn() -> T,
        F: Fn(&mut T, Item<'_>) + Send + Sync + 'static,
    {
        crate::sqlite_scan::visit_parts(&self.path, check, parts, position, make, f)
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

/// Bytes of whole jobs a reader thread takes at a time.
const CHUNK: usize = 256 * 1024;

/// A reader thread's buffer: its bytes stay allocated and initialised from one run of jobs to the
/// next, so reading into it never zeroes memory again.
#[derive(Default)]
struct Block {
    bytes: Vec<u8>,
    len: usize,
}

impl Block {
    fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Reads up to `want` more bytes; 0 at the end of the file.
    fn fill_from(&mut self, reader: &mut dyn Read, want: usize) -> std::io::Result<usize> {
        if self.bytes.len() < self.len + want {
            self.bytes.resize(self.len + want, 0);
        }
        loop {
            match reader.read(&mut self.bytes[self.len..self.len + want]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.bytes.len() < self.len + bytes.len() {
            self.bytes.resize(self.len + bytes.len(), 0);
        }
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The lines of the block (without their newline; the file's last one may lack it).
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let bytes = self.filled();
        let mut start = 0;
        let last = bytes
            .last()
            .is_some_and(|&b| b != b'\n')
            .then_some(bytes.len());
        memchr::memchr_iter(b'\n', bytes)
            .chain(last)
            .map(move |end| {
                let line = &bytes[start..end];
                start = end + 1;
                line
            })
    }
}

/// An export file shared by the reader threads, each taking the next run of whole jobs in turn.
struct SharedFile {
    reader: Box<dyn Read + Send>,
    /// Bytes read past the end of the last run handed out: the start of the next.
    carry: Vec<u8>,
    /// The line number of the first line of the next run.
    next_line: u64,
    /// A read failed: the threads that did not see it stop as at the end of the file.
    failed: bool,
}

impl SharedFile {
    /// Moves the next run of whole jobs (cut just after a pin line, or at the end of the file)
    /// into `block`; returns the number of its first line, `None` at the end.
    fn next_run(&mut self, block: &mut Block) -> std::io::Result<Option<u64>> {
        block.len = 0;
        if self.failed {
            return Ok(None);
        }
        block.push(&self.carry);
        self.carry.clear();
        let cut = self.fill(block).inspect_err(|_| self.failed = true)?;
        self.carry.extend_from_slice(&block.filled()[cut..]);
        block.len = cut;
        if cut == 0 {
            return Ok(None);
        }
        let first = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', block.filled()).count() as u64;
        Ok(Some(first))
    }

    /// Reads until `block` holds a chunk's worth and a pin line ends in it; returns where to cut.
    fn fill(&mut self, block: &mut Block) -> std::io::Result<usize> {
        while block.len < CHUNK {
            if block.fill_from(&mut *self.reader, CHUNK - block.len)? == 0 {
                return Ok(block.len);
            }
        }
        loop {
            if let Some(cut) = last_pin_end(block.filled()) {
                return Ok(cut);
            }
            // No whole job yet: read on.
            if block.fill_from(&mut *self.reader, CHUNK)? == 0 {
                return Ok(block.len);
            }
        }
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

    /// Reader threads take runs of whole jobs from the file in turn and fold them where they
    /// read them: each line is parsed (and its payload decoded) in place, never copied or sent.
    fn visit_parts<T, M, F>(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
        make: M,
        f: F,
    ) -> Result<Vec<Visit<T>>, SourceError>
    where
        T: Send + 'static,
        M: Fn() -> T,
        F: Fn(&mut T, Item<'_>) + Send + Sync + 'static,
    {
        let reader = open_block_reader(&self.path, &position).map_err(|e| self.io(e))?;
        let shared = Arc::new(Mutex::new(SharedFile {
            reader,
            carry: Vec::new(),
            next_line: 1,
            failed: false,
        }));
        let f = Arc::new(f);
        let mut handles = Vec::with_capacity(parts.max(1));
        for i in 0..parts.max(1) {
            let (this, shared, f, mut state) =
                (self.clone(), Arc::clone(&shared), Arc::clone(&f), make());
            handles.push(spawn(format!("replay-read-{i}"), move || {
                let mut block = Block::default();
                loop {
                    let next = match shared.lock() {
                        Ok(mut file) => file.next_run(&mut block).map_err(|e| this.io(e))?,
                        Err(_) => {
                            return Err(SourceError::Unavailable("a reader thread failed".into()));
                        }
                    };
                    let Some(first_line) = next else {
                        return Ok(state);
                    };
                    for (n, line) in (first_line..).zip(block.lines()) {
                        visit_line(line, Pos::Line(n), check, |item| f(&mut state, item));
                    }
                }
            })?);
        }
        Ok(handles)
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

    fn sorted(&self) -> bool {
        match self {
            AnySource::Sqlite(s) => s.sorted(),
            AnySource::File(s) => s.sorted(),
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.sorted(),
        }
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

    fn visit_parts<T, M, F>(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
        make: M,
        f: F,
    ) -> Result<Vec<Visit<T>>, SourceError>
    where
        T: Send + 'static,
        M: Fn() -> T,
        F: Fn(&mut T, Item<'_>) + Send + Sync + 'static,
    {
        match self {
            AnySource::Sqlite(s) => s.visit_parts(check, parts, position, make, f),
            AnySource::File(s) => s.visit_parts(check, parts, position, make, f),
            #[cfg(feature = "dynamodb")]
            AnySource::Dynamo(s) => s.visit_parts(check, parts, position, make, f),
        }
    }
}
