//! `SqliteJobQueue`: an embedded FIFO work queue with the semantics of SQS FIFO, in its own SQLite file.
//!
//! - Message groups: while any message of a group is in flight, no other message of that group is
//!   handed out; within a group messages come in send order. One receive may return several
//!   consecutive messages of one group (as SQS does), oldest groups first.
//! - Deduplication: a send whose deduplication id was seen in the last 5 minutes enqueues nothing
//!   and answers the first message's id (the id is remembered even after that message is deleted).
//! - Visibility timeout and receive count per delivery; a receipt handle is only valid until the
//!   message is delivered again.
//! - Dead-letter queue: a message already received `max_receives` times is moved to a dead-letter
//!   table instead of being delivered again; operators list and redrive it.
//! - Receivers waiting in [`JobQueue::receive`] are woken by a send (or a delete or visibility
//!   change that frees a group), and otherwise sleep until the earliest in-flight message returns.
//!
//! # Durability and speed
//!
//! SQLite work runs on tokio's blocking pool, never on the async threads: a commit waits for an
//! fsync, and two cores must not stall on it. Sends (and redrives) commit with `synchronous=FULL`:
//! the dispatcher records `JobQueued` only after its message is on disk. Receives, deletes and
//! visibility changes commit with `synchronous=NORMAL`: a crash may forget the last few of them,
//! which only delivers a message again (at least once, as SQS does), and the next send's fsync makes
//! them durable too, so a forgotten delete can never reorder a group. Batch sends and deletes
//! ([`JobQueue::send_batch`], [`JobQueue::delete_batch`]) take one transaction each.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use crate::ports::{JobMessage, JobQueue, MAX_VISIBILITY, QueueError, ReceivedMessage};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receipt TEXT UNIQUE,
    receive_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dedup (
    dedup_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dedup_expires ON dedup (expires_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at INTEGER NOT NULL
);
";

/// SQS's deduplication window.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Most messages one SQS receive returns; the default [`QueueConfig::max_batch`].
pub const SQS_MAX_BATCH: usize = 10;

/// Settings of a [`SqliteJobQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Deliveries a message gets before it is moved to the dead-letter queue (SQS `maxReceiveCount`).
    pub max_receives: u32,
    /// How long a deduplication id is remembered.
    pub dedup_window: Duration,
    /// Most messages one receive may ask for: SQS's 10 by default, so code tested here behaves the
    /// same on SQS; `jobledger dev` raises it to take work off the queue in fewer transactions.
    pub max_batch: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_receives: 5,
            dedup_window: DEDUP_WINDOW,
            max_batch: SQS_MAX_BATCH,
        }
    }
}

/// A message in the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's id.
    pub message_id: String,
    /// Its group.
    pub group_id: String,
    /// Its deduplication id.
    pub dedup_id: String,
    /// The body.
    pub body: String,
    /// How many times it was delivered.
    pub receive_count: u32,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// When it was moved here.
    pub dead_at: DateTime<Utc>,
}

/// Message counts, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting to be received (including those behind an in-flight message of their group).
    pub visible: u64,
    /// Received and not yet deleted or returned.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// A clock in the queue's hands, so tests can move past the deduplication window.
pub type QueueClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The queue's one connection, and whether its commits are fsynced now (`synchronous=FULL`).
struct QueueConn {
    conn: Connection,
    durable: bool,
}

/// How a transaction must reach the disk before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// fsynced before the call returns (sends: the ledger records `JobQueued` after them).
    Durable,
    /// Written to the WAL; fsynced by the next durable commit (losing it only redelivers).
    Lazy,
}

/// The embedded FIFO queue. Clones share the database and wake each other's receivers.
#[derive(Clone)]
pub struct SqliteJobQueue {
    conn: Arc<Mutex<QueueConn>>,
    wake: Arc<Notify>,
    config: QueueConfig,
    clock: QueueClock,
}

