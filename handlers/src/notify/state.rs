//! Per-sink, per-job delivery state and the dead-letter list: the ports (so a DynamoDB store can
//! plug in on AWS) and `SqliteNotifyStore`, the embedded store of `jobledger dev`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use jobledger_events::JobId;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What one sink has done for one job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    /// The last version fully delivered; records at or below it change nothing.
    pub last_version: u64,
    /// What the sink created: the Slack message `ts` or the Notion page id.
    pub external_id: Option<String>,
    /// Where the external object lives (the Slack channel id).
    pub channel: Option<String>,
    /// The version the external object shows (may run ahead of `last_version` mid-delivery).
    pub message_version: u64,
    /// The version whose failure got its threaded reply (Slack bot).
    pub reply_version: u64,
}

/// A record a sink gave up on, kept for an operator to look at and redrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Id in the list (for redrive).
    pub id: i64,
    /// The sink's name.
    pub sink: String,
    /// The job.
    pub job_id: JobId,
    /// The event's version.
    pub version: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's change-feed position (0 when not from the local feed).
    pub seq: u64,
    /// The last error.
    pub error: String,
    /// Tries so far.
    pub tries: u32,
    /// When it last failed.
    pub failed_at: DateTime<Utc>,
}

/// A new dead letter (the store assigns the id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The sink's name.
    pub sink: String,
    /// The job.
    pub job_id: JobId,
    /// The event's version.
    pub version: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's feed position.
    pub seq: u64,
    /// The last error.
    pub error: String,
    /// Tries made.
    pub tries: u32,
    /// When it last failed.
    pub failed_at: DateTime<Utc>,
}

/// The state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed.
    #[error("notifier state store error{}: {message}", if *.retryable { " (retryable)" } else { "" })]
    Backend {
        /// Whether trying again may help.
        retryable: bool,
        /// What happened.
        message: String,
    },
    /// A stored row cannot be read back.
    #[error("corrupt notifier state: {0}")]
    Corrupt(String),
}

impl StateError {
    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StateError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// Per-sink, per-job state. `put` never lowers `last_version`, so a late writer changes nothing.
pub trait NotifyStateStore: Send + Sync {
    /// The sink's state for a job (the default state if it has none).
    fn get(
        &self,
        sink: &str,
        job_id: JobId,
    ) -> impl Future<Output = Result<SinkState, StateError>> + Send;

    /// Saves the state unless the stored one has a higher `last_version`; returns whether it was written.
    fn put(
        &self,
        sink: &str,
        job_id: JobId,
        state: &SinkState,
    ) -> impl Future<Output = Result<bool, StateError>> + Send;

