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

use chrono::{DateTime, Utc};
use jobledger_events::sqlite::{EVENT_ROW_COLUMNS, decode_event_row};
use jobledger_events::{EventHead, JobId, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::format::{Entry, EventItem, Item, Pos, sourced};
use crate::source::{BATCH, Feed, SourceError, Visit, spawn};

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
    // A small cache: a scan reads each page once, in order.
    conn.execute_batch("PRAGMA mmap_size = 0; PRAGMA cache_size = -2048;")
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

/// Checks that `path` holds a jobledger ledger (the `events` table), without writing to it.
pub fn check_ledger(path: &Path) -> Result<(), SourceError> {
    check_schema(&open(path)?, path)
}

/// Whether the jobledger ledger at `path` holds any event (an error names a file that is not a
/// ledger); never writes to it.
pub fn holds_events(path: &Path) -> Result<bool, SourceError> {
    let conn = open(path)?;
    check_schema(&conn, path)?;
    conn.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))
        .map_err(|e| unavailable(path, e))
}

fn check_schema(conn: &Connection, path: &Path) -> Result<(), SourceError> {
    // Preparing reads the schema: it fails when the file is not a database or has no events.
    conn.prepare(&format!(
        "SELECT {EVENT_ROW_COLUMNS}, job_id, seq FROM events LIMIT 0"
    ))
    .map(drop)
    .map_err(|e| {
        SourceError::Unavailable(format!("{} is not a jobledger ledger: {e}", path.display()))
    })
}

