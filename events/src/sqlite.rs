//! `SqliteEventStore`: the embedded ledger (SQLite, WAL, `synchronous=FULL`).
//!
//! # Layout
//!
//! * `events` is a `WITHOUT ROWID` table keyed `(job_id, version)`, so a job's history is one
//!   contiguous range of the b-tree and `load` is a single range scan. Besides the keys it has
//!   three columns: `type` and `data` (the JSON payload, so SQL's JSON functions work on it) and
//!   `envelope`, the rest of the envelope in a small binary record (see `encode_envelope`):
//!   16-byte ids, 32-byte hashes, integer microseconds, and correlation/causation ids as 16 bytes
//!   when they are canonical UUIDs. Packing them matters for `load`: every column read through
//!   SQLite's API costs a few hundred instructions per row, more than parsing the record does.
//! * `seq` is the global change-feed position, unique-indexed. It is assigned inside the write
//!   transaction (under SQLite's write lock), so feed order is commit order even across processes.
//! * `idempotency` and `checkpoints` are small keyed tables.
//!
//! # Writes: group commit
//!
//! One writer thread owns the only write connection. `append` and `save_checkpoint` send a request
//! over a channel and wait on a oneshot reply. The writer drains every pending request, runs them in
//! ONE transaction, and replies only after `COMMIT` returned: with `synchronous=FULL` the WAL is
//! fsynced by then, so an acknowledged event survives a crash. One fsync is paid per group instead
//! of per command. A failed request is undone alone: a request that writes with one statement (a
//! single-event append, a checkpoint save) needs nothing more, since SQLite undoes a failed
//! statement; one that writes with several runs inside a `SAVEPOINT` rolled back on failure.
//!
//! # Reads
//!
//! Reads run on a few reader threads, each with its own read-only connection, never on the writer,
//! so a slow reader never delays a commit (WAL readers and the writer do not block each other).
//! Long histories are split into version ranges decoded on several reader threads at once; the
//! first scan learns the history's length from its first row, so a short one costs one statement.
//! `load_job` (what `execute` reads) folds rows straight from SQLite's buffers, without building a
//! `RecordedEvent` per event; every row is still checked whole, so damage is `Corrupt` either way.
//!
//! # Change feed wake-ups
//!
//! The writer publishes the last committed `seq` on a tokio `watch` channel; `wait_after` sleeps on
//! it. A worker child process may append to the same file through its own store, and its commits
//! cannot reach this process's channel, so `wait_after` also checks `PRAGMA data_version` (which
//! changes when any other connection commits) every [`FOREIGN_COMMIT_CHECK`]. That check only
//! reads a counter from the WAL index; it bounds the delay for cross-process commits without busy
//! polling for in-process ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::DateTime;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::event::JobEvent;
use crate::ids::JobId;
use crate::job::Job;
use crate::store::{
    AppendBatch, ChangeFeed, EventStore, FeedEvent, IdempotencyRecord, LoadedJob, StoreError,
};

mod rows;
#[cfg(test)]
mod tests;

use rows::{Envelope, EventRow, encode_envelope};

/// How often `wait_after` looks for commits made by other processes.
pub const FOREIGN_COMMIT_CHECK: Duration = Duration::from_millis(250);

/// How long a connection waits for another process's lock before giving up with a retryable error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most requests in one group commit; bounds the latency a single transaction adds.
const MAX_GROUP: usize = 1024;

/// Page cache of a reader connection: a 10,000-event history (~3 MB) stays cached between loads.
const READER_CACHE_KIB: u32 = 32 * 1024;

/// Page cache of the write connection. It only needs the b-tree's upper levels and the leaves
/// being appended to, and a large one costs at every commit: SQLite walks the cache's whole hash
/// table when a transaction ends (measured: a tenth of a commit-heavy run's instructions at
/// 32 MiB, none at 2 MiB).
const WRITER_CACHE_KIB: u32 = 2 * 1024;

