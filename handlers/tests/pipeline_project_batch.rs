//! The local projector's batch core, `project_batch`: events folded in feed order into cached
//! views and written once per batch, duplicates and stale events ignored, the bounded cache, and
//! what a failing view store leaves acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{Duration, TimeZone, Utc};
use jobledger_events::event::Capacity;
use jobledger_events::testing::noop_spec;
use jobledger_events::{
    Command, CommandContext, EventStore, JobId, RecordedEvent, SqliteEventStore, execute,
};
use jobledger_handlers::project::{ProjectError, ProjectorCache, project_batch};
use jobledger_projections::testing::{ViewCall, WatchedViews};
use jobledger_projections::{JobView, SqliteViewStore, ViewError, ViewStore};

/// The SQLite view store, its writes and reads shown to the test's hook.
type Views = WatchedViews<SqliteViewStore>;

struct Env {
    _dir: tempfile::TempDir,
    store: SqliteEventStore,
    views: Views,
    /// Writes fail while this is set.
    failing: Arc<AtomicBool>,
    /// Batch writes that went through (a single upsert counts as one).
    batches: Arc<AtomicUsize>,
    /// Views read.
    reads: Arc<AtomicUsize>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("events.sqlite")).expect("ledger");
    let inner = SqliteViewStore::open(dir.path().join("views.sqlite")).expect("views");
    let (failing, batches, reads) = (Arc::default(), Arc::default(), Arc::default());
    let views = {
        let (failing, batches, reads): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) = (
            Arc::clone(&failing),
            Arc::clone(&batches),
            Arc::clone(&reads),
        );
        WatchedViews::new(inner, move |call| {
            match call {
                ViewCall::Get(_) => {
                    reads.fetch_add(1, Ordering::SeqCst);
                }
                ViewCall::Upsert(_) | ViewCall::UpsertMany(_) => {
                    if failing.load(Ordering::SeqCst) {
                        return Err(ViewError::backend(true, "disk I/O error"));
                    }
                    batches.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(())
        })
    };
    Env {
        _dir: dir,
        store,
        views,
        failing,
        batches,
        reads,
    }
}

/// Records a job through submit → queued → launched → started → succeeded; returns its history.
async fn record_job(store: &SqliteEventStore) -> Vec<RecordedEvent> {
    let job_id = JobId::new();
    let t0 = Utc
        .with_ymd_and_hms(2025, 2, 1, 10, 0, 0)
        .single()
        .expect("time");
    let commands = [
        Command::Submit(noop_spec(1)),
        Command::MarkQueued {
            attempt: 1,
            message_id: "m".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "local:1".into(),
            capacity: Capacity::Local,
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "w".into(),
        },
        Command::Succeed {
            attempt: 1,
            result_uri: "file:///results/1.jsonl".into(),
            result_sha256: "0".repeat(64),
            items_ok: 1,
            items_failed: 0,
            usage: Default::default(),
        },
    ];
    for (i, cmd) in commands.iter().enumerate() {
        let ctx = CommandContext::new("test", t0 + Duration::seconds(i as i64));
        execute(store, job_id, cmd, &ctx).await.expect("command");
    }
    store.load(job_id).await.expect("load")
}

/// `n` jobs' histories, and their events interleaved as a change feed delivers them.
async fn jobs(store: &SqliteEventStore, n: usize) -> (Vec<Vec<RecordedEvent>>, Vec<RecordedEvent>) {
    let mut histories = Vec::new();
    for _ in 0..n {
        histories.push(record_job(store).await);
    }
    let mut feed = Vec::new();
    for version in 0..5 {
        for history in &histories {
            feed.push(history[version].clone());
        }
    }
    (histories, feed)
}

async fn assert_views_fold(views: &Views, histories: &[Vec<RecordedEvent>]) {
    for history in histories {
        assert_eq!(
            views.inner().get(history[0].job_id).await.expect("get"),
            JobView::fold(history).expect("fold"),
            "job {}",
            history[0].job_id
        );
    }
}

#[tokio::test]
async fn several_events_of_one_job_in_one_batch_fold_in_order_and_are_written_once() {
    let env = env();
    let history = record_job(&env.store).await;
    let mut cache = ProjectorCache::default();

    let report = project_batch(&env.store, &env.views, &mut cache, &history).await;

    assert!(report.is_complete(), "{:?}", report.error);
    assert_eq!(report.succeeded, 5);
    assert_views_fold(&env.views, std::slice::from_ref(&history)).await;
    assert_eq!(env.batches.load(Ordering::SeqCst), 1, "one write per batch");
    assert_eq!(
        env.reads.load(Ordering::SeqCst),
        0,
        "a view that starts in the batch is not read"
    );
    assert!(cache.is_empty(), "a finished job leaves the cache");
}

#[tokio::test]
async fn interleaved_events_of_many_jobs_build_every_view_and_the_cache_saves_reads() {
    let env = env();
    let (histories, feed) = jobs(&env.store, 20).await;
    let mut cache = ProjectorCache::default();

    for batch in feed.chunks(7) {
        let report = project_batch(&env.store, &env.views, &mut cache, batch).await;
        assert!(report.is_complete(), "{:?}", report.error);
    }

    assert_views_fold(&env.views, &histories).await;
    assert_eq!(
        env.reads.load(Ordering::SeqCst),
        0,
        "a new job's view starts from its first event; later batches use the cache"
    );
    assert!(cache.is_empty(), "finished jobs leave the cache");
}

