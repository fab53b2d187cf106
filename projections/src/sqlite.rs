//! `SqliteViewStore`: the embedded read model (its own SQLite file, WAL).
//!
//! Each view is stored as JSON next to the columns that listing filters and orders on. Every call
//! runs on tokio's blocking pool, so a slow disk never stalls the async runtime; reads use a small
//! pool of read-only connections, which WAL lets run while the single writer commits.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use jobledger_events::JobId;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};

use crate::job_view::JobView;
use crate::stats::Stats;
use crate::store::{ListQuery, MAX_LIST_LIMIT, Page, ViewError, ViewStore};
use crate::view_json;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_version INTEGER NOT NULL,
    view TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    stats TEXT NOT NULL
);
";

/// The indexes listing filters and orders on. Made at every open, so a rebuild stopped before it
/// made them again (see [`ViewStore::start_bulk_write`]) leaves them missing only until then.
const LISTING_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS jobs_status_updated_at ON jobs (status, updated_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_kind_updated_at ON jobs (kind, updated_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_updated_at ON jobs (updated_at, job_id);
";

/// Drops the [`LISTING_INDEXES`].
const DROP_LISTING_INDEXES: &str = "
DROP INDEX IF EXISTS jobs_status_updated_at;
DROP INDEX IF EXISTS jobs_kind_updated_at;
DROP INDEX IF EXISTS jobs_updated_at;
";

/// Read connections kept open between calls; more are opened under load and dropped after.
const READERS_KEPT: usize = 4;
/// How long a statement waits for another connection's lock before failing as busy.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The embedded view store. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct SqliteViewStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// `None` for a scratch store ([`SqliteViewStore::open_scratch`]), which has no WAL.
    checkpoints: Option<Checkpointer>,
}

/// Copies the WAL back into the database on a thread of its own, so the writer never waits for
/// it. SQLite's automatic checkpoint runs inside the commit that crosses its threshold: on a
/// rebuild that was a third of the writer's time, on the path every write waits on.
///
/// A checkpoint that runs while the writer keeps committing cannot finish the WAL, and SQLite
/// only starts the WAL over once one has; so when the WAL passes [`WAL_BYTES_LIMIT`], the writer
/// checkpoints once itself, between its commits, and the WAL starts over at its next write.
///
/// During a bulk write the limit is [`BULK_WAL_BYTES_LIMIT`]: the writer's own checkpoint syncs
/// the database file while every fold part waits for the writer (~0.2 s each time in a 1 M-event
/// rebuild). With the higher limit the file is synced once, at the end, by a checkpoint of the
/// thread that runs while the writer sorts the listing indexes (SQLite syncs the file only when a
/// checkpoint has copied the whole WAL, which the thread cannot do while the writer commits).
struct Checkpointer {
    wake: SyncSender<()>,
    /// Ends the thread's pause between two checkpoints (see [`Checkpointer::now`]).
    hurry: SyncSender<()>,
    /// Frames in the WAL at the thread's last checkpoint.
    wal_frames: Arc<AtomicI64>,
    /// The WAL's limits, in frames: normally, and during a bulk write.
    frames_limit: i64,
    bulk_frames_limit: i64,
    /// Whether a bulk write is under way.
    bulk: AtomicBool,
    /// Held by the thread while it checkpoints and reports the WAL. SQLite runs one checkpoint at
    /// a time and turns a second away at once, so the one that must not fail (see
    /// [`durable_checkpoint`]) waits for the thread's to end instead of racing it.
    running: Arc<Mutex<()>>,
}

/// WAL size past which the writer checkpoints itself.
const WAL_BYTES_LIMIT: i64 = 64 << 20;

/// WAL size past which the writer checkpoints itself during a bulk write: a bound on the disk a
/// rebuild's WAL may take (a 1 M-event rebuild writes ~200 MB of views).
const BULK_WAL_BYTES_LIMIT: i64 = 1 << 30;

/// Page size of a new view store. A view row is ~1.1 KB of JSON: a 4 KiB page holds three, so a
/// rebuild splits a page every third insert; 16 KiB pages cut a rebuild's CPU by ~20%. An existing
/// file keeps the page size it was made with.
const PAGE_SIZE: u32 = 16_384;

/// Least time between two checkpoints of the thread: a checkpoint per commit would add an fsync of
/// the database file to every commit of a busy projector.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Checkpointer {
    /// Starts the thread with a connection of its own to `path`; it stops when the store is
    /// dropped.
    fn start(path: &Path) -> Result<Checkpointer, ViewError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(backend)?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(backend)?;
        let page_size = page_size.max(512);
        // One pending wake-up is enough: a checkpoint copies every commit made before it starts.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let (hurry, hurried) = mpsc::sync_channel::<()>(1);
        let wal_frames = Arc::new(AtomicI64::new(0));
        let frames = Arc::clone(&wal_frames);
        let running = Arc::new(Mutex::new(()));
        let turn = Arc::clone(&running);
        std::thread::Builder::new()
            .name("views-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    // A poisoned lock only means a panic elsewhere: checkpointing stays safe.
                    let guard = turn.lock().unwrap_or_else(|e| e.into_inner());
                    match checkpoint(&conn) {
                        Ok(n) => frames.store(n, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e,
                            "view store checkpoint failed; the next commit retries"),
                    }
                    drop(guard);
                    // Commits meanwhile share the next checkpoint (and its fsync of the file).
                    // Ended early by `now` (or at once when the store is gone, and the loop ends).
                    let _ = hurried.recv_timeout(CHECKPOINT_PAUSE);
                }
            })
            .map_err(|e| ViewError::backend(false, e))?;
        Ok(Checkpointer {
            wake,
            hurry,
            wal_frames,
            frames_limit: WAL_BYTES_LIMIT / page_size,
            bulk_frames_limit: BULK_WAL_BYTES_LIMIT / page_size,
            bulk: AtomicBool::new(false),
            running,
        })
    }

    /// Asks for a checkpoint after a commit. Should the thread be gone, the writer checkpoints
    /// itself, so the WAL never grows without bound.
    /// The commit is done either way: a failed checkpoint is logged, not the write's error.
    fn after_commit(&self, writer: &Connection) {
        let inline = self.wal_too_long()
            || matches!(self.wake.try_send(()), Err(TrySendError::Disconnected(())));
        if inline && let Err(e) = checkpoint(writer) {
            tracing::warn!(error = %e, "view store checkpoint failed; the next commit retries");
        }
    }

    /// Asks the thread for a checkpoint at once, without waiting for it.
    fn now(&self) {
        let _ = self.hurry.try_send(());
        let _ = self.wake.try_send(());
    }

    /// Whether the thread last found the WAL past the limit in force; the writer then checkpoints
    /// once itself (until the thread reports again).
    fn wal_too_long(&self) -> bool {
        let limit = if self.bulk.load(Ordering::Relaxed) {
            self.bulk_frames_limit
        } else {
            self.frames_limit
        };
        self.wal_frames
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n >= limit).then_some(0)
            })
            .is_ok()
    }
}