/// The layout version kept in `PRAGMA user_version`.
const LAYOUT_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    job_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (job_id, version)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_seq ON events (seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    job_id BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The columns `decode_event` reads, in order; `load` knows the job, so it does not read `job_id`.
const EVENT_COLUMNS: &str = "version, type, data, envelope";

/// A job's events from version `?2` to `?3`, in order.
const SCAN_JOB: &str = "SELECT version, type, data, envelope FROM events WHERE job_id = ?1 AND version >= ?2 AND version <= ?3 ORDER BY version";

/// A whole history, and as a fifth column the job's last version (so the first row says whether
/// the history is long, without a query of its own). The subquery does not depend on the row, so
/// SQLite runs it once per scan.
const SCAN_WHOLE_JOB: &str = "SELECT version, type, data, envelope, (SELECT version FROM events WHERE job_id = ?1 AND typeof(version) = 'integer' ORDER BY version DESC LIMIT 1) FROM events WHERE job_id = ?1 AND version >= 1 AND version <= 9223372036854775807 ORDER BY version";

/// Histories at least this long are decoded by several reader threads at once.
const PARALLEL_LOAD_MIN: u64 = 2_048;

/// The job's last version. A damaged, non-integer version sorts after every integer: skipping it
/// here lets the scan report the hole it left, instead of failing on the wrong row.
const HEAD_VERSION: &str = "SELECT version FROM events WHERE job_id = ?1 AND typeof(version) = 'integer' ORDER BY version DESC LIMIT 1";

const INSERT_EVENT: &str = "INSERT INTO events (job_id, version, seq, type, data, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Counters of the writer thread, to see how well commits are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Write requests (appends and checkpoint saves) handled, successful or not.
    pub requests: u64,
    /// Events committed.
    pub events: u64,
    /// Time spent in `COMMIT`: the WAL's fsync, and the checkpoints SQLite runs now and then.
    /// The next group waits meanwhile, so with many clients it bounds commands/s.
    pub commit_time: Duration,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
    commit_micros: AtomicU64,
}

enum WriteOp {
    Append(AppendBatch),
    SaveCheckpoint { consumer: String, seq: u64 },
}

impl WriteOp {
    /// How many statements that write the request runs.
    fn statements(&self) -> usize {
        match self {
            WriteOp::Append(batch) => batch.events.len() + usize::from(batch.idempotency.is_some()),
            WriteOp::SaveCheckpoint { .. } => 1,
        }
    }
}

/// A read to run on one of the reader threads; it sends its own result back.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The embedded event store. Cheap to clone; clones share the writer and reader threads.
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<WriteRequest>,
    readers: mpsc::Sender<ReadJob>,
    head: watch::Sender<u64>,
    watcher: Mutex<Watcher>,
    counters: Arc<Counters>,
}

/// The connection that notices other processes' commits, and the last `data_version` it saw.
struct Watcher {
    conn: Option<Connection>,
    data_version: i64,
}

impl fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("path", &self.inner.path)
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    StoreError::backend(retryable, e)
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let cache_kib = if read_only {
        READER_CACHE_KIB
    } else {
        WRITER_CACHE_KIB
    };
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(32);
    // Map the file so pages that are not cached cost no read() call.
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{cache_kib}; PRAGMA mmap_size = 268435456;"
    ))
    .map_err(backend)?;
    Ok(conn)
}

