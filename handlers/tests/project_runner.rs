//! The local projector: follows the change feed, saves its checkpoint, stops on shutdown, skips poison.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use jobledger_events::chain::compute_hash;
use jobledger_events::command::Command;
use jobledger_events::execute::{CommandContext, execute};
use jobledger_events::spec::{Item, JobInput, JobSpec, Notify};
use jobledger_events::store::{AppendBatch, ChangeFeed, EventStore};
use jobledger_events::{JobId, JobKind, SqliteEventStore, Status};
use jobledger_handlers::project::{PROJECTOR, run_projector};
use jobledger_projections::{JobView, SqliteViewStore, ViewStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn spec() -> JobSpec {
    JobSpec {
        kind: JobKind::Noop,
        input: JobInput::Items {
            items: vec![Item {
                id: "a".into(),
                text: Some("t".into()),
                ..Item::default()
            }],
        },
        max_attempts: 1,
        timeout_s: 600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

async fn submit(store: &SqliteEventStore) -> JobId {
    let job_id = JobId::new();
    execute(
        store,
        job_id,
        &Command::Submit(spec()),
        &CommandContext::new("test", Utc::now()),
    )
    .await
    .unwrap();
    job_id
}

fn start(
    store: &SqliteEventStore,
    views: &SqliteViewStore,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let (store, views) = (store.clone(), views.clone());
    let task = tokio::spawn(async move { run_projector(&store, &views, rx).await.unwrap() });
    (tx, task)
}

/// Waits (up to 10 s) until the job's view reaches `version`.
async fn wait_for_view(views: &SqliteViewStore, job_id: JobId, version: u64) -> JobView {
    for _ in 0..1000 {
        if let Some(v) = views.get(job_id).await.unwrap()
            && v.last_version >= version
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("view of {job_id} never reached version {version}");
}

#[tokio::test]
async fn the_projector_follows_the_feed_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.sqlite")).unwrap();
    let views = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();

    let before = submit(&store).await;
    let (stop, task) = start(&store, &views);
    // An event appended before start and one appended while it waits are both projected.
    wait_for_view(&views, before, 1).await;
    let during = submit(&store).await;
    let view = wait_for_view(&views, during, 1).await;
    assert_eq!(view.status, Status::Submitted);

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let head = store.read_after(0, 100).await.unwrap().last().unwrap().seq;
    assert_eq!(store.checkpoint(PROJECTOR).await.unwrap(), head);

    // While stopped, a job is cancelled; a new projector picks up from the checkpoint.
    execute(
        &store,
        during,
        &Command::Cancel { reason: "r".into() },
        &CommandContext::new("test", Utc::now()),
    )
    .await
    .unwrap();
    let (stop, task) = start(&store, &views);
    let view = wait_for_view(&views, during, 3).await;
    assert_eq!(view.status, Status::Cancelled);
    // Dropping the sender also stops it.
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_poison_event_is_skipped_after_some_tries_and_later_jobs_are_projected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.sqlite")).unwrap();
    let views = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();

    // A correctly chained event whose payload no build can decode.
    let job = submit(&store).await;
    let mut poison = store.load(job).await.unwrap()[0].clone();
    poison.version = 2;
    poison.event_id = uuid::Uuid::now_v7();
    poison.event_type = "JobQueued".into();
    poison.data = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    poison.prev_hash = store.load(job).await.unwrap()[0].hash;
    poison.hash = compute_hash(&poison);
    store
        .append(AppendBatch {
            job_id: job,
            expected_version: 1,
            events: vec![poison],
            idempotency: None,
        })
        .await
        .unwrap();
    let after = submit(&store).await;

    let (stop, task) = start(&store, &views);
    wait_for_view(&views, after, 1).await;
    // The poisoned job keeps its last good view.
    assert_eq!(views.get(job).await.unwrap().unwrap().last_version, 1);
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
