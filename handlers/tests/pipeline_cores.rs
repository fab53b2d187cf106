//! The dispatch, launch and sweep cores against the real SQLite store and queue, one step at a time.

mod pipeline_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use jobledger_events::{ChangeFeed, Clock, Command, EventStore, JobId, RecordedEvent, Status};
use jobledger_handlers::dispatch::{
    DispatchError, DispatchOutcome, StreamRecord, dispatch_batch, dispatch_one,
};
use jobledger_handlers::launch::{
    LaunchFailure, LaunchOutcome, LaunchPolicy, launch_batch, launch_one,
};
use jobledger_handlers::ports::{
    JobMessage, JobQueue, LaunchError, LaunchResult, ReceivedMessage, TaskLauncher, TimeSource,
};
use jobledger_handlers::sweep::{Overdue, SweepCandidate, SweepPolicy, sweep};
use pipeline_support::{Behaviour, fixture, job, run, run_at, simulated_workers, spec, submit};
use serde_json::value::RawValue;

const VIS: Duration = Duration::from_secs(60);

/// The whole change feed as stream records.
async fn feed(f: &pipeline_support::Fixture) -> Vec<StreamRecord> {
    f.store
        .read_after(0, 1000)
        .await
        .expect("feed")
        .into_iter()
        .map(StreamRecord::from)
        .collect()
}

/// The feed records of one job and type.
async fn records_of(
    f: &pipeline_support::Fixture,
    id: JobId,
    event_type: &str,
) -> Vec<StreamRecord> {
    feed(f)
        .await
        .into_iter()
        .filter(|r| r.event.job_id == id && r.event.event_type == event_type)
        .collect()
}

async fn receive_all(f: &pipeline_support::Fixture) -> Vec<ReceivedMessage> {
    f.queue
        .receive(10, VIS, Duration::ZERO)
        .await
        .expect("receive")
}

#[tokio::test]
async fn a_submitted_job_is_queued_with_the_event_id_as_dedup_id() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let submitted = records_of(&f, id, "JobSubmitted").await.remove(0);

    let outcome = dispatch_one(&f.store, &f.queue, &submitted.event, Utc::now())
        .await
        .expect("dispatch");
    let DispatchOutcome::Queued {
        attempt,
        message_id,
        ..
    } = outcome
    else {
        panic!("not queued: {outcome:?}");
    };
    assert_eq!(attempt, 1);
    let j = job(&f.store, id).await;
    assert_eq!(j.status, Status::Queued);

    let got = receive_all(&f).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, message_id);
    let body = JobMessage::from_body(&got[0].body).expect("body");
    assert_eq!(body, JobMessage::new(id, 1, None, submitted.event.event_id));
    let queued = f
        .store
        .load(id)
        .await
        .expect("load")
        .pop()
        .expect("JobQueued");
    assert_eq!(queued.actor, "system:dispatcher");
    assert_eq!(queued.causation_id, submitted.event.event_id.to_string());
}

#[tokio::test]
async fn duplicate_feed_deliveries_send_one_message_and_record_one_queued() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let submitted = records_of(&f, id, "JobSubmitted").await.remove(0);
    let twice = vec![submitted.clone(), submitted.clone()];
    let report = dispatch_batch(&f.store, &f.queue, &twice, Utc::now()).await;
    assert!(report.is_complete(), "{:?}", report.error);
    // A late re-delivery, after the queue's deduplication window: the ledger stops it.
    f.time.advance(chrono::Duration::minutes(10));
    let outcome = dispatch_one(&f.store, &f.queue, &submitted.event, f.time.now())
        .await
        .expect("dispatch");
    assert!(
        matches!(outcome, DispatchOutcome::AlreadyHandled { attempt: 1, .. }),
        "{outcome:?}"
    );

    assert_eq!(receive_all(&f).await.len(), 1);
    let types = pipeline_support::event_types(&f.store, id).await;
    assert_eq!(types, vec!["JobSubmitted", "JobQueued"]);
}