impl SqliteEventStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, false)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::backend(
                false,
                format!("{} cannot use WAL (journal_mode is {mode})", path.display()),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(backend)?;
        create_schema(&conn, &path)?;
        let head: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(backend)?;
        let (head_tx, _) = watch::channel(head as u64);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            head: head_tx.clone(),
            counters: Arc::clone(&counters),
        };
        std::thread::Builder::new()
            .name("jobledger-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::backend(false, e))?;
        let readers = spawn_readers(&path)?;
        Ok(SqliteEventStore {
            inner: Arc::new(Inner {
                path,
                writer: tx,
                readers,
                head: head_tx,
                watcher: Mutex::new(Watcher {
                    conn: None,
                    data_version: 0,
                }),
                counters,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer thread has done so far (for this process's store and its clones).
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            commit_time: Duration::from_micros(c.commit_micros.load(Ordering::Relaxed)),
        }
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest { op, reply })
            .map_err(|_| StoreError::backend(false, "the SQLite writer thread has stopped"))?;
        rx.await.map_err(|_| {
            StoreError::backend(false, "the SQLite writer thread stopped before committing")
        })?
    }

    /// Runs `f` on one of the reader threads' connections, off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.inner
            .readers
            .send(Box::new(move |conn: &Connection| {
                // The caller may have stopped waiting; then nobody needs the result.
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| StoreError::backend(false, "the SQLite reader threads have stopped"))?;
        rx.await.map_err(|_| {
            StoreError::backend(false, "a SQLite reader thread failed during a read")
        })?
    }

    /// Reads a long history as consecutive version ranges, each on its own reader thread at once,
    /// with `read_range(conn, first, from, to, capacity)`; returns the ranges in order, each with
    /// what it read and its number of rows, once every range is known to be whole.
    ///
    /// Each range is read in its own transaction, which is safe because events are never changed:
    /// versions `1..=head` are the same in every later snapshot, and the last range is open-ended
    /// so it also returns anything appended since `head` was read.
    async fn read_in_parts<T, F>(
        &self,
        job_id: JobId,
        head: u64,
        read_range: F,
    ) -> Result<Vec<(T, u64)>, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection, bool, u64, u64, usize) -> Result<(T, u64), StoreError>
            + Clone
            + Send
            + 'static,
    {
        let parts = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4) as u64;
        let size = head.div_ceil(parts);
        let mut tasks = Vec::new();
        for part in 0..parts {
            let from = part * size + 1;
            let last = part + 1 == parts;
            let to = if last {
                u64::MAX
            } else {
                (from + size - 1).min(head)
            };
            let capacity = (size as usize).min(head as usize);
            let (store, read_range) = (self.clone(), read_range.clone());
            tasks.push((
                from,
                to,
                tokio::spawn(async move {
                    store
                        .read(move |conn| read_range(conn, part == 0, from, to, capacity))
                        .await
                }),
            ));
        }
        let mut out = Vec::with_capacity(tasks.len());
        let mut next = 1;
        for (from, to, task) in tasks {
            let (value, rows) = task.await.map_err(|e| StoreError::backend(false, e))??;
            if from != next {
                return Err(missing(job_id, next, None));
            }
            if to != u64::MAX && rows != to - from + 1 {
                return Err(missing(job_id, from + rows, None));
            }
            next = from + rows;
            out.push((value, rows));
        }
        Ok(out)
    }

    /// Publishes the head committed by another process, if `data_version` says there was one.
    async fn refresh_head_from_disk(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut watcher = inner
                .watcher
                .lock()
                .map_err(|_| StoreError::backend(false, "watcher mutex poisoned"))?;
            let watcher = &mut *watcher;
            let conn = match &mut watcher.conn {
                Some(conn) => conn,
                slot @ None => slot.insert(open_connection(&inner.path, true)?),
            };
            let version: i64 = conn
                .query_row("PRAGMA data_version", [], |r| r.get(0))
                .map_err(backend)?;
            if version == watcher.data_version {
                return Ok(());
            }
            watcher.data_version = version;
            let max: i64 = conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
                .map_err(backend)?;
            let max = max as u64;
            inner.head.send_if_modified(|head| {
                let newer = max > *head;
                if newer {
                    *head = max;
                }
                newer
            });
            Ok(())
        })
        .await
        .map_err(|e| StoreError::backend(false, e))?
    }
}

