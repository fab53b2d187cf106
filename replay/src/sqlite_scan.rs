//! A bulk read of the embedded ledger in key order (job, then version), split into job-id ranges
//! read at once on several threads.
//!
//! The table is `WITHOUT ROWID` keyed `(job_id, version)`, so key order is the b-tree's own order:
//! one sequential walk, each job's events together and in order (a consumer can close a job as
//! soon as the next starts, which keeps memory flat). Reading in feed (`seq`) order instead costs
//! a primary-key lookup per row through the `seq` index, and interleaves jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use jobledger_events::sqlite::{EVENT_ROW_COLUMNS, decode_event_row};
use jobledger_events::{JobId, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::format::{Entry, Pos, sourced};
use crate::source::{BATCH, Feed, SourceError};

/// Job-id ranges per reader thread: enough that a slow thread does not hold the others up.
const RANGES_PER_PART: usize = 8;

fn unavailable(path: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(format!("{}: {e}", path.display()))
}

/// A read-only connection of one reader thread.
fn open(path: &Path) -> Result<Connection, SourceError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unavailable(path, e))?;
    // No memory map: mapped pages count as the process's memory and would grow with the ledger.
    conn.execute_batch("PRAGMA mmap_size = 0; PRAGMA cache_size = -16384;")
        .map_err(|e| unavailable(path, e))?;
    Ok(conn)
}

/// The last feed position (about the number of events), for progress bars.
pub fn extent(path: &Path) -> Result<u64, SourceError> {
    let conn = open(path)?;
    let head: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(|e| unavailable(path, e))?;
    Ok(head.max(0) as u64)
}

/// The smallest or largest job id, when it is a well-formed 16-byte key.
fn end_key(conn: &Connection, path: &Path, order: &str) -> Result<Option<u128>, SourceError> {
    let sql = format!("SELECT job_id FROM events ORDER BY job_id {order} LIMIT 1");
    let mut stmt = conn.prepare(&sql).map_err(|e| unavailable(path, e))?;
    let mut rows = stmt.query([]).map_err(|e| unavailable(path, e))?;
    let row = rows.next().map_err(|e| unavailable(path, e))?;
    Ok(row.and_then(|r| match r.get_ref(0) {
        Ok(ValueRef::Blob(b)) => <[u8; 16]>::try_from(b).ok().map(u128::from_be_bytes),
        _ => None,
    }))
}

/// Boundaries splitting the key space into `n` ranges between the first and last key; the first
/// range has no lower bound and the last no upper bound, so a damaged key (another type or
/// length sorts before or after every well-formed one) still falls in exactly one range.
fn boundaries(first: Option<u128>, last: Option<u128>, n: usize) -> Vec<Option<[u8; 16]>> {
    let (Some(lo), Some(hi)) = (first, last) else {
        return vec![None, None];
    };
    let n = n.max(1) as u128;
    let span = hi.saturating_sub(lo);
    let mut out = vec![None];
    // Uniform steps suit UUID v7 ids; a skewed ledger only makes some ranges longer.
    out.extend((1..n).map(|i| Some((lo + span / n * i).to_be_bytes())));
    out.push(None);
    out.dedup();
    out
}

/// One range's query: rows with `lower <= job_id < upper`, in key order.
fn range_sql(lower: bool, upper: bool) -> String {
    let filter = match (lower, upper) {
        (false, false) => "",
        (true, false) => "WHERE job_id >= ?1",
        (false, true) => "WHERE job_id < ?1",
        (true, true) => "WHERE job_id >= ?1 AND job_id < ?2",
    };
    format!("SELECT {EVENT_ROW_COLUMNS}, job_id, seq FROM events {filter} ORDER BY job_id, version")
}

/// Reads one row as an entry; a damaged row is an [`Entry::Unreadable`] naming what it can.
fn row_entry(row: &rusqlite::Row<'_>, check: bool) -> Result<Entry, SourceError> {
    let seq = match row.get_ref(5) {
        Ok(ValueRef::Integer(s)) => s.max(0) as u64,
        _ => 0,
    };
    let pos = Pos::Seq(seq);
    let job_id = match row.get_ref(4) {
        Ok(ValueRef::Blob(b)) => <[u8; 16]>::try_from(b).ok(),
        _ => None,
    };
    let Some(job_id) = job_id.map(|b| JobId(Uuid::from_bytes(b))) else {
        let version = match row.get_ref(0) {
            Ok(ValueRef::Integer(v)) if v >= 1 => Some(v as u64),
            _ => None,
        };
        return Ok(Entry::Unreadable {
            pos,
            job_id: None,
            version,
            reason: "job_id is not a 16-byte key".into(),
        });
    };
    match decode_event_row(row, job_id) {
        Ok(event) => Ok(Entry::Event(sourced(event, pos, check))),
        Err(StoreError::Corrupt {
            version, reason, ..
        }) => Ok(Entry::Unreadable {
            pos,
            job_id: Some(job_id),
            version,
            reason,
        }),
        Err(e) => Err(e.into()),
    }
}