#[tokio::test]
async fn duplicate_queue_deliveries_launch_one_worker() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Vanish);
    let id = submit(&f.store, spec()).await;
    let report = dispatch_batch(&f.store, &f.queue, &feed(&f).await, Utc::now()).await;
    assert!(report.is_complete());
    // A second message for the same attempt (as a dispatcher re-run after the window would send).
    f.queue
        .send(&JobMessage::new(id, 1, None, uuid::Uuid::now_v7()))
        .await
        .expect("send duplicate");

    let policy = LaunchPolicy::default();
    let got = receive_all(&f).await;
    assert_eq!(got.len(), 2, "both messages of the group in one batch");
    let report = launch_batch(&f.store, &f.queue, &launcher, &got, &*f.time, &policy).await;
    assert!(report.is_complete(), "{:?}", report.error);
    // The first message again, as if its delete had been lost.
    let outcome = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &got[0],
        f.time.clock(),
        &policy,
    )
    .await
    .expect("redelivery");
    assert!(
        matches!(outcome, LaunchOutcome::Skipped { .. }),
        "{outcome:?}"
    );

    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 1);
    assert_eq!(job(&f.store, id).await.status, Status::Running);
}

#[tokio::test]
async fn when_a_job_is_cancelled_its_queued_message_is_skipped() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Succeed);
    let id = submit(&f.store, spec()).await;
    dispatch_batch(&f.store, &f.queue, &feed(&f).await, Utc::now()).await;
    run(
        &f.store,
        id,
        Command::Cancel {
            reason: "changed my mind".into(),
        },
    )
    .await;

    let got = receive_all(&f).await;
    let outcome = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &got[0],
        f.time.clock(),
        &LaunchPolicy::default(),
    )
    .await
    .expect("handled");
    assert!(
        matches!(outcome, LaunchOutcome::Skipped { ref reason, .. } if reason.contains("CANCELLED")),
        "{outcome:?}"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 0);
    assert_eq!(job(&f.store, id).await.status, Status::Cancelled);
}

#[tokio::test]
async fn dispatch_stops_at_the_first_failure_and_fails_every_later_record() {
    let f = fixture();
    let a = submit(&f.store, spec()).await;
    let b = submit(&f.store, spec()).await;
    let mut records = feed(&f).await;
    let mut broken: RecordedEvent = records[0].event.clone();
    broken.data = RawValue::from_string("{\"kind\":42}".into()).expect("json");
    records.insert(
        1,
        StreamRecord {
            id: "broken".into(),
            event: broken,
        },
    );
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();

    let report = dispatch_batch(&f.store, &f.queue, &records, Utc::now()).await;
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.failed_ids, ids[1..].to_vec());
    assert!(
        matches!(report.error, Some(DispatchError::Corrupt { .. })),
        "{:?}",
        report.error
    );
    assert_eq!(job(&f.store, a).await.status, Status::Queued);
    assert_eq!(
        job(&f.store, b).await.status,
        Status::Submitted,
        "b comes after the failure"
    );
}

#[tokio::test]
async fn launch_stops_at_the_first_failure_and_fails_every_later_message() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Succeed);
    let a = submit(&f.store, spec()).await;
    let b = submit(&f.store, spec()).await;
    dispatch_batch(&f.store, &f.queue, &feed(&f).await, Utc::now()).await;
    let mut got = receive_all(&f).await;
    assert_eq!(got.len(), 2);
    got.insert(
        1,
        ReceivedMessage {
            message_id: "poison".into(),
            receipt_handle: "poison-receipt".into(),
            receive_count: 1,
            body: "{\"v\":9}".into(),
        },
    );

    let report = launch_batch(
        &f.store,
        &f.queue,
        &launcher,
        &got,
        &*f.time,
        &LaunchPolicy::default(),
    )
    .await;
    assert_eq!(
        report.failed_ids,
        vec!["poison".to_string(), got[2].message_id.clone()]
    );
    assert!(matches!(report.error, Some(LaunchFailure::Malformed(_))));
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 1);
    let first = JobMessage::from_body(&got[0].body).expect("body").job_id;
    let (launched, waiting) = if first == a { (a, b) } else { (b, a) };
    assert_eq!(job(&f.store, launched).await.status, Status::Succeeded);
    assert_eq!(job(&f.store, waiting).await.status, Status::Queued);
}

/// Puts a job in RETRY_WAIT with `not_before` an hour ahead (the failure is dated an hour ahead).
async fn job_waiting_an_hour_to_retry(
    f: &pipeline_support::Fixture,
) -> (JobId, chrono::DateTime<Utc>) {
    let id = submit(&f.store, spec()).await;
    dispatch_batch(&f.store, &f.queue, &feed(f).await, Utc::now()).await;
    let first = receive_all(f).await;
    f.queue.delete(&first[0].receipt_handle).await.expect("ack");
    run(
        &f.store,
        id,
        Command::StartAttempt {
            attempt: 1,
            worker: "w".into(),
        },
    )
    .await;
    let later = Utc::now() + chrono::Duration::hours(1);
    run(
        &f.store,
        id,
        Command::FailAttempt {
            attempt: 1,
            error: "flaky".into(),
            retryable: true,
            clock: Clock {
                now: later,
                jitter: 0.5,
            },
        },
    )
    .await;
    let j = job(&f.store, id).await;
    assert_eq!((j.status, j.attempt), (Status::RetryWait, 2));
    let not_before = j.not_before.expect("not_before");
    assert!(not_before >= later);
    (id, not_before)
}