/// Starts the reader threads, each with its own read-only connection, sharing one queue.
///
/// Dedicated threads rather than `spawn_blocking`: under load a reader thread finds the next read
/// already queued and runs it without sleeping, where each `spawn_blocking` call pays a thread
/// wake-up; on a 2-core machine those wake-ups cost more than the reads of short histories.
fn spawn_readers(path: &Path) -> Result<mpsc::Sender<ReadJob>, StoreError> {
    let (tx, rx) = mpsc::channel::<ReadJob>();
    let rx = Arc::new(Mutex::new(rx));
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    for i in 0..threads {
        let conn = open_connection(path, true)?;
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("jobledger-sqlite-reader-{i}"))
            .spawn(move || {
                loop {
                    // Holding the lock while blocked in recv is fine: the other readers would
                    // only wait for the same queue.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // A panicking read must not take the thread (and its connection) with it;
                    // its caller sees the dropped reply as an error.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn)));
                }
            })
            .map_err(|e| StoreError::backend(false, e))?;
    }
    Ok(tx)
}

fn create_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let layout: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    match layout {
        LAYOUT_VERSION => Ok(()),
        0 => {
            let tables: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                    [],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if tables > 0 {
                return Err(StoreError::backend(
                    false,
                    format!(
                        "{} holds an events table of an unknown layout (user_version 0)",
                        path.display()
                    ),
                ));
            }
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {LAYOUT_VERSION}; COMMIT;"
            ))
            .map_err(backend)
        }
        other => Err(StoreError::backend(
            false,
            format!(
                "{} has store layout {other}; this build knows layout {LAYOUT_VERSION}",
                path.display()
            ),
        )),
    }
}

fn decode_job_id(value: ValueRef<'_>) -> Result<JobId, String> {
    match value {
        ValueRef::Blob(b) => <[u8; 16]>::try_from(b)
            .map(|b| JobId(Uuid::from_bytes(b)))
            .map_err(|_| hex::encode(b)),
        other => Err(format!("<job_id of type {:?}>", other.data_type())),
    }
}

/// Reads one event row of job `job_id` (columns in `EVENT_COLUMNS` order), reporting anything
/// undecodable as `Corrupt` with the job and version it belongs to.
fn decode_event(row: &rusqlite::Row<'_>, job_id: JobId) -> Result<RecordedEvent, StoreError> {
    EventRow::read(row, job_id)?.to_recorded(job_id)
}

/// The columns [`decode_event_row`] reads, in order (`version, type, data, envelope`), for bulk
/// readers that select rows themselves (replay scans the table in key order).
pub const EVENT_ROW_COLUMNS: &str = EVENT_COLUMNS;

/// Decodes one `events` row of job `job_id` selected as [`EVENT_ROW_COLUMNS`] (columns 0 to 3);
/// anything undecodable is `Corrupt`, naming the job and version.
pub fn decode_event_row(
    row: &rusqlite::Row<'_>,
    job_id: JobId,
) -> Result<RecordedEvent, StoreError> {
    decode_event(row, job_id)
}

/// Which of a job's rows a scan reads.
#[derive(Clone, Copy, Debug)]
enum Scan {
    /// Versions `from..=to`.
    Range { from: u64, to: u64 },
    /// Every version, unless the first row shows the history has at least
    /// [`PARALLEL_LOAD_MIN`] events: then none (the caller reads it in parallel ranges).
    WholeIfShort,
}

/// What a scan found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scanned {
    /// It read this many rows.
    Rows(u64),
    /// (`WholeIfShort` only) It read nothing: the history is long; this is its last version.
    Long(u64),
}

impl Scanned {
    /// The rows read (none for `Long`).
    fn rows(self) -> u64 {
        match self {
            Scanned::Rows(n) => n,
            Scanned::Long(_) => 0,
        }
    }
}

