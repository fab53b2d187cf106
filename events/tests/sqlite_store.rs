//! `SqliteEventStore`: the conformance suite, plus what only the embedded store promises
//! (group commit, savepoint isolation inside a group, reopening, decoding damaged rows).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jobledger_events::chain::compute_hash;
use jobledger_events::execute::record;
use jobledger_events::ids::JobId;
use jobledger_events::store::{AppendBatch, ChangeFeed, EventStore, IdempotencyRecord, StoreError};
use jobledger_events::testing::{
    self, StoreHarness, build_history, noop_spec, running_job, test_context, test_time,
};
use jobledger_events::{JobEvent, SqliteEventStore};
use rusqlite::Connection;
use tempfile::TempDir;

/// Fresh stores in one temporary directory; corruption by writing SQL into the file.
struct Sqlite {
    dir: TempDir,
    next: AtomicUsize,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().expect("temp dir"),
            next: AtomicUsize::new(0),
        }
    }

    fn new_path(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("ledger-{n}.db"))
    }
}

/// Runs SQL on the store's file from a separate connection, as a damaged disk or a bad tool would.
fn tamper(store: &SqliteEventStore, sql: &str, job_id: JobId, version: u64) {
    testing::tamper(store.path(), sql, job_id, version);
}

impl StoreHarness<SqliteEventStore> for Sqlite {
    async fn fresh(&self) -> SqliteEventStore {
        SqliteEventStore::open(self.new_path()).expect("open store")
    }

    async fn corrupt(&self, store: &SqliteEventStore, job_id: JobId, version: u64) {
        tamper(
            store,
            "UPDATE events SET data = '{\"attempt\":' WHERE job_id = ?1 AND version = ?2",
            job_id,
            version,
        );
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            testing::$case(&Sqlite::new()).await;
        }
    )*};
}