    /// [`NotifyStateStore::put`] for several jobs of one sink; answers how many were written.
    /// Stores that can write them together (one transaction) override it.
    fn put_many(
        &self,
        sink: &str,
        states: &[(JobId, SinkState)],
    ) -> impl Future<Output = Result<usize, StateError>> + Send {
        async move {
            let mut written = 0;
            for (job_id, state) in states {
                written += usize::from(self.put(sink, *job_id, state).await?);
            }
            Ok(written)
        }
    }
}

/// The dead-letter list of the notifier's sinks.
pub trait DeadLetterStore: Send + Sync {
    /// Adds a record (a record already listed for the same sink and event is updated instead).
    fn add(&self, letter: NewDeadLetter) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Every dead letter, oldest first; only `sink`'s if given.
    fn list(
        &self,
        sink: Option<&str>,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StateError>> + Send;

    /// Removes a dead letter (after a successful redrive); returns whether it existed.
    fn remove(&self, id: i64) -> impl Future<Output = Result<bool, StateError>> + Send;
}

/// Failed tries of a record, counted across runs that remember nothing in between (a Lambda
/// invocation): the stream delivers a failed record again but does not say how often it did.
pub trait FailureCounter: Send + Sync {
    /// Counts one more failed try of `version` of the job for `sink`; returns the tries so far.
    fn count_failure(
        &self,
        sink: &str,
        job_id: JobId,
        version: u64,
    ) -> impl Future<Output = Result<u32, StateError>> + Send;
}

/// States a [`StateBuffer`] remembers between flushes before it forgets the written ones.
pub const BUFFER_LIMIT: usize = 10_000;

/// One sink loop's write-behind view of its state store: reads are served from memory once seen,
/// and writes wait in memory until [`StateBuffer::flush`] writes them together — one transaction
/// (one fsync) per feed batch instead of one or two per event.
///
/// The loop flushes before it saves its change-feed checkpoint, so a crash loses only writes whose
/// records are still ahead of the saved checkpoint: they are delivered again (a re-send), never
/// skipped. A state naming a newly created external object is written at once, so a crash never
/// creates a second Slack message or Notion page for a job. The loop is its sink's only writer; a
/// redrive from elsewhere meanwhile can only make the buffer re-send too.
pub struct StateBuffer<'a, N> {
    store: &'a N,
    sink: String,
    inner: Mutex<Buffered>,
}

#[derive(Default)]
struct Buffered {
    /// The latest state of each job seen, as read or as written since.
    known: HashMap<JobId, SinkState>,
    /// Jobs whose `known` state is not in the store yet.
    dirty: HashSet<JobId>,
}

impl<'a, N: NotifyStateStore> StateBuffer<'a, N> {
    /// A buffer of `sink`'s states over `store`; other sinks' states pass straight through.
    pub fn new(store: &'a N, sink: &str) -> Self {
        StateBuffer {
            store,
            sink: sink.to_string(),
            inner: Mutex::new(Buffered::default()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Buffered>, StateError> {
        self.inner.lock().map_err(|_| StateError::Backend {
            retryable: false,
            message: "notifier state buffer poisoned".into(),
        })
    }

    /// States written but not flushed yet.
    pub fn pending(&self) -> usize {
        self.lock().map_or(0, |b| b.dirty.len())
    }

    /// Writes every pending state with one [`NotifyStateStore::put_many`]; answers how many the
    /// store took. On an error they stay pending for the next flush.
    pub async fn flush(&self) -> Result<usize, StateError> {
        let pending: Vec<(JobId, SinkState)> = {
            let b = self.lock()?;
            b.dirty
                .iter()
                .filter_map(|job| b.known.get(job).map(|s| (*job, s.clone())))
                .collect()
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let written = self.store.put_many(&self.sink, &pending).await?;
        let mut b = self.lock()?;
        let Buffered { known, dirty } = &mut *b;
        for (job, state) in &pending {
            if known.get(job) == Some(state) {
                dirty.remove(job);
            }
        }
        if written < pending.len() {
            // The store holds a newer state for some of them: read those again when next needed.
            for (job, _) in &pending {
                if !dirty.contains(job) {
                    known.remove(job);
                }
            }
        }
        if known.len() > BUFFER_LIMIT {
            known.retain(|job, _| dirty.contains(job));
        }
        Ok(written)
    }
}

impl<N: NotifyStateStore> NotifyStateStore for StateBuffer<'_, N> {
    async fn get(&self, sink: &str, job_id: JobId) -> Result<SinkState, StateError> {
        if sink != self.sink {
            return self.store.get(sink, job_id).await;
        }
        if let Some(state) = self.lock()?.known.get(&job_id) {
            return Ok(state.clone());
        }
        let stored = self.store.get(sink, job_id).await?;
        Ok(self.lock()?.known.entry(job_id).or_insert(stored).clone())
    }

    async fn put(&self, sink: &str, job_id: JobId, state: &SinkState) -> Result<bool, StateError> {
        if sink != self.sink {
            return self.store.put(sink, job_id, state).await;
        }
        let created = {
            let mut b = self.lock()?;
            let known = b.known.get(&job_id);
            if known.is_some_and(|known| known.last_version > state.last_version) {
                return Ok(false);
            }
            let created = state.external_id.is_some()
                && known.is_none_or(|known| known.external_id != state.external_id);
            b.known.insert(job_id, state.clone());
            b.dirty.insert(job_id);
            created
        };
        if created {
            // The sink just created something (a Slack message, a Notion page): its id is written
            // at once, so a crash repeats updates of it, never its creation.
            let written = self.store.put(sink, job_id, state).await?;
            let mut b = self.lock()?;
            if b.known.get(&job_id) == Some(state) {
                b.dirty.remove(&job_id);
            }
            return Ok(written);
        }
        Ok(true)
    }
}

impl<N: DeadLetterStore> DeadLetterStore for StateBuffer<'_, N> {
    async fn add(&self, letter: NewDeadLetter) -> Result<(), StateError> {
        self.store.add(letter).await
    }

    async fn list(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        self.store.list(sink).await
    }

    async fn remove(&self, id: i64) -> Result<bool, StateError> {
        self.store.remove(id).await
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notify_state (
    sink TEXT NOT NULL,
    job_id TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    external_id TEXT,
    channel TEXT,
    message_version INTEGER NOT NULL,
    reply_version INTEGER NOT NULL,
    PRIMARY KEY (sink, job_id)
);
CREATE TABLE IF NOT EXISTS notify_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    error TEXT NOT NULL,
    tries INTEGER NOT NULL,
    failed_at TEXT NOT NULL,
    UNIQUE (sink, event_id)
);
CREATE TABLE IF NOT EXISTS notify_failures (
    sink TEXT NOT NULL,
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    PRIMARY KEY (sink, job_id, version)
);
";

fn backend(e: rusqlite::Error) -> StateError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    StateError::Backend {
        retryable,
        message: e.to_string(),
    }
}

/// The embedded state store and dead-letter list (one SQLite file, WAL). Cheap to clone.
#[derive(Clone)]
pub struct SqliteNotifyStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteNotifyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteNotifyStore")
    }
}

impl SqliteNotifyStore {
    /// Opens (creating if needed) the store at `path`. The parent folder must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let conn = Connection::open(path.as_ref()).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(SqliteNotifyStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| StateError::Backend {
                retryable: false,
                message: "notifier state mutex poisoned".into(),
            })?;
            f(&conn)
        })
        .await
        .map_err(|e| StateError::Backend {
            retryable: false,
            message: e.to_string(),
        })?
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The conditional upsert of one sink state: a stored higher `last_version` wins.
const PUT_STATE: &str = "INSERT INTO notify_state
        (sink, job_id, last_version, external_id, channel, message_version, reply_version)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (sink, job_id) DO UPDATE SET
        last_version = excluded.last_version, external_id = excluded.external_id,
        channel = excluded.channel, message_version = excluded.message_version,
        reply_version = excluded.reply_version
     WHERE excluded.last_version >= notify_state.last_version";

