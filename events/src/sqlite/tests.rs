//! What only the SQLite store does: `load_job` reading rows in place, requests that write with a
//! single statement committing without a savepoint, and the writer's counters.

use std::sync::Arc;

use rusqlite::Connection;

use super::SqliteEventStore;
use crate::ids::JobId;
use crate::store::{AppendBatch, EventStore, StoreError};
use crate::testing::{
    self, DAMAGED_ROWS, append_history, build_history, expect_corrupt_at, running_job,
};

fn fresh() -> (tempfile::TempDir, SqliteEventStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("ledger.db")).expect("open");
    (dir, store)
}

fn tamper(store: &SqliteEventStore, sql: &str, job_id: JobId, version: u64) {
    testing::tamper(store.path(), sql, job_id, version);
}

/// Well-formed JSON that is not the event's payload: `load_job` decodes it, so it must say so.
const WRONG_SHAPE: (&str, &str) = (
    "payload is JSON of the wrong shape",
    "UPDATE events SET data = '{\"attempt\":\"one\"}' WHERE job_id = ?1 AND version = ?2",
);

/// The damage of `what` in [`DAMAGED_ROWS`].
fn damage(what: &str) -> &'static str {
    DAMAGED_ROWS
        .iter()
        .find(|(w, _)| *w == what)
        .map(|(_, sql)| *sql)
        .unwrap_or_else(|| panic!("no damage named {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_job_reports_every_kind_of_damaged_row_with_its_version() {
    for (what, sql) in DAMAGED_ROWS.into_iter().chain([WRONG_SHAPE]) {
        let (_dir, store) = fresh();
        let (job_id, _) = running_job(&store).await;
        tamper(&store, sql, job_id, 2);
        expect_corrupt_at(what, store.load_job(job_id).await, job_id, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_job_reports_damage_in_each_range_of_a_long_history() {
    // 3,000 events are read as two ranges at once: damage in either, and a hole at the boundary
    // or at the very end, must be named like in a short history.
    for (version, sql) in [
        (17, damage("payload is cut off")),
        (2_999, damage("envelope truncated")),
        (1_501, damage("job id damaged")),
        (1_500, damage("version not a number")),
        (3_000, WRONG_SHAPE.1),
    ] {
        let (_dir, store) = fresh();
        let job_id = JobId::new();
        let history = build_history(job_id, 2_996);
        append_history(&store, &history, 500).await.expect("append");
        tamper(&store, sql, job_id, version);
        expect_corrupt_at(sql, store.load_job(job_id).await, job_id, version);
    }
}

/// Makes every insert of `(job_id, version)` fail inside SQLite, the way a full disk or a
/// violated constraint fails one statement.
fn doom(store: &SqliteEventStore, job_id: JobId, version: u64) {
    let conn = Connection::open(store.path()).expect("open");
    conn.execute_batch(&format!(
        "CREATE TRIGGER doom_{} BEFORE INSERT ON events WHEN NEW.job_id = x'{}' AND NEW.version = {version} BEGIN SELECT RAISE(ABORT, 'doomed'); END;",
        job_id.as_uuid().simple(),
        hex::encode(job_id.as_uuid().as_bytes()),
    ))
    .expect("create trigger");
}

fn first_events(job_id: JobId, n: usize) -> AppendBatch {
    let mut events = build_history(job_id, 0);
    events.truncate(n);
    AppendBatch {
        job_id,
        expected_version: 0,
        events,
        idempotency: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_insert_fails_is_undone_alone_and_its_group_commits() {
    let (_dir, store) = fresh();
    // A single-event append is one statement (no savepoint); a two-event one needs a savepoint.
    let single = JobId::new();
    let double = JobId::new();
    doom(&store, single, 1);
    doom(&store, double, 2);
    const OTHERS: usize = 30;
    let start = Arc::new(tokio::sync::Barrier::new(OTHERS + 2));
    let mut tasks = tokio::task::JoinSet::new();
    let batches = [(single, 1), (double, 2)]
        .into_iter()
        .chain((0..OTHERS).map(|i| (JobId::new(), 1 + i % 2)));
    let before = store.writer_stats();
    for (job_id, n) in batches {
        let (store, start) = (store.clone(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            (job_id, n, store.append(first_events(job_id, n)).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (job_id, n, result) = joined.expect("task");
        let stored = store.load(job_id).await.expect("load").len();
        if job_id == single || job_id == double {
            assert!(
                matches!(result, Err(StoreError::Backend { .. })),
                "a doomed append gave {result:?}"
            );
            assert_eq!(stored, 0, "a failed append left events behind");
        } else {
            result.expect("an append next to a failing one must commit");
            assert_eq!(stored, n, "an acknowledged append is missing events");
        }
    }
    let stats = store.writer_stats();
    assert_eq!(
        stats.events - before.events,
        45,
        "30 appends of 1 or 2 events"
    );
    assert!(
        stats.transactions - before.transactions < 32,
        "the appends were not grouped, so no failure shared a group"
    );
    // Nothing of the failed single-event append was kept: its version 1 is still free.
    let conn = Connection::open(store.path()).expect("open");
    conn.execute_batch(&format!("DROP TRIGGER doom_{}", single.as_uuid().simple()))
        .expect("drop trigger");
    store
        .append(first_events(single, 1))
        .await
        .expect("version 1 is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_counts_the_time_its_commits_take() {
    let (_dir, store) = fresh();
    assert_eq!(store.writer_stats().commit_time, std::time::Duration::ZERO);
    running_job(&store).await;
    let stats = store.writer_stats();
    assert_eq!(stats.transactions, 4);
    assert!(stats.commit_time > std::time::Duration::ZERO);
}