conformance!(
    load_returns_what_was_appended_field_for_field,
    a_stale_expected_version_is_a_conflict_and_writes_nothing,
    concurrent_appenders_get_one_winner_per_version,
    a_reused_idempotency_key_returns_the_original_claim,
    a_long_history_loads_whole_and_in_order,
    load_job_is_the_fold_of_load,
    a_corrupt_item_is_reported_with_job_and_version,
    the_hash_chain_continues_across_appends,
    an_older_payload_schema_is_upcast_on_read,
    the_feed_is_in_commit_order_and_pages,
    checkpoints_are_kept_per_consumer,
    a_waiter_is_woken_by_a_commit,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_runs_through_its_entry_points() {
    let harness = Sqlite::new();
    testing::run_conformance(&harness).await;
    testing::run_change_feed_conformance(&harness).await;
}

fn submission(job_id: JobId, key: Option<&str>) -> AppendBatch {
    let mut spec = noop_spec(1);
    spec.idempotency_key = key.map(str::to_string);
    let events = record(
        job_id,
        0,
        Default::default(),
        &[JobEvent::JobSubmitted(spec)],
        &test_context("api-key:k"),
    );
    AppendBatch {
        job_id,
        expected_version: 0,
        events,
        idempotency: key.map(|k| IdempotencyRecord {
            key: format!("api-key:k#{k}"),
            job_id,
            fingerprint: format!("fp-{job_id}"),
            created_at: test_time(0),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions_and_a_refused_batch_fails_alone() {
    let harness = Sqlite::new();
    let store = harness.fresh().await;
    let before = store.writer_stats();
    const APPENDERS: usize = 64;
    let start = Arc::new(tokio::sync::Barrier::new(APPENDERS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..APPENDERS {
        let store = store.clone();
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            let job_id = JobId::new();
            // Every 4th batch expects a version the new job does not have; every 8th (offset 1)
            // claims the same idempotency key; the rest are plain submissions.
            let mut batch = submission(job_id, (i % 8 == 1).then_some("shared"));
            if i % 4 == 0 {
                batch.expected_version = 1;
                for e in &mut batch.events {
                    e.version = 2;
                    e.hash = compute_hash(e);
                }
            }
            start.wait().await;
            (i, job_id, store.append(batch).await)
        });
    }
    let mut shared_winner = None;
    let mut shared_refused = Vec::new();
    let mut committed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, job_id, result) = joined.expect("task");
        match (i % 4 == 0, i % 8 == 1, result) {
            (true, _, Err(StoreError::Conflict { .. })) => {
                assert!(
                    store.load(job_id).await.expect("load").is_empty(),
                    "a conflicting batch wrote events"
                );
            }
            (false, true, Ok(())) => {
                assert!(
                    shared_winner.replace(job_id).is_none(),
                    "two batches claimed the same key"
                );
                committed.push(job_id);
            }
            (false, true, Err(StoreError::IdempotencyKeyTaken { existing })) => {
                shared_refused.push((job_id, existing))
            }
            (false, false, Ok(())) => committed.push(job_id),
            (_, _, other) => panic!("batch {i} gave {other:?}"),
        }
    }
    let winner = shared_winner.expect("one claim of the shared key must win");
    assert_eq!(shared_refused.len(), APPENDERS / 8 - 1);
    for (job_id, existing) in shared_refused {
        assert_eq!(
            existing.job_id, winner,
            "the refusal must name the winning claim"
        );
        assert!(
            store.load(job_id).await.expect("load").is_empty(),
            "a refused submission wrote events"
        );
    }
    for job_id in &committed {
        assert_eq!(
            store.load(*job_id).await.expect("load").len(),
            1,
            "an acknowledged batch is missing"
        );
    }
    let stats = store.writer_stats();
    let requests = stats.requests - before.requests;
    let transactions = stats.transactions - before.transactions;
    assert_eq!(requests, APPENDERS as u64);
    assert_eq!(stats.events - before.events, committed.len() as u64);
    assert!(
        transactions < requests / 2,
        "{requests} concurrent appends took {transactions} transactions: commits are not grouped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_has_the_same_history_feed_and_checkpoints() {
    let harness = Sqlite::new();
    let path = harness.new_path();
    let store = SqliteEventStore::open(&path).expect("open");
    let (job_id, history) = running_job(&store).await;
    store.save_checkpoint("projector", 3).await.expect("save");
    let feed = store.read_after(0, 100).await.expect("feed");
    drop(store);

    let store = SqliteEventStore::open(&path).expect("reopen");
    assert_eq!(store.load(job_id).await.expect("load"), history);
    assert_eq!(store.read_after(0, 100).await.expect("feed"), feed);
    assert_eq!(store.checkpoint("projector").await.expect("checkpoint"), 3);
    let (other, _) = running_job(&store).await;
    let more = store
        .read_after(feed[feed.len() - 1].seq, 100)
        .await
        .expect("feed");
    assert_eq!(more.len(), 4, "seq must continue after reopening");
    assert!(more.iter().all(|f| f.event.job_id == other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_damaged_row_is_reported_as_corrupt_not_skipped() {
    let harness = Sqlite::new();
    for (what, sql) in testing::DAMAGED_ROWS {
        let store = harness.fresh().await;
        let (job_id, _) = running_job(&store).await;
        tamper(&store, sql, job_id, 2);
        testing::expect_corrupt_at(what, store.load(job_id).await, job_id, 2);
        // The feed reads the row by `seq`, so it sees a damaged key too; only a version that is no
        // longer a number cannot be named.
        if what != "version not a number" {
            let feed = store.read_after(0, 100).await;
            assert!(
                matches!(
                    &feed,
                    Err(StoreError::Corrupt {
                        version: Some(2),
                        ..
                    })
                ),
                "{what}: the feed gave {feed:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_anywhere_in_a_long_history_is_reported_with_its_version() {
    // Long histories are read in parallel ranges: damage in each range, and a hole at a range
    // boundary, must be named just like in a short history.
    let harness = Sqlite::new();
    for (version, sql) in [
        (
            17,
            "UPDATE events SET data = 'nope' WHERE job_id = ?1 AND version = ?2",
        ),
        (
            2_999,
            "UPDATE events SET envelope = x'00' WHERE job_id = ?1 AND version = ?2",
        ),
        (
            1_500,
            "DELETE FROM events WHERE job_id = ?1 AND version = ?2",
        ),
        (
            1_501,
            "DELETE FROM events WHERE job_id = ?1 AND version = ?2",
        ),
        (
            2_222,
            "UPDATE events SET job_id = x'00' WHERE job_id = ?1 AND version = ?2",
        ),
    ] {
        let store = harness.fresh().await;
        let job_id = JobId::new();
        let history = build_history(job_id, 2_996);
        testing::append_history(&store, &history, 500)
            .await
            .expect("append");
        assert_eq!(store.load(job_id).await.expect("load"), history);
        tamper(&store, sql, job_id, version);
        testing::expect_corrupt_at(sql, store.load(job_id).await, job_id, version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_breaks_version_order_is_refused_whole() {
    let harness = Sqlite::new();
    let store = harness.fresh().await;
    let job_id = JobId::new();
    let mut history = build_history(job_id, 2);
    history[3].version = 9;
    let result = store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: history,
            idempotency: None,
        })
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::Backend {
                retryable: false,
                ..
            })
        ),
        "gave {result:?}"
    );
    assert!(store.load(job_id).await.expect("load").is_empty());
}

#[tokio::test]
async fn a_file_with_a_foreign_events_table_is_refused_not_misread() {
    let harness = Sqlite::new();
    let path = harness.new_path();
    Connection::open(&path)
        .and_then(|c| c.execute_batch("CREATE TABLE events (seq INTEGER PRIMARY KEY, job_id TEXT)"))
        .expect("foreign table");
    let result = SqliteEventStore::open(&path);
    assert!(
        matches!(result, Err(StoreError::Backend { .. })),
        "gave {result:?}"
    );
}