/// Reads a job's rows in version order, handing each to `each`; checks that none is missing.
fn scan_rows(
    conn: &Connection,
    job_id: JobId,
    scan: Scan,
    mut each: impl FnMut(&EventRow<'_>) -> Result<(), StoreError>,
) -> Result<Scanned, StoreError> {
    let job = &job_id.as_uuid().as_bytes()[..];
    let (mut stmt, from) = match scan {
        Scan::Range { from, to } => {
            let mut stmt = conn.prepare_cached(SCAN_JOB).map_err(backend)?;
            let to = i64::try_from(to).unwrap_or(i64::MAX);
            stmt.raw_bind_parameter(1, job)
                .and_then(|()| stmt.raw_bind_parameter(2, from as i64))
                .and_then(|()| stmt.raw_bind_parameter(3, to))
                .map_err(backend)?;
            (stmt, from)
        }
        Scan::WholeIfShort => {
            let mut stmt = conn.prepare_cached(SCAN_WHOLE_JOB).map_err(backend)?;
            stmt.raw_bind_parameter(1, job).map_err(backend)?;
            (stmt, 1)
        }
    };
    let mut rows = stmt.raw_query();
    let mut next = from;
    while let Some(row) = rows.next().map_err(backend)? {
        if next == from
            && matches!(scan, Scan::WholeIfShort)
            && let ValueRef::Integer(head) = row.get_ref(4).map_err(backend)?
            && head as u64 >= PARALLEL_LOAD_MIN
        {
            return Ok(Scanned::Long(head as u64));
        }
        let row = EventRow::read(row, job_id)?;
        if row.version != next {
            return Err(missing(job_id, next, Some(row.version)));
        }
        each(&row)?;
        next += 1;
    }
    Ok(Scanned::Rows(next - from))
}

/// Reads versions `from..=to` of a job as recorded events.
fn scan_job(
    conn: &Connection,
    job_id: JobId,
    scan: Scan,
    capacity: usize,
) -> Result<(Vec<RecordedEvent>, Scanned), StoreError> {
    let mut out = Vec::with_capacity(capacity);
    let scanned = scan_rows(conn, job_id, scan, |row| {
        out.push(row.to_recorded(job_id)?);
        Ok(())
    })?;
    Ok((out, scanned))
}

/// Rows of a job decoded for its fold: the first range of a history is folded
/// on the spot into `job`; a later one is decoded into `events`, folded after it in order.
#[derive(Default)]
struct DecodedRange {
    job: Job,
    events: Vec<JobEvent>,
    /// The version and `envelope` record of the range's last row.
    last: Option<(u64, Vec<u8>)>,
}

fn decode_range(
    conn: &Connection,
    job_id: JobId,
    first: bool,
    scan: Scan,
    capacity: usize,
) -> Result<(DecodedRange, Scanned), StoreError> {
    let mut out = DecodedRange {
        events: Vec::with_capacity(if first { 0 } else { capacity }),
        ..DecodedRange::default()
    };
    let mut last = (0, Vec::new());
    let scanned = scan_rows(conn, job_id, scan, |row| {
        let event = row.decode(job_id)?;
        if first {
            out.job.absorb(event);
        } else {
            out.events.push(event);
        }
        // Only the last row's head is needed; keeping its record is cheaper than decoding each.
        last.0 = row.version;
        last.1.clear();
        last.1.extend_from_slice(row.envelope_bytes);
        Ok(())
    })?;
    if scanned.rows() > 0 {
        out.last = Some(last);
    }
    Ok((out, scanned))
}

/// Folds decoded ranges, in order, into the job and its head.
fn fold_ranges(
    job_id: JobId,
    ranges: impl IntoIterator<Item = DecodedRange>,
) -> Result<LoadedJob, StoreError> {
    let mut ranges = ranges.into_iter();
    let Some(first) = ranges.next() else {
        return Ok(LoadedJob::default());
    };
    let mut job = first.job;
    let mut last = first.last;
    for range in ranges {
        for event in range.events {
            job.absorb(event);
        }
        last = range.last.or(last);
    }
    let head = match last {
        None => None,
        Some((version, envelope)) => Some(
            Envelope::parse(&envelope)
                .map_err(|reason| rows::corrupt(job_id, Some(version), reason))?
                .head(version),
        ),
    };
    Ok(LoadedJob { job, head })
}

/// A hole in a history: a row whose key was damaged no longer matches its job.
fn missing(job_id: JobId, version: u64, next: Option<u64>) -> StoreError {
    StoreError::Corrupt {
        job_id: job_id.to_string(),
        version: Some(version),
        reason: match next {
            Some(next) => format!("version {version} is missing (next stored is {next})"),
            None => format!("version {version} is missing"),
        },
    }
}

fn decode_idempotency(
    key: &str,
    job: ValueRef<'_>,
    fingerprint: ValueRef<'_>,
    created_at: ValueRef<'_>,
) -> Result<IdempotencyRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        job_id: match job {
            ValueRef::Blob(b) => hex::encode(b),
            _ => String::from("<unreadable>"),
        },
        version: None,
        reason: format!("idempotency record {key:?}: {reason}"),
    };
    let job_id = match job {
        ValueRef::Blob(b) => <[u8; 16]>::try_from(b)
            .map(|b| JobId(Uuid::from_bytes(b)))
            .map_err(|_| corrupt(format!("job_id has {} bytes, not 16", b.len())))?,
        _ => return Err(corrupt("job_id is not a blob".into())),
    };
    let fingerprint = match fingerprint {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(str::to_owned)
            .map_err(|e| corrupt(format!("fingerprint is not UTF-8: {e}")))?,
        _ => return Err(corrupt("fingerprint is not text".into())),
    };
    let created_at = match created_at {
        ValueRef::Integer(us) => DateTime::from_timestamp_micros(us)
            .ok_or_else(|| corrupt(format!("created_at {us} µs is out of range")))?,
        _ => return Err(corrupt("created_at is not an integer".into())),
    };
    Ok(IdempotencyRecord {
        key: key.to_string(),
        job_id,
        fingerprint,
        created_at,
    })
}

