//! The Lambda glue of the launcher, the sweeper and the api, driven with real AWS payloads
//! (fixtures in `fixtures/aws/`) over the embedded stores.
#![cfg(feature = "aws")]

use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use axum::http::StatusCode;
use chrono::Utc;
use jobledger_events::event::Capacity;
use jobledger_events::testing::{noop_spec, running_job, test_context};
use jobledger_events::{Command, EventStore, JobId, SqliteEventStore, execute};
use jobledger_handlers::api::{ApiState, Authenticator};
use jobledger_handlers::aws::functions::gateway_service;
use jobledger_handlers::aws::glue::{self, EcsTaskStateChange, TaskStopOutcome};
use jobledger_handlers::dispatch::dispatch_one;
use jobledger_handlers::launch::LaunchPolicy;
use jobledger_handlers::local::SqliteJobQueue;
use jobledger_handlers::ports::{JobQueue, LaunchError, LaunchResult, SystemTime, TaskLauncher};
use jobledger_handlers::sweep::SweepPolicy;
use jobledger_projections::SqliteViewStore;
use jobledger_workers::FsObjectStore;
use serde_json::Value;
use tower::ServiceExt;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/aws/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Stores {
    dir: tempfile::TempDir,
    events: SqliteEventStore,
    queue: SqliteJobQueue,
    views: SqliteViewStore,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("temp dir");
    Stores {
        events: SqliteEventStore::open(dir.path().join("events.db")).expect("events"),
        queue: SqliteJobQueue::open(dir.path().join("queue.db")).expect("queue"),
        views: SqliteViewStore::open(dir.path().join("views.db")).expect("views"),
        dir,
    }
}

/// Records launches and starts a pretend task for each.
#[derive(Default)]
struct RecordingLauncher(Mutex<Vec<(JobId, u32)>>);

impl TaskLauncher for RecordingLauncher {
    async fn launch(&self, job_id: JobId, attempt: u32) -> Result<LaunchResult, LaunchError> {
        self.0.lock().expect("lock").push((job_id, attempt));
        Ok(LaunchResult {
            task_arn: format!("arn:aws:ecs:us-east-1:123456789012:task/jobs/{job_id}-{attempt}"),
            capacity: Capacity::FargateSpot,
        })
    }
}

#[tokio::test]
async fn the_launcher_launches_a_queued_job_and_reports_only_the_malformed_message() {
    let s = stores();
    let job_id = JobId::new();
    let submitted = execute(
        &s.events,
        job_id,
        &Command::Submit(noop_spec(1)),
        &test_context("api-key:ci"),
    )
    .await
    .expect("submit");
    dispatch_one(&s.events, &s.queue, &submitted.events[0], Utc::now())
        .await
        .expect("dispatch");
    let received = s
        .queue
        .receive(1, Duration::from_secs(60), Duration::ZERO)
        .await
        .expect("receive");
    let m = &received[0];
    let payload = fixture("sqs_launch.json")
        .replace("__RECEIPT_1__", &m.receipt_handle)
        .replace("__BODY_1__", &m.body.replace('"', "\\\""))
        .replace("__GROUP_1__", &job_id.to_string())
        .replace("__DEDUP_1__", &submitted.events[0].event_id.to_string());
    let event: SqsEvent = serde_json::from_str(&payload).expect("an SQS event");

    let launcher = RecordingLauncher::default();
    let response = glue::launch_sqs(
        &s.events,
        &s.queue,
        &launcher,
        &event,
        &SystemTime,
        &LaunchPolicy::default(),
    )
    .await
    .expect("a batch with ids");
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect();
    assert_eq!(failed, ["2e1424d4-f796-459a-8184-9c92662be6da"]);
    assert_eq!(*launcher.0.lock().expect("lock"), vec![(job_id, 1)]);
    let history = s.events.load(job_id).await.expect("load");
    assert_eq!(
        history.last().map(|e| e.event_type.as_str()),
        Some("TaskLaunched")
    );
}

#[tokio::test]
async fn a_message_without_an_id_fails_the_whole_batch_as_non_retryable() {
    let s = stores();
    let mut event: SqsEvent =
        serde_json::from_str(&fixture("sqs_launch.json")).expect("an SQS event");
    event.records[1].message_id = None;
    let err = glue::launch_sqs(
        &s.events,
        &s.queue,
        &RecordingLauncher::default(),
        &event,
        &SystemTime,
        &LaunchPolicy::default(),
    )
    .await
    .expect_err("no id to report");
    assert_eq!(err.error_type, "NonRetryable");
}