#[tokio::test]
async fn a_retry_is_not_launched_before_its_not_before() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Succeed);
    let (id, not_before) = job_waiting_an_hour_to_retry(&f).await;
    let retry = records_of(&f, id, "RetryScheduled").await;
    let report = dispatch_batch(&f.store, &f.queue, &retry, Utc::now()).await;
    assert!(report.is_complete());

    let got = receive_all(&f).await;
    assert_eq!(
        JobMessage::from_body(&got[0].body)
            .expect("body")
            .not_before,
        Some(not_before)
    );
    let report = launch_batch(
        &f.store,
        &f.queue,
        &launcher,
        &got,
        &*f.time,
        &LaunchPolicy::default(),
    )
    .await;
    assert!(
        matches!(report.error, Some(LaunchFailure::Deferred { attempt: 2, until, .. }) if until == not_before)
    );
    assert_eq!(
        report.failed_ids,
        vec![got[0].message_id.clone()],
        "kept on the queue"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 0);

    // Hidden until then, well past the receive's own visibility timeout.
    f.time.advance(chrono::Duration::minutes(30));
    assert!(receive_all(&f).await.is_empty());
    f.time.advance(chrono::Duration::minutes(31));
    let again = receive_all(&f).await;
    assert_eq!(again.len(), 1);
    let report = launch_batch(
        &f.store,
        &f.queue,
        &launcher,
        &again,
        &*f.time,
        &LaunchPolicy::default(),
    )
    .await;
    assert!(report.is_complete(), "{:?}", report.error);
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 1);
    let j = job(&f.store, id).await;
    assert_eq!((j.status, j.attempt), (Status::Succeeded, 2));
}

/// A launcher that always fails the same way.
struct FailingLauncher(LaunchError);

impl TaskLauncher for FailingLauncher {
    async fn launch(&self, _: JobId, _: u32) -> Result<LaunchResult, LaunchError> {
        Err(self.0.clone())
    }
}

#[tokio::test]
async fn a_permanent_launch_error_is_recorded_and_fails_the_job() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    dispatch_batch(&f.store, &f.queue, &feed(&f).await, Utc::now()).await;
    let got = receive_all(&f).await;
    let launcher = FailingLauncher(LaunchError::permanent("no such task definition"));
    let outcome = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &got[0],
        f.time.clock(),
        &LaunchPolicy::default(),
    )
    .await
    .expect("handled");
    assert!(
        matches!(outcome, LaunchOutcome::LaunchFailed { .. }),
        "{outcome:?}"
    );
    let j = job(&f.store, id).await;
    assert_eq!(j.status, Status::Failed);
    assert_eq!(
        pipeline_support::event_types(&f.store, id).await[2..],
        ["LaunchFailed", "JobFailed"]
    );
}

#[tokio::test]
async fn a_retryable_launch_error_leaves_the_message_until_the_policy_says_record_it() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    dispatch_batch(&f.store, &f.queue, &feed(&f).await, Utc::now()).await;
    let launcher = FailingLauncher(LaunchError::retryable("no Spot capacity"));
    let policy = LaunchPolicy {
        record_failure_after: 2,
    };
    let got = receive_all(&f).await;
    let first = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &got[0],
        f.time.clock(),
        &policy,
    )
    .await;
    assert!(
        matches!(first, Err(LaunchFailure::Launcher { .. })),
        "{first:?}"
    );
    assert_eq!(
        job(&f.store, id).await.status,
        Status::Queued,
        "nothing recorded yet"
    );

    f.time.advance(chrono::Duration::seconds(61));
    let again = receive_all(&f).await;
    assert_eq!(again[0].receive_count, 2);
    let second = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &again[0],
        f.time.clock(),
        &policy,
    )
    .await
    .expect("recorded");
    assert!(matches!(second, LaunchOutcome::LaunchFailed { .. }));
    let j = job(&f.store, id).await;
    assert_eq!(
        (j.status, j.attempt),
        (Status::RetryWait, 2),
        "the job decided to retry"
    );
}

