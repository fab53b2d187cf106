//! `SqliteViewStore`: the version guard, listing with cursors, scans, stats.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::{DateTime, Duration, TimeZone, Utc};
use jobledger_events::{JobId, JobKind, RecordedEvent, Status};
use jobledger_projections::{
    JobView, ListQuery, Period, SqliteViewStore, Stats, ViewError, ViewStore,
};

fn template() -> JobView {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/succeeded_first_attempt.jsonl");
    let events: Vec<RecordedEvent> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    JobView::fold(&events).unwrap().unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap()
}

fn view(status: Status, kind: JobKind, updated_s: i64, version: u64) -> JobView {
    let mut v = template();
    v.job_id = JobId::new();
    v.status = status;
    v.kind = kind;
    v.created_at = t0();
    v.updated_at = t0() + Duration::seconds(updated_s);
    v.last_version = version;
    v
}

fn open() -> (tempfile::TempDir, SqliteViewStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
    (dir, store)
}

async fn list_all(store: &SqliteViewStore, mut q: ListQuery) -> Vec<Vec<JobView>> {
    let mut pages = Vec::new();
    loop {
        let page = store.list(&q).await.unwrap();
        pages.push(page.jobs);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn an_older_or_equal_version_never_overwrites_a_newer_view() {
    let (_dir, store) = open();
    let v3 = view(Status::Running, JobKind::Noop, 30, 3);
    assert!(store.upsert(&v3).await.unwrap());
    assert_eq!(store.get(v3.job_id).await.unwrap(), Some(v3.clone()));

    let mut duplicate = v3.clone();
    duplicate.progress.done = 99;
    assert!(!store.upsert(&duplicate).await.unwrap());
    let mut late = v3.clone();
    late.last_version = 2;
    late.status = Status::Launching;
    assert!(!store.upsert(&late).await.unwrap());
    assert_eq!(store.get(v3.job_id).await.unwrap(), Some(v3.clone()));

    let mut v4 = v3.clone();
    v4.last_version = 4;
    v4.status = Status::Succeeded;
    assert!(store.upsert(&v4).await.unwrap());
    assert_eq!(store.get(v3.job_id).await.unwrap(), Some(v4.clone()));
    // The indexed status column moved with the view.
    let q = ListQuery {
        status: Some(Status::Running),
        limit: 10,
        ..ListQuery::default()
    };
    assert!(store.list(&q).await.unwrap().jobs.is_empty());

    assert_eq!(store.get(JobId::new()).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_writers_leave_the_highest_version() {
    let (_dir, store) = open();
    let base = view(Status::Running, JobKind::Noop, 0, 1);
    let mut tasks = Vec::new();
    for version in [5u64, 2, 9, 1, 7, 3, 8, 4, 6] {
        let store = store.clone();
        let mut v = base.clone();
        v.last_version = version;
        tasks.push(tokio::spawn(async move { store.upsert(&v).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.get(base.job_id).await.unwrap().unwrap().last_version,
        9
    );
}

#[tokio::test]
async fn listing_by_status_pages_newest_first_without_gaps_or_repeats() {
    let (_dir, store) = open();
    let mut running = Vec::new();
    for i in 0..23 {
        // Every third job shares an updated_at with its neighbour, to exercise the job_id tie-break.
        let v = view(Status::Running, JobKind::ImageAlt, i / 3 * 3, 4);
        store.upsert(&v).await.unwrap();
        running.push(v);
        let other = view(Status::Queued, JobKind::ImageAlt, i, 2);
        store.upsert(&other).await.unwrap();
    }
    let q = ListQuery {
        status: Some(Status::Running),
        kind: None,
        limit: 10,
        cursor: None,
    };
    let pages = list_all(&store, q).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 3]
    );
    let listed: Vec<JobView> = pages.into_iter().flatten().collect();
    running.sort_by_key(|v| std::cmp::Reverse((v.updated_at, v.job_id)));
    assert_eq!(listed, running);
}

#[tokio::test]
async fn a_cursor_stays_valid_while_new_jobs_arrive() {
    let (_dir, store) = open();
    let mut seen = HashSet::new();
    let mut expected = HashSet::new();
    for i in 0..12 {
        let v = view(Status::Submitted, JobKind::Noop, i, 1);
        expected.insert(v.job_id);
        store.upsert(&v).await.unwrap();
    }
    let mut q = ListQuery {
        status: Some(Status::Submitted),
        limit: 5,
        ..ListQuery::default()
    };
    let first = store.list(&q).await.unwrap();
    seen.extend(first.jobs.iter().map(|v| v.job_id));
    // Newer jobs arrive between pages: they belong before the cursor, so later pages do not show them.
    for i in 100..105 {
        store
            .upsert(&view(Status::Submitted, JobKind::Noop, i, 1))
            .await
            .unwrap();
    }
    q.cursor = first.next_cursor;
    let rest: Vec<JobView> = list_all(&store, q).await.into_iter().flatten().collect();
    for v in &rest {
        assert!(seen.insert(v.job_id), "{} listed twice", v.job_id);
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn listing_filters_by_kind_and_status_together() {
    let (_dir, store) = open();
    let wanted = view(Status::Failed, JobKind::MetaDescription, 5, 3);
    store.upsert(&wanted).await.unwrap();
    store
        .upsert(&view(Status::Failed, JobKind::ImageAlt, 6, 3))
        .await
        .unwrap();
    store
        .upsert(&view(Status::Running, JobKind::MetaDescription, 7, 3))
        .await
        .unwrap();
    let q = ListQuery {
        status: Some(Status::Failed),
        kind: Some(JobKind::MetaDescription),
        limit: 50,
        cursor: None,
    };
    let page = store.list(&q).await.unwrap();
    assert_eq!(page.jobs, vec![wanted]);
    assert_eq!(page.next_cursor, None);
    let everything = ListQuery {
        limit: 0, // clamped to 1
        ..ListQuery::default()
    };
    let pages = list_all(&store, everything).await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0][0].updated_at, t0() + Duration::seconds(7));
}

#[tokio::test]
async fn a_forged_cursor_is_refused() {
    let (_dir, store) = open();
    for cursor in [
        "",
        "abc",
        "c1.12.not-a-uuid",
        "c2.1.0194",
        "c1.x.01946a5c3e0070008000000000000001",
    ] {
        let q = ListQuery {
            limit: 10,
            cursor: Some(cursor.to_string()),
            ..ListQuery::default()
        };
        assert!(
            matches!(store.list(&q).await, Err(ViewError::BadCursor(_))),
            "{cursor:?}"
        );
    }
}

#[tokio::test]
async fn scan_walks_every_view_in_job_id_order_and_clear_empties_the_store() {
    let (dir, store) = open();
    let views: Vec<JobView> = (0..1003)
        .map(|i| view(Status::Succeeded, JobKind::Noop, i, 7))
        .collect();
    let mut ids: Vec<JobId> = views.iter().map(|v| v.job_id).collect();
    assert_eq!(store.upsert_many(&views).await.unwrap(), 1003);
    // The same batch again is all duplicates; one newer view among them is written.
    let mut again = views.clone();
    again[10].last_version = 8;
    assert_eq!(store.upsert_many(&again).await.unwrap(), 1);
    ids.sort();
    let all = store.all().await.unwrap();
    assert_eq!(all.iter().map(|v| v.job_id).collect::<Vec<_>>(), ids);
    let second = store.scan(Some(ids[0]), 2).await.unwrap();
    assert_eq!(
        second.iter().map(|v| v.job_id).collect::<Vec<_>>(),
        ids[1..3].to_vec()
    );

    // Reopening the file finds the same views.
    let reopened = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
    assert_eq!(reopened.all().await.unwrap().len(), 1003);

    let stats = Stats::from_views(&all, Period::ALL);
    store.save_stats(&stats).await.unwrap();
    store.clear().await.unwrap();
    assert!(store.all().await.unwrap().is_empty());
    assert_eq!(store.load_stats().await.unwrap(), None);
}

#[tokio::test]
async fn saved_stats_are_loaded_back_and_replaced_by_newer_ones() {
    let (_dir, store) = open();
    assert_eq!(store.load_stats().await.unwrap(), None);
    let views = vec![
        view(Status::Succeeded, JobKind::Noop, 90, 7),
        view(Status::Failed, JobKind::ImageAlt, 30, 4),
    ];
    let stats = Stats::from_views(&views, Period::ALL);
    assert_eq!(stats.jobs, 2);
    store.save_stats(&stats).await.unwrap();
    assert_eq!(store.load_stats().await.unwrap(), Some(stats));
    let fewer = Stats::from_views(&views[..1], Period::ALL);
    store.save_stats(&fewer).await.unwrap();
    assert_eq!(store.load_stats().await.unwrap(), Some(fewer));
}

/// The writer never checkpoints (that would stall its commits): the store's own thread copies the
/// WAL back into the database while the store is open, and every view still reads back.
#[tokio::test]
async fn commits_are_checkpointed_into_the_database_while_the_store_is_open() {
    let (dir, store) = open();
    let db = dir.path().join("views.sqlite");
    let views: Vec<JobView> = (0..2_000)
        .map(|i| view(Status::Running, JobKind::ImageAlt, i, 3))
        .collect();
    for chunk in views.chunks(500) {
        assert_eq!(store.upsert_many(chunk).await.unwrap(), chunk.len());
    }
    // ~2.5 MB of views: below SQLite's own automatic threshold (1,000 pages), so only the
    // checkpointer can have moved them into the main file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let size = std::fs::metadata(&db).unwrap().len();
        if size > 1_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "main database file is still {size} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for v in views.iter().step_by(97) {
        assert_eq!(store.get(v.job_id).await.unwrap().as_ref(), Some(v));
    }
}

fn page_size(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_new_store_uses_16_kib_pages_and_an_older_4_kib_store_keeps_working() {
    let (dir, store) = open();
    let v = view(Status::Running, JobKind::ImageAlt, 1, 3);
    assert!(store.upsert(&v).await.unwrap());
    assert_eq!(page_size(&dir.path().join("views.sqlite")), 16_384);

    // A store made before the page size changed: opened as it is, never rewritten.
    let older = dir.path().join("older.sqlite");
    rusqlite::Connection::open(&older)
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (a);")
        .unwrap();
    let store = SqliteViewStore::open(&older).unwrap();
    let views: Vec<JobView> = (0..50)
        .map(|i| view(Status::Succeeded, JobKind::MetaDescription, i, 6))
        .collect();
    assert_eq!(store.upsert_many(&views).await.unwrap(), 50);
    drop(store);
    let store = SqliteViewStore::open(&older).unwrap();
    assert_eq!(
        store.get(views[7].job_id).await.unwrap().as_ref(),
        Some(&views[7])
    );
    assert_eq!(page_size(&older), 4096);
}