/// A passive checkpoint: copies what no reader still needs, never waits for a lock. Returns the
/// frames in the WAL.
fn checkpoint(conn: &Connection) -> Result<i64, ViewError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
        .map_err(backend)
}

/// How long [`durable_checkpoint`] waits between tries.
const DURABLE_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// A checkpoint that leaves every commit so far durable, or fails: it syncs the WAL before
/// copying it back, then the database file once it has copied every frame. A passive checkpoint
/// answers "busy" when another process's checkpoint runs, and stops short of the frames an open
/// read still uses, yet reports success either way; so this one tries again until all frames are
/// copied, for up to `wait`.
fn durable_checkpoint(conn: &Connection, wait: std::time::Duration) -> Result<(), ViewError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let (busy, frames, copied): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(backend)?;
        if busy == 0 && frames == copied {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ViewError::backend(
                true,
                format!(
                    "the view store's last writes are not yet on disk: after {wait:?}, its \
                     checkpoint had copied {copied} of {frames} WAL frame(s) (busy: {})",
                    busy != 0
                ),
            ));
        }
        std::thread::sleep(DURABLE_RETRY);
    }
}

fn backend(e: rusqlite::Error) -> ViewError {
    let retryable = busy(&e);
    ViewError::backend(retryable, e)
}

/// Whether another connection's lock turned the statement away.
pub(crate) fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Opens of a file replaced meanwhile tried again before giving up.
const REOPENS: usize = 3;