fn lookup_idempotency(
    conn: &Connection,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT job_id, fingerprint, created_at FROM idempotency WHERE key = ?1")
        .map_err(backend)?;
    let mut rows = stmt.query(params![key]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        None => Ok(None),
        Some(row) => {
            let get = |i| row.get_ref(i).map_err(backend);
            decode_idempotency(key, get(0)?, get(1)?, get(2)?).map(Some)
        }
    }
}

/// The writer thread's state: the one write connection.
struct Writer {
    conn: Connection,
    head: watch::Sender<u64>,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<WriteRequest>) {
        let mut group = Vec::new();
        while let Ok(first) = rx.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let results = self.commit_group(&group);
            self.counters
                .requests
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for (request, result) in group.drain(..).zip(results) {
                // The caller may have given up waiting; its write is committed either way.
                let _ = request.reply.send(result);
            }
        }
    }

    /// Runs every request in one transaction; returns one result per request, in order.
    fn commit_group(&self, group: &[WriteRequest]) -> Vec<Result<(), StoreError>> {
        let fail_all = |e: &StoreError| -> Vec<Result<(), StoreError>> {
            group.iter().map(|_| Err(copy_error(e))).collect()
        };
        if let Err(e) = self.exec("BEGIN IMMEDIATE") {
            return fail_all(&e);
        }
        let mut seq = match self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        {
            Ok(s) => s,
            Err(e) => {
                self.rollback();
                return fail_all(&backend(e));
            }
        };
        let mut results = Vec::with_capacity(group.len());
        let mut events = 0u64;
        for request in group {
            let before = seq;
            // A single statement is undone on its own when it fails; a request that writes with
            // several needs a savepoint to be rolled back alone (and savepoints are not free).
            let savepoint = request.op.statements() > 1;
            let result = if savepoint {
                self.exec("SAVEPOINT request")
            } else {
                Ok(())
            }
            .and_then(|()| match &request.op {
                WriteOp::Append(batch) => self.append(batch, &mut seq),
                WriteOp::SaveCheckpoint { consumer, seq } => self.save_checkpoint(consumer, *seq),
            });
            if self.conn.is_autocommit() {
                // SQLite rolled the whole transaction back (I/O error, disk full): nothing of this
                // group was written, so no request may be acknowledged.
                let e = result
                    .err()
                    .unwrap_or_else(|| StoreError::backend(true, "transaction rolled back"));
                return fail_all(&e);
            }
            match result {
                Ok(()) => {
                    if savepoint && let Err(e) = self.exec("RELEASE request") {
                        self.rollback();
                        return fail_all(&e);
                    }
                    events += seq.saturating_sub(before) as u64;
                    results.push(Ok(()));
                }
                Err(e) => {
                    seq = before;
                    if savepoint
                        && let Err(undo) = self
                            .exec("ROLLBACK TO request")
                            .and_then(|()| self.exec("RELEASE request"))
                    {
                        self.rollback();
                        return fail_all(&undo);
                    }
                    results.push(Err(e));
                }
            }
        }
        let committing = Instant::now();
        let committed = self.exec("COMMIT");
        self.counters
            .commit_micros
            .fetch_add(committing.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Err(e) = committed {
            self.rollback();
            return fail_all(&e);
        }
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters.events.fetch_add(events, Ordering::Relaxed);
        let seq = seq as u64;
        self.head.send_if_modified(|head| {
            let newer = seq > *head;
            if newer {
                *head = seq;
            }
            newer
        });
        results
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(backend)
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            // If even the rollback fails, the connection drops the transaction when next used.
            let _ = self.exec("ROLLBACK");
        }
    }

    fn append(&self, batch: &AppendBatch, seq: &mut i64) -> Result<(), StoreError> {
        check_batch(batch)?;
        let job = *batch.job_id.as_uuid().as_bytes();
        let head: i64 = self
            .conn
            .prepare_cached(HEAD_VERSION)
            .and_then(|mut s| s.query_row(params![&job[..]], |r| r.get(0)).optional())
            .map_err(backend)?
            .unwrap_or(0);
        if head as u64 != batch.expected_version {
            return Err(StoreError::Conflict {
                job_id: batch.job_id,
                expected: batch.expected_version,
            });
        }
        if let Some(rec) = &batch.idempotency {
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO idempotency (key, job_id, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        rec.key,
                        &rec.job_id.as_uuid().as_bytes()[..],
                        rec.fingerprint,
                        rec.created_at.timestamp_micros()
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                let existing = lookup_idempotency(&self.conn, &rec.key)?.ok_or_else(|| {
                    StoreError::backend(false, "idempotency key vanished inside a transaction")
                })?;
                return Err(StoreError::IdempotencyKeyTaken { existing });
            }
        }
        let mut insert = self.conn.prepare_cached(INSERT_EVENT).map_err(backend)?;
        let mut envelope = Vec::with_capacity(256);
        for e in &batch.events {
            *seq += 1;
            encode_envelope(e, &mut envelope);
            insert
                .execute(params![
                    &job[..],
                    e.version as i64,
                    *seq,
                    e.event_type,
                    e.data.get(),
                    &envelope[..],
                ])
                .map_err(backend)?;
        }
        Ok(())
    }

    fn save_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO checkpoints (consumer, seq) VALUES (?1, ?2) ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            )
            .and_then(|mut s| s.execute(params![consumer, seq as i64]))
            .map(|_| ())
            .map_err(backend)
    }
}

