//! The projector core: in-order folding, duplicates, out-of-order delivery, and stopping at the first failure.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Duration, TimeZone, Utc};
use jobledger_events::command::Command;
use jobledger_events::event::Capacity;
use jobledger_events::execute::{CommandContext, execute};
use jobledger_events::spec::{Item, JobInput, JobSpec, Notify};
use jobledger_events::store::EventStore;
use jobledger_events::{JobId, JobKind, RecordedEvent, SqliteEventStore, Status};
use jobledger_handlers::project::{ProjectError, Projected, project, project_one};
use jobledger_projections::testing::{ViewCall, WatchedViews};
use jobledger_projections::{JobView, SqliteViewStore, ViewError, ViewStore};

struct Env {
    _dir: tempfile::TempDir,
    store: SqliteEventStore,
    views: SqliteViewStore,
}

fn new_env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.sqlite")).unwrap();
    let views = SqliteViewStore::open(dir.path().join("views.sqlite")).unwrap();
    Env {
        _dir: dir,
        store,
        views,
    }
}

fn spec() -> JobSpec {
    JobSpec {
        kind: JobKind::MetaDescription,
        input: JobInput::Items {
            items: vec![Item {
                id: "a".into(),
                text: Some("text".into()),
                ..Item::default()
            }],
        },
        max_attempts: 2,
        timeout_s: 600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

/// Records a job through submit → queued → launched → started → progress; returns its history.
async fn record_job(store: &SqliteEventStore) -> Vec<RecordedEvent> {
    let job_id = JobId::new();
    let t0 = Utc.with_ymd_and_hms(2025, 2, 1, 10, 0, 0).unwrap();
    let commands = [
        Command::Submit(spec()),
        Command::MarkQueued {
            attempt: 1,
            message_id: "m".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "arn:t".into(),
            capacity: Capacity::Local,
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "w".into(),
        },
        Command::ReportProgress {
            attempt: 1,
            done: 1,
            failed: 0,
            total: 1,
            checkpoint_uri: None,
        },
    ];
    for (i, cmd) in commands.iter().enumerate() {
        let ctx = CommandContext::new("test", t0 + Duration::seconds(i as i64 * 10));
        execute(store, job_id, cmd, &ctx).await.unwrap();
    }
    store.load(job_id).await.unwrap()
}

#[tokio::test]
async fn events_delivered_in_order_build_the_view_the_fold_builds() {
    let env = new_env();
    let a = record_job(&env.store).await;
    let b = record_job(&env.store).await;
    // Two jobs interleaved, as a stream shard may deliver them.
    let batch: Vec<RecordedEvent> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let report = project(&env.store, &env.views, &batch).await;
    assert!(report.is_complete(), "{:?}", report.error);
    assert_eq!(report.succeeded, batch.len());
    for history in [&a, &b] {
        let view = env.views.get(history[0].job_id).await.unwrap().unwrap();
        assert_eq!(Some(view.clone()), JobView::fold(history).unwrap());
        assert_eq!(view.status, Status::Running);
        assert_eq!(view.last_version, 5);
    }
}

#[tokio::test]
async fn duplicate_and_late_deliveries_change_nothing() {
    let env = new_env();
    let history = record_job(&env.store).await;
    assert!(
        project(&env.store, &env.views, &history)
            .await
            .is_complete()
    );
    let before = env.views.get(history[0].job_id).await.unwrap();

    let cache = Mutex::new(HashMap::new());
    for e in history.iter().rev() {
        let outcome = project_one(&env.store, &env.views, &cache, e)
            .await
            .unwrap();
        assert_eq!(outcome, Projected::Skipped, "version {}", e.version);
    }
    let again = project(&env.store, &env.views, &history).await;
    assert!(again.is_complete());
    assert_eq!(env.views.get(history[0].job_id).await.unwrap(), before);
}

#[tokio::test]
async fn an_event_ahead_of_its_view_rebuilds_the_view_from_the_ledger() {
    let env = new_env();
    let history = record_job(&env.store).await;
    // Version 3 arrives first (no view yet), then the rest out of order.
    let order = [2usize, 0, 4, 1, 3];
    let cache = Mutex::new(HashMap::new());
    let mut outcomes = Vec::new();
    for i in order {
        outcomes.push(
            project_one(&env.store, &env.views, &cache, &history[i])
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        outcomes,
        vec![
            Projected::Rebuilt,
            Projected::Skipped,
            Projected::Skipped,
            Projected::Skipped,
            Projected::Skipped
        ]
    );
    let view = env.views.get(history[0].job_id).await.unwrap().unwrap();
    assert_eq!(Some(view), JobView::fold(&history).unwrap());

    // A gap after an existing view also rebuilds: view at 2, then version 4 arrives.
    let second = new_env();
    let history = record_job(&second.store).await;
    assert!(
        project(&second.store, &second.views, &history[..2])
            .await
            .is_complete()
    );
    let report = project(&second.store, &second.views, &history[3..4]).await;
    assert!(report.is_complete());
    let view = second.views.get(history[0].job_id).await.unwrap().unwrap();
    assert_eq!(view.last_version, 5, "the rebuild folds the whole ledger");
}

#[tokio::test]
async fn a_version_the_ledger_does_not_hold_fails_it_and_every_later_event() {
    let env = new_env();
    let good = record_job(&env.store).await;
    let other = record_job(&env.store).await;
    // An event of a job the ledger knows nothing of (as if the stream ran ahead of a lagging read).
    let mut phantom = good[2].clone();
    phantom.job_id = JobId::new();
    let batch = vec![
        good[0].clone(),
        good[1].clone(),
        phantom.clone(),
        other[0].clone(),
        good[2].clone(),
    ];
    let report = project(&env.store, &env.views, &batch).await;
    assert_eq!(report.succeeded, 2);
    assert_eq!(
        report.failed_ids,
        batch[2..]
            .iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>()
    );
    let error = report.error.unwrap();
    assert!(
        matches!(
            error,
            ProjectError::Behind {
                version: 3,
                head: 0,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    // The events before the failure were written; nothing after it was.
    assert_eq!(
        env.views
            .get(good[0].job_id)
            .await
            .unwrap()
            .unwrap()
            .last_version,
        2
    );
    assert_eq!(env.views.get(other[0].job_id).await.unwrap(), None);
}

#[tokio::test]
async fn an_undecodable_event_is_a_permanent_failure() {
    let env = new_env();
    let history = record_job(&env.store).await;
    let mut broken = history[1].clone();
    broken.data = serde_json::value::RawValue::from_string("{\"attempt\":\"one\"}".into()).unwrap();
    let report = project(&env.store, &env.views, &[history[0].clone(), broken]).await;
    assert_eq!(report.succeeded, 1);
    let error = report.error.unwrap();
    assert!(matches!(error, ProjectError::Projection(_)), "{error}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_failed_write_stops_the_batch_and_redelivery_completes_it() {
    let env = new_env();
    let history = record_job(&env.store).await;
    // The third upsert fails, once.
    let calls = AtomicUsize::new(0);
    let views = WatchedViews::new(env.views.clone(), move |call| match call {
        ViewCall::Upsert(_) if calls.fetch_add(1, Ordering::SeqCst) + 1 == 3 => {
            Err(ViewError::backend(true, "throttled"))
        }
        _ => Ok(()),
    });
    let report = project(&env.store, &views, &history).await;
    assert_eq!(report.succeeded, 2);
    assert_eq!(report.failed_ids.len(), 3);
    assert!(
        report
            .error
            .as_ref()
            .is_some_and(ProjectError::is_retryable)
    );
    assert_eq!(
        env.views
            .get(history[0].job_id)
            .await
            .unwrap()
            .unwrap()
            .last_version,
        2
    );
    // Lambda redelivers the failed records (here: the whole batch again); the view completes.
    let retry = project(&env.store, &views, &history).await;
    assert!(retry.is_complete(), "{:?}", retry.error);
    assert_eq!(
        env.views.get(history[0].job_id).await.unwrap(),
        JobView::fold(&history).unwrap()
    );
}
