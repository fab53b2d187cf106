//! `SqliteEventStore`: the embedded ledger (SQLite, WAL, `synchronous=FULL`).
//!
//! PLACEHOLDER: single connection, no group commit yet (being replaced).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::envelope::{Hash, RecordedEvent, format_time, parse_time};
use crate::ids::JobId;
use crate::store::{AppendBatch, ChangeFeed, EventStore, FeedEvent, IdempotencyRecord, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    schema INTEGER NOT NULL,
    data TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (job_id, version)
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
";

/// The embedded event store.
#[derive(Clone)]
pub struct SqliteEventStore {
    conn: Arc<Mutex<Connection>>,
    head: watch::Sender<u64>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(false, e)
}

impl SqliteEventStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let head: u64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(backend)?;
        let (tx, _) = watch::channel(head);
        Ok(SqliteEventStore {
            conn: Arc::new(Mutex::new(conn)),
            head: tx,
        })
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::backend(false, "store mutex poisoned"))?;
        f(&mut conn)
    }
}

fn row_to_event(row: &rusqlite::Row<'_>) -> Result<RecordedEvent, StoreError> {
    let job: String = row.get(0).map_err(backend)?;
    let version: i64 = row.get(1).map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        job_id: job.clone(),
        version: Some(version as u64),
        reason,
    };
    let get = |i: usize| -> Result<String, StoreError> { row.get::<_, String>(i).map_err(|e| corrupt(e.to_string())) };
    Ok(RecordedEvent {
        job_id: job.parse().map_err(|e: uuid::Error| corrupt(e.to_string()))?,
        version: version as u64,
        event_id: get(2)?.parse().map_err(|e: uuid::Error| corrupt(e.to_string()))?,
        event_type: get(3)?,
        schema: row.get::<_, i64>(4).map_err(|e| corrupt(e.to_string()))? as u32,
        data: RawValue::from_string(get(5)?).map_err(|e| corrupt(e.to_string()))?,
        at: parse_time(&get(6)?).map_err(corrupt)?,
        actor: get(7)?,
        correlation_id: get(8)?,
        causation_id: get(9)?,
        prev_hash: Hash::from_hex(&get(10)?).map_err(|e| corrupt(e.to_string()))?,
        hash: Hash::from_hex(&get(11)?).map_err(|e| corrupt(e.to_string()))?,
    })
}

const COLUMNS: &str = "job_id, version, event_id, type, schema, data, at, actor, correlation_id, causation_id, prev_hash, hash";

impl EventStore for SqliteEventStore {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE job_id = ?1 ORDER BY version"))
                .map_err(backend)?;
            let mut rows = stmt.query(params![job_id.to_string()]).map_err(backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                out.push(row_to_event(row)?);
            }
            Ok(out)
        })
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        let last = self.with_conn(|conn| {
            let tx = conn.transaction().map_err(backend)?;
            if let Some(rec) = &batch.idempotency {
                let existing = tx
                    .query_row(
                        "SELECT job_id, fingerprint, created_at FROM idempotency WHERE key = ?1",
                        params![rec.key],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some((job, fingerprint, created_at)) = existing {
                    return Err(StoreError::IdempotencyKeyTaken {
                        existing: IdempotencyRecord {
                            key: rec.key.clone(),
                            job_id: job.parse().map_err(|e: uuid::Error| StoreError::backend(false, e))?,
                            fingerprint,
                            created_at: parse_time(&created_at).map_err(|e| StoreError::backend(false, e))?,
                        },
                    });
                }
                tx.execute(
                    "INSERT INTO idempotency (key, job_id, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![rec.key, rec.job_id.to_string(), rec.fingerprint, format_time(&rec.created_at)],
                )
                .map_err(backend)?;
            }
            let head: i64 = tx
                .query_row("SELECT COALESCE(MAX(version), 0) FROM events WHERE job_id = ?1", params![batch.job_id.to_string()], |r| r.get(0))
                .map_err(backend)?;
            if head as u64 != batch.expected_version {
                return Err(StoreError::Conflict { job_id: batch.job_id, expected: batch.expected_version });
            }
            for e in &batch.events {
                tx.execute(
                    &format!("INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                    params![
                        e.job_id.to_string(), e.version as i64, e.event_id.to_string(), e.event_type, e.schema,
                        e.data.get(), format_time(&e.at), e.actor, e.correlation_id, e.causation_id,
                        e.prev_hash.to_hex(), e.hash.to_hex()
                    ],
                )
                .map_err(backend)?;
            }
            let last = tx.last_insert_rowid() as u64;
            tx.commit().map_err(backend)?;
            Ok(last)
        })?;
        self.head.send_replace(last);
        Ok(())
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.with_conn(|conn| {
            let row = conn
                .query_row(
                    "SELECT job_id, fingerprint, created_at FROM idempotency WHERE key = ?1",
                    params![key],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()
                .map_err(backend)?;
            row.map(|(job, fingerprint, created_at)| {
                Ok(IdempotencyRecord {
                    key: key.to_string(),
                    job_id: job.parse().map_err(|e: uuid::Error| StoreError::backend(false, e))?,
                    fingerprint,
                    created_at: parse_time(&created_at).map_err(|e| StoreError::backend(false, e))?,
                })
            })
            .transpose()
        })
    }
}

impl ChangeFeed for SqliteEventStore {
    async fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS}, seq FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
                .map_err(backend)?;
            let mut rows = stmt.query(params![seq as i64, limit as i64]).map_err(backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let seq: i64 = row.get(12).map_err(backend)?;
                out.push(FeedEvent { seq: seq as u64, event: row_to_event(row)? });
            }
            Ok(out)
        })
    }

    async fn wait_after(&self, seq: u64) {
        let mut rx = self.head.subscribe();
        let _ = rx.wait_for(|head| *head > seq).await;
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT seq FROM checkpoints WHERE consumer = ?1", params![consumer], |r| r.get::<_, i64>(0))
                .optional()
                .map(|s| s.unwrap_or(0) as u64)
                .map_err(backend)
        })
    }

    async fn save_checkpoint(&self, consumer: &str, seq: u64) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO checkpoints (consumer, seq) VALUES (?1, ?2) ON CONFLICT(consumer) DO UPDATE SET seq = excluded.seq",
                params![consumer, seq as i64],
            )
            .map(|_| ())
            .map_err(backend)
        })
    }
}