/// The writer connection to `path`, its file in WAL mode with the schema and listing indexes.
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // FULL: a lost write of a finished job's view would never be repaired by a later event.
    // The checkpointer thread copies the WAL back, not the commits (see `Checkpointer`).
    // The page size must be set before the first table makes the file: after, it is ignored.
    conn.execute_batch(&format!(
        "PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_BYTES_LIMIT};"
    ))?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(LISTING_INDEXES)?;
    Ok(conn)
}

/// Whether SQLite refused a write because the file was renamed over or removed since it was
/// opened.
fn replaced_while_open(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|f| f.extended_code == rusqlite::ffi::SQLITE_READONLY_DBMOVED)
}

/// Removes a database file and the files SQLite keeps beside it.
pub(crate) fn remove_database_files(path: &Path) -> Result<(), ViewError> {
    remove_file(path)?;
    remove_side_files(path)
}

/// Removes the rollback journal, WAL and shared-memory files SQLite keeps beside `path`.
pub(crate) fn remove_side_files(path: &Path) -> Result<(), ViewError> {
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        remove_file(Path::new(&name))?;
    }
    Ok(())
}

/// Removes a file; one already gone is not an error.
fn remove_file(path: &Path) -> Result<(), ViewError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ViewError::backend(
            false,
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

fn micros(at: &DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

impl SqliteViewStore {
    /// Opens (creating if needed) the view store at `path`. The parent folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ViewError> {
        let path = path.as_ref().to_path_buf();
        // A rebuild may replace the file while this connection waits for its lock (see
        // `crate::sqlite_replace`); SQLite then refuses to write to the file it opened, and
        // opening again opens the new one.
        let mut tries = 0;
        let conn = loop {
            match open_writer(&path) {
                Err(e) if replaced_while_open(&e) && tries < REOPENS => tries += 1,
                opened => break opened.map_err(backend)?,
            }
        };
        let checkpoints = Checkpointer::start(&path)?;
        Ok(SqliteViewStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                checkpoints: Some(checkpoints),
            }),
        })
    }

    /// A store in a new file at `path` that no other connection opens (whatever was at `path`
    /// is removed first), for a rebuild that replaces the read model whole: no journal and no
    /// syncs (a crash leaves only a file to throw away; the replacement syncs it once), the
    /// listing indexes made at the end of its bulk write. `stats` is the saved stats' text to
    /// start with.
    pub(crate) fn open_scratch(path: &Path, stats: Option<&str>) -> Result<Self, ViewError> {
        remove_database_files(path)?;
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(&format!(
            "PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
        ))
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        if let Some(stats) = stats {
            conn.execute("INSERT INTO stats (id, stats) VALUES (1, ?1)", [stats])
                .map_err(backend)?;
        }
        Ok(SqliteViewStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                checkpoints: None,
            }),
        })
    }

    /// Closes every connection of the store, which must be its last clone; returns its file.
    pub(crate) fn close(self) -> Result<PathBuf, ViewError> {
        let inner = Arc::into_inner(self.inner)
            .ok_or_else(|| ViewError::backend(false, "the view store is still in use elsewhere"))?;
        Ok(inner.path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| ViewError::backend(false, "view store writer mutex poisoned"))?;
            let out = f(&mut conn)?;
            if let Some(checkpoints) = &inner.checkpoints {
                checkpoints.after_commit(&conn);
            }
            Ok(out)
        })
        .await
        .map_err(|e| ViewError::backend(false, e))?
    }

    /// Runs `f` with a pooled read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match pooled {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(backend)?;
                    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
                        .map_err(backend)?;
                    conn
                }
            };
            let out = f(&conn);
            if let Ok(mut pool) = inner.readers.lock()
                && pool.len() < READERS_KEPT
            {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| ViewError::backend(false, e))?
    }
}

fn decode_view(job_id: &str, json: &str) -> Result<JobView, ViewError> {
    serde_json::from_str(json).map_err(|e| ViewError::Corrupt {
        job_id: job_id.to_string(),
        reason: e.to_string(),
    })
}

fn collect_views(
    stmt: &mut rusqlite::Statement<'_>,
    args: &[&dyn ToSql],
) -> Result<Vec<JobView>, ViewError> {
    let mut rows = stmt.query(args).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let job_id: String = row.get(0).map_err(backend)?;
        let json: String = row.get(1).map_err(backend)?;
        out.push(decode_view(&job_id, &json)?);
    }
    Ok(out)
}