/// Rejects batches no correct caller builds (they would break the gap-free versions).
fn check_batch(batch: &AppendBatch) -> Result<(), StoreError> {
    for (i, e) in batch.events.iter().enumerate() {
        let version = batch.expected_version + 1 + i as u64;
        if e.job_id != batch.job_id || e.version != version {
            return Err(StoreError::backend(
                false,
                format!(
                    "malformed batch for job {} after version {}: event {i} is job {} version {} (expected version {version})",
                    batch.job_id, batch.expected_version, e.job_id, e.version
                ),
            ));
        }
        if i64::try_from(e.version).is_err() {
            return Err(StoreError::backend(
                false,
                format!("version {} is out of range", e.version),
            ));
        }
    }
    Ok(())
}

/// `StoreError` is not `Clone` (it carries a boxed source); a group failure is reported to every
/// request of the group, so each gets an equivalent error.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict { job_id, expected } => StoreError::Conflict {
            job_id: *job_id,
            expected: *expected,
        },
        StoreError::IdempotencyKeyTaken { existing } => StoreError::IdempotencyKeyTaken {
            existing: existing.clone(),
        },
        StoreError::Corrupt {
            job_id,
            version,
            reason,
        } => StoreError::Corrupt {
            job_id: job_id.clone(),
            version: *version,
            reason: reason.clone(),
        },
        StoreError::Backend { retryable, source } => {
            StoreError::backend(*retryable, source.to_string())
        }
    }
}