#[tokio::test]
async fn the_sweeper_times_out_a_silent_attempt_and_the_job_schedules_a_retry() {
    let f = fixture();
    let id = submit(&f.store, spec()).await;
    let quiet = submit(&f.store, spec()).await;
    for j in [id, quiet] {
        run(
            &f.store,
            j,
            Command::MarkQueued {
                attempt: 1,
                message_id: "m".into(),
            },
        )
        .await;
        run(
            &f.store,
            j,
            Command::StartAttempt {
                attempt: 1,
                worker: "w".into(),
            },
        )
        .await;
    }
    let policy = SweepPolicy {
        heartbeat_limit: chrono::Duration::seconds(60),
    };
    let candidates = |ids: &[JobId]| {
        let store = f.store.clone();
        let ids = ids.to_vec();
        async move {
            let mut out = Vec::new();
            for j in ids {
                let history = store.load(j).await.expect("load");
                out.push(SweepCandidate::from_history(j, &history).expect("candidate"));
            }
            out
        }
    };
    let report = sweep(&f.store, &candidates(&[id, quiet]).await, &policy, &*f.time).await;
    assert!(report.timed_out.is_empty(), "fresh heartbeats");

    f.time.advance(chrono::Duration::seconds(45));
    run_at(
        &f.store,
        f.time.now(),
        quiet,
        Command::ReportProgress {
            attempt: 1,
            done: 0,
            failed: 0,
            total: 1,
            checkpoint_uri: None,
        },
    )
    .await;
    f.time.advance(chrono::Duration::seconds(30));
    let report = sweep(&f.store, &candidates(&[id, quiet]).await, &policy, &*f.time).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report.timed_out.len(),
        1,
        "only the silent one: {:?}",
        report.timed_out
    );
    assert!(matches!(report.timed_out[0], (j, 1, Overdue::Silent { .. }) if j == id));
    let j = job(&f.store, id).await;
    assert_eq!((j.status, j.attempt), (Status::RetryWait, 2));
    let timed_out = f.store.load(id).await.expect("load");
    assert!(
        timed_out
            .iter()
            .any(|e| e.event_type == "AttemptTimedOut" && e.actor == "system:sweeper")
    );

    // A stale nomination (the read model lagging) changes nothing: the ledger is re-checked.
    let stale = SweepCandidate {
        status: Status::Running,
        attempt: 1,
        attempt_started_at: Some(Utc::now() - chrono::Duration::hours(1)),
        ..candidates(&[id]).await.remove(0)
    };
    let report = sweep(&f.store, &[stale], &policy, &*f.time).await;
    assert!(report.timed_out.is_empty() && report.errors.is_empty());
}

#[tokio::test]
async fn a_message_that_overtakes_its_job_queued_record_is_retried_not_dropped() {
    let f = fixture();
    let launches = Arc::new(AtomicUsize::new(0));
    let launcher = simulated_workers(&f.store, Arc::clone(&launches), |_| Behaviour::Succeed);
    let id = submit(&f.store, spec()).await;
    // The dispatcher has sent the message but not yet recorded JobQueued.
    let message_id = f
        .queue
        .send(&JobMessage::new(id, 1, None, uuid::Uuid::now_v7()))
        .await
        .expect("send");
    let got = receive_all(&f).await;
    let early = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &got[0],
        f.time.clock(),
        &LaunchPolicy::default(),
    )
    .await;
    assert!(
        matches!(early, Err(LaunchFailure::NotQueuedYet { attempt: 1, .. })),
        "{early:?}"
    );
    assert!(!early.as_ref().err().is_some_and(LaunchFailure::is_fault));
    assert!(
        receive_all(&f).await.is_empty(),
        "hidden for a moment, not deleted"
    );

    run(
        &f.store,
        id,
        Command::MarkQueued {
            attempt: 1,
            message_id,
        },
    )
    .await;
    f.time.advance(chrono::Duration::seconds(2));
    let again = receive_all(&f).await;
    assert_eq!(again.len(), 1);
    let outcome = launch_one(
        &f.store,
        &f.queue,
        &launcher,
        &again[0],
        f.time.clock(),
        &LaunchPolicy::default(),
    )
    .await
    .expect("launched");
    assert!(
        matches!(outcome, LaunchOutcome::Launched { .. }),
        "{outcome:?}"
    );
    launcher.wait_idle().await;
    assert_eq!(launches.load(Ordering::SeqCst), 1);
}