#[tokio::test]
async fn duplicate_and_stale_events_change_nothing_and_write_nothing() {
    let env = env();
    let history = record_job(&env.store).await;
    let mut cache = ProjectorCache::default();
    let report = project_batch(&env.store, &env.views, &mut cache, &history[..4]).await;
    assert!(report.is_complete());
    let before = env.batches.load(Ordering::SeqCst);

    let late = [history[2].clone(), history[0].clone(), history[3].clone()];
    let report = project_batch(&env.store, &env.views, &mut cache, &late).await;

    assert!(report.is_complete(), "{:?}", report.error);
    assert_eq!(report.succeeded, 3, "a duplicate is done, not failed");
    assert_eq!(
        env.batches.load(Ordering::SeqCst),
        before,
        "nothing written"
    );
    assert_views_fold(&env.views, &[history[..4].to_vec()]).await;

    // Duplicates around the next event do not keep it from being applied.
    let mixed = [history[3].clone(), history[4].clone(), history[4].clone()];
    let report = project_batch(&env.store, &env.views, &mut cache, &mixed).await;
    assert!(report.is_complete(), "{:?}", report.error);
    assert_views_fold(&env.views, std::slice::from_ref(&history)).await;
}

#[tokio::test]
async fn an_event_ahead_of_its_view_rebuilds_the_view_from_the_ledger() {
    let env = env();
    let history = record_job(&env.store).await;
    let mut cache = ProjectorCache::default();
    project_batch(&env.store, &env.views, &mut cache, &history[..2]).await;

    let report = project_batch(&env.store, &env.views, &mut cache, &history[4..]).await;

    assert!(report.is_complete(), "{:?}", report.error);
    assert_views_fold(&env.views, std::slice::from_ref(&history)).await;
}

#[tokio::test]
async fn a_small_cache_is_emptied_past_its_limit_and_the_views_stay_right() {
    let env = env();
    let (histories, feed) = jobs(&env.store, 10).await;
    let mut cache = ProjectorCache::new(3);
    let mut largest = 0;

    for batch in feed.chunks(4) {
        let report = project_batch(&env.store, &env.views, &mut cache, batch).await;
        assert!(report.is_complete(), "{:?}", report.error);
        largest = largest.max(cache.len());
    }

    assert_views_fold(&env.views, &histories).await;
    assert!(
        largest <= 3 + 4,
        "the cache holds its limit plus one batch's jobs at most, held {largest}"
    );
    assert!(
        env.reads.load(Ordering::SeqCst) > 0,
        "evicted views were read again from the store"
    );
}

#[tokio::test]
async fn a_failing_view_store_acknowledges_nothing_it_did_not_write() {
    let env = env();
    let (histories, feed) = jobs(&env.store, 3).await;
    let mut cache = ProjectorCache::default();
    env.failing.store(true, Ordering::SeqCst);

    let report = project_batch(&env.store, &env.views, &mut cache, &feed[..9]).await;

    assert_eq!(
        report.succeeded, 0,
        "nothing of the batch reached the store"
    );
    assert_eq!(report.failed_ids.len(), 9);
    let error = report.error.expect("the write error");
    assert!(matches!(error, ProjectError::View(_)), "{error}");
    assert!(error.is_retryable());
    assert!(cache.is_empty(), "no unwritten view stays cached");
    for history in &histories {
        assert_eq!(
            env.views.inner().get(history[0].job_id).await.expect("get"),
            None
        );
    }

    // Delivered again once the store is back, the batch and the rest complete the views.
    env.failing.store(false, Ordering::SeqCst);
    for batch in [&feed[..9], &feed[9..]] {
        let report = project_batch(&env.store, &env.views, &mut cache, batch).await;
        assert!(report.is_complete(), "{:?}", report.error);
    }
    assert_views_fold(&env.views, &histories).await;
}

#[tokio::test]
async fn an_event_the_ledger_does_not_hold_stops_the_batch_after_writing_what_came_before() {
    let env = env();
    let first = record_job(&env.store).await;
    let other = record_job(&env.store).await;
    let mut phantom = first[4].clone();
    phantom.version = 7;
    let mut batch = first[..3].to_vec();
    batch.push(phantom);
    batch.push(other[0].clone());
    let mut cache = ProjectorCache::default();

    let report = project_batch(&env.store, &env.views, &mut cache, &batch).await;

    assert_eq!(report.succeeded, 3);
    assert_eq!(report.failed_ids.len(), 2);
    let error = report.error.expect("behind");
    assert!(matches!(error, ProjectError::Behind { .. }), "{error}");
    assert!(error.is_retryable());
    assert_views_fold(&env.views, &[first[..3].to_vec()]).await;
    assert_eq!(
        env.views.inner().get(other[0].job_id).await.expect("get"),
        None,
        "nothing after the failed event is written"
    );
}

#[tokio::test]
async fn a_feed_replayed_after_a_restart_leaves_newer_views_as_they_are() {
    let env = env();
    let (histories, feed) = jobs(&env.store, 4).await;
    let mut cache = ProjectorCache::default();
    let report = project_batch(&env.store, &env.views, &mut cache, &feed).await;
    assert!(report.is_complete(), "{:?}", report.error);

    // A restart: the cache is empty and the feed is read again from an older checkpoint.
    let mut fresh = ProjectorCache::default();
    for batch in feed.chunks(6) {
        let report = project_batch(&env.store, &env.views, &mut fresh, batch).await;
        assert!(report.is_complete(), "{:?}", report.error);
        assert_views_fold(&env.views, &histories).await;
    }
}