fn put_state(
    conn: &Connection,
    sink: &str,
    job_id: JobId,
    s: &SinkState,
) -> Result<bool, StateError> {
    let n = conn
        .prepare_cached(PUT_STATE)
        .and_then(|mut stmt| {
            stmt.execute(params![
                sink,
                job_id.to_string(),
                to_i64(s.last_version),
                s.external_id,
                s.channel,
                to_i64(s.message_version),
                to_i64(s.reply_version)
            ])
        })
        .map_err(backend)?;
    Ok(n == 1)
}

impl NotifyStateStore for SqliteNotifyStore {
    async fn get(&self, sink: &str, job_id: JobId) -> Result<SinkState, StateError> {
        let sink = sink.to_string();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    "SELECT last_version, external_id, channel, message_version, reply_version
                     FROM notify_state WHERE sink = ?1 AND job_id = ?2",
                    params![sink, job_id.to_string()],
                    |r| {
                        Ok(SinkState {
                            last_version: r.get::<_, i64>(0)? as u64,
                            external_id: r.get(1)?,
                            channel: r.get(2)?,
                            message_version: r.get::<_, i64>(3)? as u64,
                            reply_version: r.get::<_, i64>(4)? as u64,
                        })
                    },
                )
                .optional()
                .map_err(backend)?;
            Ok(row.unwrap_or_default())
        })
        .await
    }

    async fn put(&self, sink: &str, job_id: JobId, state: &SinkState) -> Result<bool, StateError> {
        let (sink, s) = (sink.to_string(), state.clone());
        self.with(move |conn| put_state(conn, &sink, job_id, &s))
            .await
    }

    /// One transaction, so one fsync, for all of them.
    async fn put_many(
        &self,
        sink: &str,
        states: &[(JobId, SinkState)],
    ) -> Result<usize, StateError> {
        if states.is_empty() {
            return Ok(0);
        }
        let (sink, states) = (sink.to_string(), states.to_vec());
        self.with(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let mut written = 0;
            for (job_id, state) in &states {
                written += usize::from(put_state(&tx, &sink, *job_id, state)?);
            }
            tx.commit().map_err(backend)?;
            Ok(written)
        })
        .await
    }
}

impl DeadLetterStore for SqliteNotifyStore {
    async fn add(&self, l: NewDeadLetter) -> Result<(), StateError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO notify_dead_letters
                    (sink, job_id, version, event_id, seq, error, tries, failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (sink, event_id) DO UPDATE SET
                    error = excluded.error, tries = notify_dead_letters.tries + excluded.tries,
                    failed_at = excluded.failed_at",
                params![
                    l.sink,
                    l.job_id.to_string(),
                    to_i64(l.version),
                    l.event_id.to_string(),
                    to_i64(l.seq),
                    l.error,
                    l.tries,
                    l.failed_at.to_rfc3339()
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let sink = sink.map(str::to_string);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, sink, job_id, version, event_id, seq, error, tries, failed_at
                     FROM notify_dead_letters WHERE ?1 IS NULL OR sink = ?1 ORDER BY id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![sink], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, u32>(7)?,
                        r.get::<_, String>(8)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, sink, job_id, version, event_id, seq, error, tries, failed_at) =
                    row.map_err(backend)?;
                let corrupt =
                    |what: &str| StateError::Corrupt(format!("dead letter {id}: bad {what}"));
                out.push(DeadLetter {
                    id,
                    sink,
                    job_id: job_id.parse().map_err(|_| corrupt("job_id"))?,
                    version: version as u64,
                    event_id: event_id.parse().map_err(|_| corrupt("event_id"))?,
                    seq: seq as u64,
                    error,
                    tries,
                    failed_at: DateTime::parse_from_rfc3339(&failed_at)
                        .map_err(|_| corrupt("failed_at"))?
                        .with_timezone(&Utc),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn remove(&self, id: i64) -> Result<bool, StateError> {
        self.with(move |conn| {
            let n = conn
                .execute("DELETE FROM notify_dead_letters WHERE id = ?1", params![id])
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}

impl FailureCounter for SqliteNotifyStore {
    async fn count_failure(
        &self,
        sink: &str,
        job_id: JobId,
        version: u64,
    ) -> Result<u32, StateError> {
        let sink = sink.to_string();
        self.with(move |conn| {
            conn.query_row(
                "INSERT INTO notify_failures (sink, job_id, version, tries) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (sink, job_id, version) DO UPDATE SET tries = tries + 1
                 RETURNING tries",
                params![sink, job_id.to_string(), to_i64(version)],
                |r| r.get::<_, u32>(0),
            )
            .map_err(backend)
        })
        .await
    }
}