fn backend(e: rusqlite::Error) -> QueueError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    QueueError::backend(busy, e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// What a non-waiting receive found.
struct Attempt {
    messages: Vec<ReceivedMessage>,
    /// When the earliest in-flight message becomes visible again (queue clock, ms).
    next_return_ms: Option<i64>,
}

impl SqliteJobQueue {
    /// Opens (creating if needed) the queue at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, QueueError> {
        Self::open_with(path, QueueConfig::default())
    }

    /// Opens (creating if needed) the queue at `path`.
    pub fn open_with(path: impl AsRef<Path>, config: QueueConfig) -> Result<Self, QueueError> {
        if config.max_receives == 0 {
            return Err(QueueError::InvalidArgument(
                "max_receives must be at least 1".into(),
            ));
        }
        if config.max_batch == 0 {
            return Err(QueueError::InvalidArgument(
                "max_batch must be at least 1".into(),
            ));
        }
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(SqliteJobQueue {
            conn: Arc::new(Mutex::new(QueueConn {
                conn,
                durable: true,
            })),
            wake: Arc::new(Notify::new()),
            config,
            clock: Arc::new(Utc::now),
        })
    }

    /// Replaces the clock used for visibility, deduplication and dead-letter times (tests).
    pub fn with_clock(mut self, clock: QueueClock) -> Self {
        self.clock = clock;
        self
    }

    /// The settings.
    pub fn config(&self) -> QueueConfig {
        self.config
    }

    fn now_ms(&self) -> i64 {
        (self.clock)().timestamp_millis()
    }

    fn with_conn<T>(
        &self,
        commit: Commit,
        f: impl FnOnce(&mut Connection) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| QueueError::backend(false, "queue mutex poisoned"))?;
        let want = commit == Commit::Durable;
        if guard.durable != want {
            let pragma = if want {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            };
            guard.conn.execute_batch(pragma).map_err(backend)?;
            guard.durable = want;
        }
        f(&mut guard.conn)
    }

    /// Runs `f` on the blocking pool: queue transactions wait for the disk.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteJobQueue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || f(&queue))
            .await
            .map_err(|e| QueueError::backend(false, e))?
    }

    /// Sends every message in one durable transaction; answers their message ids in order.
    fn send_all_now(&self, messages: &[JobMessage]) -> Result<Vec<String>, QueueError> {
        let now = self.now_ms();
        let expires_at = now.saturating_add(millis(self.config.dedup_window));
        self.with_conn(Commit::Durable, |conn| {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute("DELETE FROM dedup WHERE expires_at <= ?1", params![now])
                .map_err(backend)?;
            let mut ids = Vec::with_capacity(messages.len());
            for message in messages {
                let dedup_id = message.dedup_id();
                let seen: Option<String> = tx
                    .prepare_cached("SELECT message_id FROM dedup WHERE dedup_id = ?1")
                    .and_then(|mut s| s.query_row(params![dedup_id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if let Some(first) = seen {
                    ids.push(first);
                    continue;
                }
                let message_id = uuid::Uuid::now_v7().to_string();
                tx.prepare_cached(
                    "INSERT INTO messages (message_id, group_id, dedup_id, body, sent_at, visible_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        message_id,
                        message.group_id(),
                        dedup_id,
                        message.to_body(),
                        now
                    ])
                })
                .map_err(backend)?;
                tx.prepare_cached(
                    "INSERT INTO dedup (dedup_id, message_id, expires_at) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![dedup_id, message_id, expires_at]))
                .map_err(backend)?;
                ids.push(message_id);
            }
            tx.commit().map_err(backend)?;
            Ok(ids)
        })
    }

    /// Deletes the messages these receipts name, in one transaction; answers how many were deleted
    /// (a receipt that is no longer current deletes nothing).
    fn delete_all_now(&self, receipt_handles: &[String]) -> Result<usize, QueueError> {
        self.with_conn(Commit::Lazy, |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let mut deleted = 0;
            for receipt in receipt_handles {
                deleted += tx
                    .prepare_cached("DELETE FROM messages WHERE receipt = ?1")
                    .and_then(|mut s| s.execute(params![receipt]))
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(deleted)
        })
    }

    /// Makes messages taken by a receive nobody waited for visible again, as if never received.
    fn release_now(&self, messages: &[ReceivedMessage]) -> Result<(), QueueError> {
        let now = self.now_ms();
        self.with_conn(Commit::Lazy, |conn| {
            let tx = conn.transaction().map_err(backend)?;
            for m in messages {
                tx.prepare_cached(
                    "UPDATE messages SET visible_at = ?2, receipt = NULL, \
                     receive_count = MAX(receive_count - 1, 0) WHERE receipt = ?1",
                )
                .and_then(|mut s| s.execute(params![m.receipt_handle, now]))
                .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
    }

    fn receive_now(&self, max: usize, visibility: Duration) -> Result<Attempt, QueueError> {
        let now = self.now_ms();
        let visible_until = now.saturating_add(millis(visibility));
        let max_receives = i64::from(self.config.max_receives);
        let (attempt, moved) = self.with_conn(Commit::Lazy, |conn| {
            let tx = conn.transaction().map_err(backend)?;
            // (first-appearance index of the group, seq, id, body, receive count)
            let mut picked: Vec<(usize, i64, String, String, i64)> = Vec::new();
            let mut dead: Vec<i64> = Vec::new();
            {
                // Every visible message of a group with nothing in flight, oldest first. In a FIFO
                // queue nothing is delayed, so "in flight" is exactly "visible_at in the future".
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, message_id, group_id, body, receive_count FROM messages \
                         WHERE visible_at <= ?1 \
                           AND group_id NOT IN (SELECT group_id FROM messages WHERE visible_at > ?1) \
                         ORDER BY seq",
                    )
                    .map_err(backend)?;
                let mut rows = stmt.query(params![now]).map_err(backend)?;
                let mut groups: Vec<String> = Vec::new();
                while picked.len() < max {
                    let Some(row) = rows.next().map_err(backend)? else {
                        break;
                    };
                    let seq: i64 = row.get(0).map_err(backend)?;
                    let receive_count: i64 = row.get(4).map_err(backend)?;
                    if receive_count >= max_receives {
                        // Moving a group's head aside lets the rest of the group go on, as in SQS.
                        dead.push(seq);
                        continue;
                    }
                    let group: String = row.get(2).map_err(backend)?;
                    let rank = match groups.iter().position(|g| *g == group) {
                        Some(rank) => rank,
                        None => {
                            groups.push(group);
                            groups.len() - 1
                        }
                    };
                    picked.push((
                        rank,
                        seq,
                        row.get(1).map_err(backend)?,
                        row.get(3).map_err(backend)?,
                        receive_count,
                    ));
                }
            }
            for seq in &dead {
                tx.execute(
                    "INSERT INTO dead_letters (message_id, group_id, dedup_id, body, sent_at, receive_count, dead_at) \
                     SELECT message_id, group_id, dedup_id, body, sent_at, receive_count, ?2 FROM messages WHERE seq = ?1",
                    params![seq, now],
                )
                .map_err(backend)?;
                tx.execute("DELETE FROM messages WHERE seq = ?1", params![seq])
                    .map_err(backend)?;
            }
            // A group's messages go out together, the oldest group first.
            picked.sort_by_key(|(rank, seq, ..)| (*rank, *seq));
            let mut messages = Vec::with_capacity(picked.len());
            for (_, seq, message_id, body, receive_count) in picked {
                let receipt = uuid::Uuid::now_v7().to_string();
                tx.prepare_cached(
                    "UPDATE messages SET visible_at = ?2, receipt = ?3, receive_count = receive_count + 1 WHERE seq = ?1",
                )
                .and_then(|mut s| s.execute(params![seq, visible_until, receipt]))
                .map_err(backend)?;
                messages.push(ReceivedMessage {
                    message_id,
                    receipt_handle: receipt,
                    receive_count: u32::try_from(receive_count + 1).unwrap_or(u32::MAX),
                    body,
                });
            }
            let next_return_ms = if messages.is_empty() {
                tx.query_row(
                    "SELECT MIN(visible_at) FROM messages WHERE visible_at > ?1",
                    params![now],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .map_err(backend)?
            } else {
                None
            };
            tx.commit().map_err(backend)?;
            Ok((
                Attempt {
                    messages,
                    next_return_ms,
                },
                !dead.is_empty(),
            ))
        })?;
        if moved {
            tracing::warn!(
                "messages moved to the dead-letter queue after {max_receives} deliveries"
            );
        }
        Ok(attempt)
    }

    /// One non-waiting receive on the blocking pool. The blocking step runs to the end even if this
    /// future is dropped; the messages it took are then handed back so nothing waits a visibility
    /// timeout for a receiver that is gone.
    async fn receive_handing_back_if_abandoned(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Attempt, QueueError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = queue.receive_now(max, visibility);
            if let Err(Ok(abandoned)) = reply.send(result)
                && !abandoned.messages.is_empty()
            {
                match queue.release_now(&abandoned.messages) {
                    Ok(()) => queue.wake.notify_waiters(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand back messages of an abandoned receive")
                    }
                }
            }
        });
        answer
            .await
            .map_err(|_| QueueError::backend(false, "the queue's receive task stopped"))?
    }

    /// Lists the dead-letter queue, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.with_conn(Commit::Lazy, |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT message_id, group_id, dedup_id, body, receive_count, sent_at, dead_at \
                     FROM dead_letters ORDER BY seq",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DeadLetter {
                        message_id: r.get(0)?,
                        group_id: r.get(1)?,
                        dedup_id: r.get(2)?,
                        body: r.get(3)?,
                        receive_count: r.get(4)?,
                        sent_at: time_of(r.get(5)?),
                        dead_at: time_of(r.get(6)?),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    /// Moves dead letters back to the end of the queue with a fresh receive count; `None` moves all.
    /// Answers how many were moved.
    pub async fn redrive(&self, message_ids: Option<&[String]>) -> Result<usize, QueueError> {
        let now = self.now_ms();
        let moved = self.with_conn(Commit::Durable, |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let ids: Vec<String> = match message_ids {
                Some(ids) => ids.to_vec(),
                None => {
                    let mut stmt = tx
                        .prepare("SELECT message_id FROM dead_letters ORDER BY seq")
                        .map_err(backend)?;
                    stmt.query_map([], |r| r.get(0))
                        .map_err(backend)?
                        .collect::<Result<Vec<String>, _>>()
                        .map_err(backend)?
                }
            };
            let mut moved = 0;
            for id in ids {
                let n = tx
                    .execute(
                        "INSERT INTO messages (message_id, group_id, dedup_id, body, sent_at, visible_at) \
                         SELECT message_id, group_id, dedup_id, body, sent_at, ?2 FROM dead_letters WHERE message_id = ?1",
                        params![id, now],
                    )
                    .map_err(backend)?;
                tx.execute("DELETE FROM dead_letters WHERE message_id = ?1", params![id])
                    .map_err(backend)?;
                moved += n;
            }
            tx.commit().map_err(backend)?;
            Ok(moved)
        })?;
        if moved > 0 {
            self.wake.notify_waiters();
        }
        Ok(moved)
    }

    /// Counts messages by state.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = self.now_ms();
        self.with_conn(Commit::Lazy, |conn| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM messages WHERE visible_at <= ?1), \
                        (SELECT COUNT(*) FROM messages WHERE visible_at > ?1), \
                        (SELECT COUNT(*) FROM dead_letters)",
                params![now],
                |r| {
                    Ok(QueueStats {
                        visible: r.get(0)?,
                        in_flight: r.get(1)?,
                        dead: r.get(2)?,
                    })
                },
            )
            .map_err(backend)
        })
    }
}