/// Cursor text: a format tag, then the last row's `updated_at` (µs) and `job_id`.
fn encode_cursor(view: &JobView) -> String {
    format!(
        "c1.{}.{}",
        micros(&view.updated_at),
        view.job_id.as_uuid().simple()
    )
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ViewError> {
    let bad = || ViewError::BadCursor(cursor.to_string());
    let mut parts = cursor.split('.');
    let (Some("c1"), Some(at), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let at: i64 = at.parse().map_err(|_| bad())?;
    let id: JobId = id.parse().map_err(|_| bad())?;
    Ok((at, id.to_string()))
}

/// A view as the `jobs` table stores it; its text columns are ranges of [`Rows::text`].
struct Row {
    job_id: Range<usize>,
    status: &'static str,
    kind: &'static str,
    created_at: i64,
    updated_at: i64,
    last_version: i64,
    json: Range<usize>,
}

/// Views made rows, their texts in one buffer: one allocation per batch instead of a growing
/// string per view (a tenth of the time serialising a rebuild's views took).
struct Rows {
    text: Vec<u8>,
    rows: Vec<Row>,
}

/// Bytes of text a view row takes, about (its JSON is ~1.1 KB).
const ROW_TEXT_GUESS: usize = 1_536;

impl Rows {
    fn of(views: &[JobView]) -> Result<Rows, ViewError> {
        let mut text = Vec::with_capacity(views.len() * ROW_TEXT_GUESS);
        let mut rows = Vec::with_capacity(views.len());
        for view in views {
            let id_start = text.len();
            write!(text, "{}", view.job_id).map_err(|e| ViewError::backend(false, e))?;
            let json_start = text.len();
            view_json::write(view, &mut text).map_err(|e| ViewError::backend(false, e))?;
            rows.push(Row {
                job_id: id_start..json_start,
                status: view.status.as_str(),
                kind: view.kind.as_str(),
                created_at: micros(&view.created_at),
                updated_at: micros(&view.updated_at),
                last_version: view.last_version as i64,
                json: json_start..text.len(),
            });
        }
        Ok(Rows { text, rows })
    }

    /// Writes every row (version-guarded); returns how many were written.
    fn upsert(&self, conn: &Connection) -> Result<usize, ViewError> {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO jobs (job_id, status, kind, created_at, updated_at, last_version, view)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (job_id) DO UPDATE SET
                     status = excluded.status, kind = excluded.kind,
                     created_at = excluded.created_at, updated_at = excluded.updated_at,
                     last_version = excluded.last_version, view = excluded.view
                 WHERE jobs.last_version < excluded.last_version",
            )
            .map_err(backend)?;
        // Both texts came from `write!` and serde_json, so they are UTF-8: bound as they are.
        let text =
            |range: &Range<usize>| ToSqlOutput::Borrowed(ValueRef::Text(&self.text[range.clone()]));
        let mut written = 0;
        for row in &self.rows {
            written += stmt
                .execute(params![
                    text(&row.job_id),
                    row.status,
                    row.kind,
                    row.created_at,
                    row.updated_at,
                    row.last_version,
                    text(&row.json)
                ])
                .map_err(backend)?;
        }
        Ok(written)
    }
}

impl ViewStore for SqliteViewStore {
    async fn upsert(&self, view: &JobView) -> Result<bool, ViewError> {
        let row = Rows::of(std::slice::from_ref(view))?;
        self.write(move |conn| Ok(row.upsert(conn)? > 0)).await
    }

    async fn upsert_many(&self, views: &[JobView]) -> Result<usize, ViewError> {
        let rows = Rows::of(views)?;
        self.write(move |conn| {
            // One transaction: one fsync for the whole rebuild instead of one per job.
            let tx = conn.transaction().map_err(backend)?;
            let written = rows.upsert(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(written)
        })
        .await
    }

    async fn get(&self, job_id: JobId) -> Result<Option<JobView>, ViewError> {
        let id = job_id.to_string();
        self.read(move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT view FROM jobs WHERE job_id = ?1")
                .map_err(backend)?
                .query_row(params![id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            json.map(|j| decode_view(&id, &j)).transpose()
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Page, ViewError> {
        let limit = q.limit.clamp(1, MAX_LIST_LIMIT);
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let status = q.status.map(|s| s.as_str());
        let kind = q.kind.map(|k| k.as_str());
        self.read(move |conn| {
            let mut sql = String::from("SELECT job_id, view FROM jobs WHERE 1 = 1");
            let mut args: Vec<Box<dyn ToSql>> = Vec::new();
            if let Some(status) = status {
                args.push(Box::new(status));
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(kind) = kind {
                args.push(Box::new(kind));
                sql.push_str(&format!(" AND kind = ?{}", args.len()));
            }
            if let Some((at, id)) = after {
                args.push(Box::new(at));
                args.push(Box::new(id));
                sql.push_str(&format!(
                    " AND (updated_at, job_id) < (?{}, ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            // One extra row tells whether another page follows.
            args.push(Box::new(limit as i64 + 1));
            sql.push_str(&format!(
                " ORDER BY updated_at DESC, job_id DESC LIMIT ?{}",
                args.len()
            ));
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let mut jobs = collect_views(&mut stmt, &refs)?;
            let next_cursor = if jobs.len() > limit {
                jobs.truncate(limit);
                jobs.last().map(encode_cursor)
            } else {
                None
            };
            Ok(Page { jobs, next_cursor })
        })
        .await
    }

    async fn scan(&self, after: Option<JobId>, limit: usize) -> Result<Vec<JobView>, ViewError> {
        // An empty string sorts before every job id.
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let limit = limit.max(1) as i64;
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job_id, view FROM jobs WHERE job_id > ?1 ORDER BY job_id LIMIT ?2",
                )
                .map_err(backend)?;
            collect_views(&mut stmt, &[&after, &limit])
        })
        .await
    }

    async fn clear(&self) -> Result<(), ViewError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch("DELETE FROM jobs; DELETE FROM stats;")
                .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    /// `synchronous=NORMAL` on this store's writer connection: commits no longer wait for an
    /// fsync of the WAL (3 ms each on the development VM, 0.4 s of a 1 M-event rebuild), which is
    /// still synced at every checkpoint, so the file stays consistent; a power cut can only lose
    /// the last batches. Other connections to the file (a running `jobledger dev`) keep FULL.
    ///
    /// The listing indexes are dropped until the bulk write ends: keeping three B-trees in step
    /// row by row took ~0.65 CPU-s of a 1 M-event rebuild, all of it on the one writer; sorting
    /// them once at the end takes ~0.4 s. Listing meanwhile still works, by scanning the table.
    ///
    /// A scratch store is made that way already: nothing to do.
    async fn start_bulk_write(&self) -> Result<(), ViewError> {
        let Some(checkpoints) = &self.inner.checkpoints else {
            return Ok(());
        };
        self.write(|conn| {
            conn.execute_batch("PRAGMA synchronous=NORMAL")
                .map_err(backend)?;
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(DROP_LISTING_INDEXES).map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await?;
        checkpoints.bulk.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Back to FULL, the listing indexes made again, then a [`durable_checkpoint`] (every commit
    /// so far on disk), after any checkpoint of the thread; the WAL's usual limit applies again.
    ///
    /// A scratch store only makes its listing indexes: the replacement syncs its file.
    async fn finish_bulk_write(&self) -> Result<(), ViewError> {
        let Some(checkpoints) = &self.inner.checkpoints else {
            return self
                .write(|conn| {
                    let tx = conn.transaction().map_err(backend)?;
                    tx.execute_batch(LISTING_INDEXES).map_err(backend)?;
                    tx.commit().map_err(backend)
                })
                .await;
        };
        // The thread copies the views and syncs the file while the indexes are sorted.
        checkpoints.now();
        let running = Arc::clone(&checkpoints.running);
        let finished = self
            .write(move |conn| {
                conn.execute_batch("PRAGMA synchronous=FULL")
                    .map_err(backend)?;
                let tx = conn.transaction().map_err(backend)?;
                tx.execute_batch(LISTING_INDEXES).map_err(backend)?;
                tx.commit().map_err(backend)?;
                let _turn = running.lock().map_err(|_| {
                    ViewError::backend(false, "view store checkpoint mutex poisoned")
                })?;
                durable_checkpoint(conn, std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            })
            .await;
        checkpoints.bulk.store(false, Ordering::Relaxed);
        finished
    }

    async fn save_stats(&self, stats: &Stats) -> Result<(), ViewError> {
        let json = serde_json::to_string(stats).map_err(|e| ViewError::backend(false, e))?;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO stats (id, stats) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET stats = excluded.stats",
                params![json],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn load_stats(&self) -> Result<Option<Stats>, ViewError> {
        self.read(|conn| {
            let json: Option<String> = conn
                .query_row("SELECT stats FROM stats WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            json.map(|j| {
                serde_json::from_str(&j).map_err(|e| ViewError::Corrupt {
                    job_id: "(stats)".to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn synchronous(store: &SqliteViewStore) -> i64 {
        let conn = store.inner.writer.lock().unwrap();
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_bulk_write_stops_waiting_for_the_disk_and_ends_durable_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
        // Another connection to the same file, as a running `jobledger dev` would hold.
        let live = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
        const FULL: i64 = 2;
        const NORMAL: i64 = 1;
        assert_eq!(synchronous(&store), FULL);
        store.start_bulk_write().await.unwrap();
        assert_eq!(synchronous(&store), NORMAL);
        assert_eq!(
            synchronous(&live),
            FULL,
            "only the rebuild's own connection"
        );
        store.clear().await.unwrap();
        store.finish_bulk_write().await.unwrap();
        assert_eq!(synchronous(&store), FULL);
    }

    /// The listing indexes the database file holds, by name.

    #[tokio::test]
    async fn the_writer_checkpoints_itself_past_the_wal_limit_and_a_bulk_write_raises_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
        let checkpoints = &store.inner.checkpoints.as_ref().unwrap();
        // The thread reports while it holds its turn: holding it keeps the thread's reports out.
        let turn = || checkpoints.running.lock().unwrap();
        let past = |frames: i64| {
            let _turn = turn();
            checkpoints.wal_frames.store(frames, Ordering::Relaxed);
            checkpoints.wal_too_long()
        };
        let usual = WAL_BYTES_LIMIT / i64::from(PAGE_SIZE);
        assert!(!past(usual - 1));
        assert!(past(usual));
        let again = {
            let _turn = turn();
            checkpoints.wal_too_long()
        };
        assert!(!again, "once, until the thread reports again");

        store.start_bulk_write().await.unwrap();
        assert!(!past(usual), "a bulk write leaves the sync to the thread");
        let bulk = BULK_WAL_BYTES_LIMIT / i64::from(PAGE_SIZE);
        assert!(past(bulk), "but the WAL stays bounded");
        store.finish_bulk_write().await.unwrap();
        assert!(past(usual), "the usual limit again");
    }

    #[tokio::test]
    async fn the_thread_checkpoints_when_asked_without_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
        let checkpoints = &store.inner.checkpoints.as_ref().unwrap();
        // A mark only a report of the thread replaces.
        let mark = || {
            let _turn = checkpoints.running.lock().unwrap();
            checkpoints.wal_frames.store(-1, Ordering::Relaxed);
        };
        let reported = |deadline: std::time::Duration| {
            let start = std::time::Instant::now();
            while start.elapsed() < deadline {
                if checkpoints.wal_frames.load(Ordering::Relaxed) >= 0 {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        };
        // The commit's checkpoint (however late the thread runs it), then the thread idles.
        mark();
        store.upsert(&view()).await.unwrap();
        assert!(reported(std::time::Duration::from_secs(5)));
        mark();
        assert!(
            !reported(CHECKPOINT_PAUSE * 3),
            "no checkpoint without a commit"
        );
        checkpoints.now();
        assert!(reported(std::time::Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn a_bulk_write_sets_the_listing_indexes_aside_and_makes_them_again_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.sqlite");
        let store = SqliteViewStore::open(&path).unwrap();
        assert_eq!(crate::listing_indexes(&path), crate::ALL_LISTING_INDEXES);
        store.start_bulk_write().await.unwrap();
        assert!(crate::listing_indexes(&path).is_empty());
        let mut views: Vec<JobView> = (0..5).map(|_| view()).collect();
        for (i, v) in views.iter_mut().enumerate() {
            v.updated_at += chrono::Duration::seconds(i as i64);
        }
        store.upsert_many(&views).await.unwrap();
        let newest_first: Vec<JobId> = views.iter().rev().map(|v| v.job_id).collect();
        let status = views[0].status;
        let listed = |store: SqliteViewStore| async move {
            let q = ListQuery {
                status: Some(status),
                limit: 10,
                ..ListQuery::default()
            };
            let page = store.list(&q).await.unwrap();
            page.jobs.iter().map(|v| v.job_id).collect::<Vec<_>>()
        };
        assert_eq!(listed(store.clone()).await, newest_first, "listing scans");
        store.finish_bulk_write().await.unwrap();
        assert_eq!(crate::listing_indexes(&path), crate::ALL_LISTING_INDEXES);
        assert_eq!(listed(store.clone()).await, newest_first);
        let conn = Connection::open(&path).unwrap();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT job_id FROM jobs WHERE status = 'SUCCEEDED' \
                 ORDER BY updated_at DESC, job_id DESC LIMIT 10",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("jobs_status_updated_at"), "{plan}");
    }

    #[tokio::test]
    async fn a_bulk_write_that_never_finished_gets_its_indexes_back_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.sqlite");
        let store = SqliteViewStore::open(&path).unwrap();
        store.start_bulk_write().await.unwrap();
        store.upsert(&view()).await.unwrap();
        drop(store);
        assert!(crate::listing_indexes(&path).is_empty());
        let reopened = SqliteViewStore::open(&path).unwrap();
        assert_eq!(crate::listing_indexes(&path), crate::ALL_LISTING_INDEXES);
        assert_eq!(reopened.scan(None, 10).await.unwrap().len(), 1);
    }

    fn view() -> JobView {
        let mut view = crate::fixture_view();
        view.job_id = JobId::new();
        view
    }

    /// Views in the database file itself, WAL ignored (`immutable`): what a checkpoint copied.
    /// Asking a checkpoint for its counts would copy the frames it was meant to find copied.
    fn views_in_the_database_file(path: &Path) -> i64 {
        let uri = format!("file:{}?immutable=1", path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(uri, flags).unwrap();
        conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn finishing_a_bulk_write_waits_for_the_threads_checkpoint_then_copies_every_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.sqlite");
        let store = SqliteViewStore::open(&path).unwrap();
        store.start_bulk_write().await.unwrap();
        let views: Vec<JobView> = (0..50).map(|_| view()).collect();
        store.upsert_many(&views).await.unwrap();
        // As if the thread were checkpointing: SQLite would turn a second checkpoint away.
        let running = Arc::clone(&store.inner.checkpoints.as_ref().unwrap().running);
        let (locked, release) = (mpsc::channel(), mpsc::channel::<()>());
        let checkpointing = std::thread::spawn(move || {
            let _turn = running.lock().unwrap();
            locked.0.send(()).unwrap();
            release.1.recv().unwrap();
        });
        locked.1.recv().unwrap();
        let finishing = tokio::spawn({
            let store = store.clone();
            async move { store.finish_bulk_write().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!finishing.is_finished(), "it waits for the thread's turn");
        release.0.send(()).unwrap();
        checkpointing.join().unwrap();
        finishing.await.unwrap().unwrap();
        assert_eq!(
            views_in_the_database_file(&path),
            50,
            "every frame is in the database file"
        );
    }

    #[tokio::test]
    async fn a_durable_checkpoint_waits_for_an_open_read_and_says_so_when_it_never_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.sqlite");
        let store = SqliteViewStore::open(&path).unwrap();
        store.upsert(&view()).await.unwrap();
        // A read that keeps an older snapshot: the frames written after it cannot be copied back.
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM jobs;")
            .unwrap();
        store.upsert_many(&[view(), view()]).await.unwrap();

        let writer = Connection::open(&path).unwrap();
        let short = std::time::Duration::from_millis(100);
        let err = durable_checkpoint(&writer, short).unwrap_err().to_string();
        assert!(err.contains("not yet on disk"), "{err}");
        assert!(err.contains("WAL frame(s)"), "{err}");

        let ends = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            reader.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        durable_checkpoint(&writer, std::time::Duration::from_secs(5)).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
        ends.join().unwrap();
        assert_eq!(views_in_the_database_file(&path), 3);
    }
}
