//! `SqliteNotifyStore` against the notifier state-store conformance cases (the same cases run
//! against `DynamoNotifyStore` on moto in `notify_dynamo.rs`).

mod notify_support;

use jobledger_handlers::notify::SqliteNotifyStore;

#[tokio::test]
async fn the_sqlite_store_keeps_the_notifier_state_promises() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).expect("open");
    notify_support::conformance(&store).await;
}

#[tokio::test]
async fn failure_counts_survive_reopening_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sqlite3");
    let job = jobledger_events::JobId::new();
    {
        let store = SqliteNotifyStore::open(&path).expect("open");
        use jobledger_handlers::notify::FailureCounter;
        assert_eq!(
            store.count_failure("notion", job, 1).await.expect("count"),
            1
        );
    }
    let store = SqliteNotifyStore::open(&path).expect("reopen");
    use jobledger_handlers::notify::FailureCounter;
    assert_eq!(
        store.count_failure("notion", job, 1).await.expect("count"),
        2
    );
}