impl JobQueue for SqliteJobQueue {
    async fn send(&self, message: &JobMessage) -> Result<String, QueueError> {
        let mut ids = self.send_batch(std::slice::from_ref(message)).await?;
        ids.pop()
            .ok_or_else(|| QueueError::backend(false, "a send answered no message id"))
    }

    async fn send_batch(&self, messages: &[JobMessage]) -> Result<Vec<String>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let messages = messages.to_vec();
        let ids = self.blocking(move |q| q.send_all_now(&messages)).await?;
        self.wake.notify_waiters();
        Ok(ids)
    }

    /// Cancel-safe: if the caller stops waiting while messages are being taken, they are handed
    /// back at once instead of staying hidden for the visibility timeout.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        if max == 0 || max > self.config.max_batch {
            return Err(QueueError::InvalidArgument(format!(
                "max must be 1 to {}, got {max}",
                self.config.max_batch
            )));
        }
        if visibility > MAX_VISIBILITY {
            return Err(QueueError::InvalidArgument(format!(
                "visibility {visibility:?} is over 12 hours"
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so a send between the look and the wait is not missed.
            let woken = self.wake.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();

            let attempt = self
                .receive_handing_back_if_abandoned(max, visibility)
                .await?;
            if !attempt.messages.is_empty() {
                return Ok(attempt.messages);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(at) = attempt.next_return_ms {
                let ms = u64::try_from(at.saturating_sub(self.now_ms())).unwrap_or(0);
                until = until.min(now + Duration::from_millis(ms));
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let n = self.delete_batch(&[receipt_handle.to_string()]).await?;
        if n == 0 {
            return Err(QueueError::InvalidReceipt);
        }
        Ok(())
    }

    async fn delete_batch(&self, receipt_handles: &[String]) -> Result<usize, QueueError> {
        if receipt_handles.is_empty() {
            return Ok(0);
        }
        let receipts = receipt_handles.to_vec();
        let n = self.blocking(move |q| q.delete_all_now(&receipts)).await?;
        if n > 0 {
            // The messages' groups may now hand out their next messages.
            self.wake.notify_waiters();
        }
        Ok(n)
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        if timeout > MAX_VISIBILITY {
            return Err(QueueError::InvalidArgument(format!(
                "visibility {timeout:?} is over 12 hours"
            )));
        }
        let visible_at = self.now_ms().saturating_add(millis(timeout));
        let receipt = receipt_handle.to_string();
        let n = self
            .blocking(move |q| {
                q.with_conn(Commit::Lazy, |conn| {
                    conn.prepare_cached("UPDATE messages SET visible_at = ?2 WHERE receipt = ?1")
                        .and_then(|mut s| s.execute(params![receipt, visible_at]))
                        .map_err(backend)
                })
            })
            .await?;
        if n == 0 {
            return Err(QueueError::InvalidReceipt);
        }
        // A shorter timeout may return the message (and free its group) sooner than receivers planned.
        self.wake.notify_waiters();
        Ok(())
    }

    fn max_receive(&self) -> usize {
        self.config.max_batch
    }
}