fn task_stopped(job_id: JobId, stop_code: &str) -> EventBridgeEvent<Value> {
    let text = fixture("ecs_task_stopped_spot.json")
        .replace("__JOB_ID__", &job_id.to_string())
        .replace("\"SpotInterruption\"", &format!("\"{stop_code}\""));
    serde_json::from_str(&text).expect("an EventBridge event")
}

async fn last_type(store: &SqliteEventStore, job_id: JobId) -> String {
    let history = store.load(job_id).await.expect("load");
    history
        .last()
        .map(|e| e.event_type.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_spot_interruption_of_a_running_job_is_recorded_once() {
    let s = stores();
    let (job_id, _) = running_job(&s.events).await;
    glue::sweeper_event(
        &s.events,
        &s.views,
        &SweepPolicy::default(),
        &SystemTime,
        task_stopped(job_id, "SpotInterruption"),
    )
    .await
    .expect("handled");
    let history = s.events.load(job_id).await.expect("load");
    assert!(
        history.iter().any(|e| e.event_type == "WorkerInterrupted"),
        "{:?}",
        history.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let interrupted = history
        .iter()
        .find(|e| e.event_type == "WorkerInterrupted")
        .expect("interrupted");
    assert_eq!(interrupted.actor, "system:sweeper");

    // EventBridge delivers at least once: the second copy finds the job moved on.
    let before = history.len();
    let change: EcsTaskStateChange =
        serde_json::from_value(task_stopped(job_id, "SpotInterruption").detail).expect("detail");
    let again = glue::task_stopped(&s.events, &change, &SystemTime)
        .await
        .expect("handled");
    assert!(matches!(again, TaskStopOutcome::Ignored(_)), "{again:?}");
    assert_eq!(s.events.load(job_id).await.expect("load").len(), before);
}

#[tokio::test]
async fn any_other_stop_of_a_running_job_fails_the_attempt() {
    let s = stores();
    let (job_id, _) = running_job(&s.events).await;
    let change: EcsTaskStateChange =
        serde_json::from_value(task_stopped(job_id, "EssentialContainerExited").detail)
            .expect("detail");
    let outcome = glue::task_stopped(&s.events, &change, &SystemTime)
        .await
        .expect("handled");
    assert_eq!(outcome, TaskStopOutcome::Failed(job_id, 1));
    let history = s.events.load(job_id).await.expect("load");
    assert!(history.iter().any(|e| e.event_type == "AttemptFailed"));
}

#[tokio::test]
async fn a_task_that_is_not_stopped_or_not_a_worker_is_ignored() {
    let s = stores();
    let (job_id, _) = running_job(&s.events).await;
    let mut change: EcsTaskStateChange =
        serde_json::from_value(task_stopped(job_id, "SpotInterruption").detail).expect("detail");
    change.last_status = "RUNNING".into();
    let outcome = glue::task_stopped(&s.events, &change, &SystemTime).await;
    assert!(matches!(outcome, Ok(TaskStopOutcome::Ignored(_))));
    change.last_status = "STOPPED".into();
    change.overrides.container_overrides.clear();
    let outcome = glue::task_stopped(&s.events, &change, &SystemTime).await;
    assert!(matches!(outcome, Ok(TaskStopOutcome::Ignored(_))));
    assert_eq!(last_type(&s.events, job_id).await, "AttemptStarted");
}

fn gateway_api(
    s: &Stores,
) -> impl tower::Service<
    lambda_http::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> {
    let objects = FsObjectStore::new(s.dir.path().join("objects")).expect("objects");
    let state = ApiState::new(
        s.events.clone(),
        s.views.clone(),
        objects,
        Authenticator::Gateway,
    );
    gateway_service(jobledger_handlers::api::router(state))
}

#[tokio::test]
async fn an_api_gateway_request_is_served_with_the_gateways_key_id_as_actor() {
    let s = stores();
    let request =
        lambda_http::request::from_str(&fixture("apigw_submit.json")).expect("a proxy event");
    let response = gateway_api(&s).oneshot(request).await.expect("served");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let accepted: Value = serde_json::from_slice(&body).expect("JSON");
    let job_id: JobId = accepted["job_id"]
        .as_str()
        .expect("job_id")
        .parse()
        .expect("a job id");
    let history = s.events.load(job_id).await.expect("load");
    assert_eq!(history[0].actor, "api-key:gw-key-7");
}

#[tokio::test]
async fn without_the_gateways_key_id_a_client_header_does_not_authenticate() {
    let s = stores();
    let text =
        fixture("apigw_submit.json").replace("\"apiKeyId\": \"gw-key-7\"", "\"apiKeyId\": null");
    let request = lambda_http::request::from_str(&text).expect("a proxy event");
    let response = gateway_api(&s).oneshot(request).await.expect("served");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