impl EventStore for SqliteEventStore {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        let (history, scanned) = self
            .read(move |conn| scan_job(conn, job_id, Scan::WholeIfShort, 0))
            .await?;
        let Scanned::Long(head) = scanned else {
            return Ok(history);
        };
        let parts = self
            .read_in_parts(job_id, head, move |conn, _, from, to, capacity| {
                let (part, scanned) = scan_job(conn, job_id, Scan::Range { from, to }, capacity)?;
                Ok((part, scanned.rows()))
            })
            .await?;
        let mut history = Vec::with_capacity(parts.iter().map(|(_, rows)| *rows as usize).sum());
        for (part, _) in parts {
            history.extend(part);
        }
        Ok(history)
    }

    /// Folds each row straight from SQLite's buffers: no `RecordedEvent` is built, so no
    /// envelope string is copied and the payload is parsed once (by its decoding) instead of
    /// being checked as JSON first. Every row is still read whole, so a damaged one is `Corrupt`.
    async fn load_job(&self, job_id: JobId) -> Result<LoadedJob, StoreError> {
        let (range, scanned) = self
            .read(move |conn| decode_range(conn, job_id, true, Scan::WholeIfShort, 0))
            .await?;
        match scanned {
            Scanned::Rows(_) => fold_ranges(job_id, [range]),
            Scanned::Long(head) => {
                let parts = self
                    .read_in_parts(job_id, head, move |conn, first, from, to, capacity| {
                        let (range, scanned) =
                            decode_range(conn, job_id, first, Scan::Range { from, to }, capacity)?;
                        Ok((range, scanned.rows()))
                    })
                    .await?;
                fold_ranges(job_id, parts.into_iter().map(|(range, _)| range))
            }
        }
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.write(WriteOp::Append(batch)).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| lookup_idempotency(conn, &key)).await
    }
}

impl ChangeFeed for SqliteEventStore {
    async fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let after = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS}, job_id, seq FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(backend)?;
            let mut rows = stmt.query(params![after, limit]).map_err(backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let job_id = decode_job_id(row.get_ref(4).map_err(backend)?).map_err(|job_id| {
                    StoreError::Corrupt {
                        job_id,
                        version: row.get::<_, i64>(0).ok().map(|v| v as u64),
                        reason: "job_id is not 16 bytes".into(),
                    }
                })?;
                let event = decode_event(row, job_id)?;
                let seq: i64 = row.get(5).map_err(backend)?;
                out.push(FeedEvent {
                    seq: seq as u64,
                    event,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn wait_after(&self, seq: u64) {
        let mut rx = self.inner.head.subscribe();
        loop {
            if *rx.borrow_and_update() > seq {
                return;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // Cannot happen while `self` holds the sender; nothing more would arrive.
                        return;
                    }
                }
                () = tokio::time::sleep(FOREIGN_COMMIT_CHECK) => {
                    if let Err(e) = self.refresh_head_from_disk().await {
                        tracing::warn!(error = %e, "checking for other processes' commits failed");
                    }
                }
            }
        }
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT seq FROM checkpoints WHERE consumer = ?1")
                .and_then(|mut s| {
                    s.query_row(params![consumer], |r| r.get::<_, i64>(0))
                        .optional()
                })
                .map(|s| s.map_or(0, |s| s as u64))
                .map_err(backend)
        })
        .await
    }

    async fn save_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StoreError> {
        self.write(WriteOp::SaveCheckpoint {
            consumer: consumer.to_string(),
            seq,
        })
        .await
    }
}