/// What the reader threads share.
struct Ranges {
    path: PathBuf,
    bounds: Vec<Option<[u8; 16]>>,
    next: AtomicUsize,
    check: bool,
    position: Arc<AtomicU64>,
}

impl Ranges {
    /// Reads ranges until none is left, sending batches; false once the consumer has gone.
    fn read(&self, tx: &mpsc::Sender<Result<Vec<Entry>, SourceError>>) -> Result<(), SourceError> {
        let conn = open(&self.path)?;
        let fail = |e: rusqlite::Error| unavailable(&self.path, e);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i + 1 >= self.bounds.len() {
                return Ok(());
            }
            let (lower, upper) = (self.bounds[i], self.bounds[i + 1]);
            let mut stmt = conn
                .prepare_cached(&range_sql(lower.is_some(), upper.is_some()))
                .map_err(fail)?;
            let keys: Vec<&[u8]> = lower.iter().chain(upper.iter()).map(|k| &k[..]).collect();
            let mut rows = stmt.query(rusqlite::params_from_iter(keys)).map_err(fail)?;
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(row) = rows.next().map_err(fail)? {
                batch.push(row_entry(row, self.check)?);
                if batch.len() == BATCH && !self.send(tx, &mut batch) {
                    return Ok(());
                }
            }
            if !batch.is_empty() && !self.send(tx, &mut batch) {
                return Ok(());
            }
        }
    }

    fn send(
        &self,
        tx: &mpsc::Sender<Result<Vec<Entry>, SourceError>>,
        batch: &mut Vec<Entry>,
    ) -> bool {
        self.position
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
        tx.blocking_send(Ok(full)).is_ok()
    }
}

/// Every row of the ledger at `path`, split over at most `parts` feeds read at once. Each feed
/// holds whole jobs, in key order; one part reads the whole table in key order (job id order).
/// `position` counts the rows read.
pub fn scan_parts(
    path: &Path,
    check: bool,
    parts: usize,
    position: Arc<AtomicU64>,
) -> Result<Vec<Feed>, SourceError> {
    let conn = open(path)?;
    let parts = parts.max(1);
    let bounds = if parts == 1 {
        vec![None, None]
    } else {
        let first = end_key(&conn, path, "ASC")?;
        let last = end_key(&conn, path, "DESC")?;
        boundaries(first, last, parts * RANGES_PER_PART)
    };
    drop(conn);
    let ranges = Arc::new(Ranges {
        path: path.to_path_buf(),
        bounds,
        next: AtomicUsize::new(0),
        check,
        position,
    });
    let mut feeds = Vec::with_capacity(parts);
    for i in 0..parts {
        let (tx, rx) = mpsc::channel(4);
        let ranges = Arc::clone(&ranges);
        std::thread::Builder::new()
            .name(format!("replay-sqlite-{i}"))
            .spawn(move || {
                if let Err(e) = ranges.read(&tx) {
                    let _ = tx.blocking_send(Err(e));
                }
            })
            .map_err(|e| unavailable(path, e))?;
        feeds.push(rx);
    }
    Ok(feeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_cover_the_key_space_once_with_open_ends() {
        let b = boundaries(Some(100), Some(900), 4);
        assert_eq!(b.first(), Some(&None));
        assert_eq!(b.last(), Some(&None));
        let inner: Vec<u128> = b[1..b.len() - 1]
            .iter()
            .map(|k| u128::from_be_bytes(k.expect("inner bounds are keys")))
            .collect();
        assert_eq!(inner, vec![300, 500, 700]);
        assert_eq!(boundaries(None, Some(5), 4), vec![None, None]);
        // One job only: a single open range.
        assert_eq!(boundaries(Some(7), Some(7), 4).len(), 3);
    }
}