/// One job's rows in version order, each an entry (a damaged row is named, not skipped).
pub fn job_entries(path: &Path, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
    let conn = open(path)?;
    let sql = format!(
        "SELECT {EVENT_ROW_COLUMNS}, job_id, seq FROM events WHERE job_id = ?1 ORDER BY version"
    );
    let mut stmt = conn.prepare(&sql).map_err(|e| unavailable(path, e))?;
    let mut rows = stmt
        .query([job_id.0.as_bytes().as_slice()])
        .map_err(|e| unavailable(path, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| unavailable(path, e))? {
        out.push(row_entry(row, check)?);
    }
    Ok(out)
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

/// Reads a row as an item without copying anything, when it is whole and its payload decodes
/// (folds only: no chain check); `None` sends the caller to [`row_entry`], which says what is wrong.
///
/// Accepts exactly the rows `decode_event_row` reads, and reads them the same way (the tests
/// compare both on every row and on damaged ones); the `envelope` layout is the store's.
fn row_item<'r>(row: &'r rusqlite::Row<'_>, pos: Pos) -> Option<EventItem<'r>> {
    let (ValueRef::Integer(version), ValueRef::Text(event_type), ValueRef::Text(data)) = (
        row.get_ref(0).ok()?,
        row.get_ref(1).ok()?,
        row.get_ref(2).ok()?,
    ) else {
        return None;
    };
    let (ValueRef::Blob(envelope), ValueRef::Blob(job_id)) =
        (row.get_ref(3).ok()?, row.get_ref(4).ok()?)
    else {
        return None;
    };
    let job_id = JobId(Uuid::from_bytes(<[u8; 16]>::try_from(job_id).ok()?));
    let event_type = std::str::from_utf8(event_type).ok()?;
    let (at, schema) = envelope_time_and_schema(envelope)?;
    // The store keeps `data` without surrounding whitespace, which decoding skips anyway: the
    // whole text decodes exactly when the general path's `RawValue` would, to the same event.
    let data = std::str::from_utf8(data).ok()?;
    let event = jobledger_events::upcast::decode(event_type, schema, data).ok()?;
    let head = EventHead {
        job_id,
        version: u64::try_from(version).ok().filter(|&v| v >= 1)?,
        event_type,
        at,
    };
    Some(EventItem::decoded(head, pos, None, event))
}

/// The time and schema of a well-formed `envelope` record (format 1: event id, prev hash, hash,
/// time, schema, actor, correlation id, causation id, nothing after).
fn envelope_time_and_schema(envelope: &[u8]) -> Option<(DateTime<Utc>, u32)> {
    let (head, mut rest) = envelope.split_first_chunk::<93>()?;
    if head[0] != 1 {
        return None;
    }
    let micros = i64::from_le_bytes(head[81..89].try_into().ok()?);
    let schema = u32::from_le_bytes(head[89..93].try_into().ok()?);
    let at = DateTime::<Utc>::from_timestamp_micros(micros)?;
    fn text(rest: &mut &[u8]) -> Option<()> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let bytes = tail.get(..len)?;
        std::str::from_utf8(bytes).ok()?;
        *rest = &tail[len..];
        Some(())
    }
    fn id(rest: &mut &[u8]) -> Option<()> {
        let (&tag, tail) = rest.split_first()?;
        *rest = tail;
        match tag {
            0 => {
                *rest = rest.get(16..)?;
                Some(())
            }
            1 => text(rest),
            _ => None,
        }
    }
    text(&mut rest)?;
    id(&mut rest)?;
    id(&mut rest)?;
    rest.is_empty().then_some((at, schema))
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
    /// Walks ranges until none is left, calling `on_row` on each row in key order; stops early
    /// when it returns false. Counts the rows read into `position`, a batch at a time.
    fn each_row(
        &self,
        mut on_row: impl FnMut(&rusqlite::Row<'_>) -> Result<bool, SourceError>,
    ) -> Result<(), SourceError> {
        let conn = open(&self.path)?;
        let fail = |e: rusqlite::Error| unavailable(&self.path, e);
        let mut uncounted = 0u64;
        let result = (|| loop {
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
            while let Some(row) = rows.next().map_err(fail)? {
                uncounted += 1;
                if uncounted == BATCH as u64 {
                    self.position.fetch_add(uncounted, Ordering::Relaxed);
                    uncounted = 0;
                }
                if !on_row(row)? {
                    return Ok(());
                }
            }
        })();
        self.position.fetch_add(uncounted, Ordering::Relaxed);
        result
    }

    /// Reads ranges until none is left, sending batches; stops once the consumer has gone.
    fn read(&self, tx: &mpsc::Sender<Result<Vec<Entry>, SourceError>>) -> Result<(), SourceError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut open = true;
        self.each_row(|row| {
            batch.push(row_entry(row, self.check)?);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                open = tx.blocking_send(Ok(full)).is_ok();
            }
            Ok(open)
        })?;
        if open && !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    }

    /// Reads ranges until none is left, handing each row to `f` as an item, read in place when
    /// it can be (folds) and through [`row_entry`] otherwise.
    fn visit<T>(&self, state: &mut T, f: &impl Fn(&mut T, Item<'_>)) -> Result<(), SourceError> {
        self.each_row(|row| {
            let pos = Pos::Seq(match row.get_ref(5) {
                Ok(ValueRef::Integer(s)) => s.max(0) as u64,
                _ => 0,
            });
            match (!self.check).then(|| row_item(row, pos)).flatten() {
                Some(item) => f(state, Item::Event(item)),
                None => f(state, row_entry(row, self.check)?.item()),
            }
            Ok(true)
        })
    }
}

/// The ranges a scan in `parts` parts walks, shared by its reader threads.
fn ranges(
    path: &Path,
    check: bool,
    parts: usize,
    position: Arc<AtomicU64>,
) -> Result<Arc<Ranges>, SourceError> {
    let conn = open(path)?;
    let bounds = if parts <= 1 {
        vec![None, None]
    } else {
        let first = end_key(&conn, path, "ASC")?;
        let last = end_key(&conn, path, "DESC")?;
        boundaries(first, last, parts * RANGES_PER_PART)
    };
    Ok(Arc::new(Ranges {
        path: path.to_path_buf(),
        bounds,
        next: AtomicUsize::new(0),
        check,
        position,
    }))
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
    let ranges = ranges(path, check, parts, position)?;
    let mut feeds = Vec::with_capacity(parts.max(1));
    for i in 0..parts.max(1) {
        let (tx, rx) = mpsc::channel(4);
        let ranges = Arc::clone(&ranges);
        spawn(format!("replay-sqlite-{i}"), move || {
            if let Err(e) = ranges.read(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
            Ok(())
        })?;
        feeds.push(rx);
    }
    Ok(feeds)
}

/// Every row of the ledger at `path` handed to `f` on at most `parts` reader threads, each with
/// its own state and whole jobs in key order (see `HistorySource::visit_parts`).
pub fn visit_parts<T, M, F>(
    path: &Path,
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
    let ranges = ranges(path, check, parts, position)?;
    let f = Arc::new(f);
    let mut handles = Vec::with_capacity(parts.max(1));
    for i in 0..parts.max(1) {
        let (ranges, f, mut state) = (Arc::clone(&ranges), Arc::clone(&f), make());
        handles.push(spawn(format!("replay-sqlite-{i}"), move || {
            ranges.visit(&mut state, &*f)?;
            Ok(state)
        })?);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Rng, Synth};
    use rusqlite::types::Value;

    /// The rows of a ledger of `jobs` generated jobs, as `range_sql` selects them.
    async fn ledger_rows(jobs: usize) -> Vec<Vec<Value>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a.jsonl");
        let mut w = crate::format::ExportWriter::create(&file).expect("create");
        let mut synth = Synth::new(9);
        for _ in 0..jobs {
            w.write_job(&synth.job()).expect("write");
        }
        w.finish().expect("finish");
        let ledger = dir.path().join("ledger.sqlite3");
        crate::transfer::import(&file, &ledger, true, false)
            .await
            .expect("import");
        let conn = open(&ledger).expect("open");
        let mut stmt = conn.prepare(&range_sql(false, false)).expect("prepare");
        let rows = stmt
            .query_map([], |r| (0..6).map(|i| r.get::<_, Value>(i)).collect())
            .expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    /// Both readers on one row: `row_item` reads it exactly when `row_entry` reads an event
    /// whose payload decodes, and reads the same. Returns whether `row_item` read it.
    fn compare(conn: &Connection, row: &[Value], text: bool) -> bool {
        conn.execute("DELETE FROM t", []).expect("clear");
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params_from_iter(row),
        )
        .expect("insert");
        if text {
            // Bytes that are not UTF-8, stored as text all the same.
            conn.execute_batch(
                "UPDATE t SET type = CAST(type AS TEXT) WHERE typeof(type) = 'blob';
                 UPDATE t SET data = CAST(data AS TEXT) WHERE typeof(data) = 'blob';",
            )
            .expect("cast");
        }
        let mut stmt = conn
            .prepare("SELECT version, type, data, envelope, job_id, seq FROM t")
            .expect("prepare");
        let mut rows = stmt.query([]).expect("query");
        let r = rows.next().expect("step").expect("a row");
        let pos = Pos::Seq(1);
        let entry = row_entry(r, false).expect("no backend error");
        let general = match &entry {
            Entry::Event(e) => e.event.decode().ok().map(|ev| (e.event.head(), ev)),
            _ => None,
        };
        let fast = row_item(r, pos).map(|item| (item.head, item.decode().expect("decoded")));
        assert_eq!(fast, general, "{row:?}");
        fast.is_some()
    }

    #[tokio::test]
    async fn a_row_is_read_in_place_exactly_as_the_general_path_reads_it() {
        let rows = ledger_rows(40).await;
        let conn = Connection::open_in_memory().expect("memory");
        conn.execute_batch("CREATE TABLE t (version, type, data, envelope, job_id, seq)")
            .expect("table");
        for row in &rows {
            assert!(
                compare(&conn, row, false),
                "a clean row takes the fast path"
            );
        }
        let mut rng = Rng::new(5);
        let (mut read, mut refused) = (0, 0);
        for _ in 0..5_000 {
            let mut row = rows[rng.below(rows.len() as u64) as usize].clone();
            let column = rng.below(5) as usize;
            row[column] = match std::mem::replace(&mut row[column], Value::Null) {
                Value::Blob(mut b) => {
                    damage(&mut b, &mut rng);
                    Value::Blob(b)
                }
                Value::Text(t) => {
                    let mut b = t.into_bytes();
                    damage(&mut b, &mut rng);
                    match String::from_utf8(b) {
                        Ok(t) => Value::Text(t),
                        Err(e) => Value::Blob(e.into_bytes()),
                    }
                }
                Value::Integer(v) => match rng.below(3) {
                    0 => Value::Integer(v ^ (1 << rng.below(63))),
                    1 => Value::Integer(-v),
                    _ => Value::Text(v.to_string()),
                },
                other => other,
            };
            if compare(&conn, &row, rng.below(2) == 0) {
                read += 1;
            } else {
                refused += 1;
            }
        }
        assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
    }

    /// Flips, cuts or lengthens bytes.
    fn damage(b: &mut Vec<u8>, rng: &mut Rng) {
        if b.is_empty() {
            b.push(b'{');
            return;
        }
        let i = rng.below(b.len() as u64) as usize;
        match rng.below(4) {
            0 => b.truncate(i),
            1 => b.insert(i, rng.below(256) as u8),
            2 => {
                b[i] = b"{}[]\",:0123456789 "
                    .get(rng.below(20) as usize)
                    .copied()
                    .unwrap_or(b'x')
            }
            _ => b[i] ^= 1 << rng.below(8),
        }
    }

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
