//! From Lambda events to the cores and back: decode, open a log span per record (so every line
//! carries `job_id`, `attempt`, `event_id` and `correlation_id`), run the core in order, write the
//! metrics, and answer Lambda (`batchItemFailures`, or a `Diagnostic`).
//!
//! Everything here is generic over the ports (stream images are decoded by an [`ImageDecoder`]: the
//! ledger's `DynamoEventStore` on AWS), so tests drive it with the embedded stores too.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_lambda_events::event::streams::{DynamoDbEventResponse, SqsEventResponse};
use chrono::{DateTime, Utc};
use jobledger_events::execute::{ExecuteError, fold};
use jobledger_events::{
    Command, CommandContext, EventStore, JobEvent, JobId, RecordedEvent, Status, execute,
};
use jobledger_projections::{JobView, ListQuery, ViewStore};
use lambda_runtime::Diagnostic;
use serde::Deserialize;
use tracing::{Instrument, Span};

use super::lambda::{diagnostic, fail_from, sqs_response, stream_response};
use super::metrics::{Emf, Unit, names};
use super::stream::{self, ImageDecoder};
use crate::batch::process_in_order;
use crate::dispatch::{self, DispatchOutcome, is_already_handled};
use crate::launch::{self, LaunchOutcome, LaunchPolicy};
use crate::ports::{JobMessage, JobQueue, ReceivedMessage, TaskLauncher, TimeSource};
use crate::project;
use crate::sweep::{self, SweepCandidate, SweepPolicy, SweepReport};

/// The log span of one ledger event.
pub fn event_span(event: &RecordedEvent) -> Span {
    let attempt = event.decode().ok().and_then(|e| e.attempt());
    tracing::info_span!(
        "event",
        job_id = %event.job_id,
        version = event.version,
        event_id = %event.event_id,
        event_type = %event.event_type,
        attempt,
        correlation_id = %event.correlation_id,
    )
}

/// The `dispatcher` Lambda: stream batch → queue messages and `JobQueued`.
pub async fn dispatch_stream<S: EventStore, Q: JobQueue>(
    decoder: &impl ImageDecoder,
    store: &S,
    queue: &Q,
    event: &StreamEvent,
    now: DateTime<Utc>,
) -> DynamoDbEventResponse {
    let batch = stream::decode(decoder, event).await;
    let report = process_in_order(
        &batch.records,
        |r| r.id.clone(),
        |r| {
            async move {
                let outcome = dispatch::dispatch_one(store, queue, &r.event, now).await?;
                match outcome {
                    DispatchOutcome::Queued { message_id, .. } => {
                        tracing::info!(message_id, "attempt queued");
                        Emf::new("dispatcher", now)
                            .dimension("Status", Status::Queued.to_string())
                            .metric(names::JOBS, 1.0, Unit::Count)
                            .property("job_id", r.event.job_id.to_string())
                            .emit();
                    }
                    DispatchOutcome::AlreadyHandled { reason, .. } => {
                        tracing::info!(%reason, "already dispatched")
                    }
                    DispatchOutcome::Ignored => {}
                }
                Ok::<_, dispatch::DispatchError>(())
            }
            .instrument(event_span(&r.event))
        },
    )
    .await;
    if let Some(error) = &report.error {
        tracing::warn!(%error, failed = report.failed_ids.len(), "dispatch stopped at a failure");
    }
    stream_response(batch.failures(&report.failed_ids))
}

/// The status a job enters with an event, for the jobs-by-status metric.
fn entered_status(event: &JobEvent) -> Option<Status> {
    Some(match event {
        JobEvent::JobSubmitted(_) => Status::Submitted,
        JobEvent::JobQueued(_) => Status::Queued,
        JobEvent::TaskLaunched(_) => Status::Launching,
        JobEvent::AttemptStarted(_) => Status::Running,
        JobEvent::RetryScheduled(_) => Status::RetryWait,
        JobEvent::JobSucceeded(_) => Status::Succeeded,
        JobEvent::JobFailed(_) => Status::Failed,
        JobEvent::CancelRequested(_) => Status::Cancelling,
        JobEvent::JobCancelled(_) => Status::Cancelled,
        _ => return None,
    })
}

/// The metrics one projected event contributes (the projector sees every event exactly in order).
pub fn event_metrics(event: &RecordedEvent, view: Option<&JobView>) -> Option<Emf> {
    let decoded = event.decode().ok()?;
    let mut emf = Emf::new("projector", event.at).property("job_id", event.job_id.to_string());
    let mut any = false;
    if let Some(status) = entered_status(&decoded) {
        emf = emf
            .dimension("Status", status.to_string())
            .metric(names::JOBS, 1.0, Unit::Count);
        any = true;
    }
    match &decoded {
        JobEvent::AttemptStarted(_) => {
            emf = emf.metric(names::ATTEMPTS, 1.0, Unit::Count);
            if let Some(v) = view {
                let ms = (event.at - v.created_at).num_milliseconds().max(0);
                emf = emf.metric(names::LAUNCH_LATENCY, ms as f64, Unit::Milliseconds);
            }
            any = true;
        }
        JobEvent::WorkerInterrupted(_) => {
            emf = emf.metric(names::INTERRUPTIONS, 1.0, Unit::Count);
            any = true;
        }
        JobEvent::JobSucceeded(s) => {
            emf = emf.metric(names::COST, s.usage.cost_usd, Unit::None);
            any = true;
        }
        _ => {}
    }
    any.then_some(emf)
}

/// The `projector` Lambda: stream batch → version-guarded view updates.
pub async fn project_stream<S: EventStore, V: ViewStore>(
    decoder: &impl ImageDecoder,
    store: &S,
    views: &V,
    event: &StreamEvent,
) -> DynamoDbEventResponse {
    let batch = stream::decode(decoder, event).await;
    let cache: Mutex<HashMap<JobId, JobView>> = Mutex::new(HashMap::new());
    let cache = &cache;
    let report = process_in_order(
        &batch.records,
        |r| r.id.clone(),
        |r| {
            async move {
                let outcome = project::project_one(store, views, cache, &r.event).await?;
                tracing::debug!(?outcome, "projected");
                if outcome != project::Projected::Skipped {
                    let view = cache
                        .lock()
                        .ok()
                        .and_then(|c| c.get(&r.event.job_id).cloned());
                    if let Some(emf) = event_metrics(&r.event, view.as_ref()) {
                        emf.emit();
                    }
                }
                Ok::<_, project::ProjectError>(())
            }
            .instrument(event_span(&r.event))
        },
    )
    .await;
    if let Some(error) = &report.error {
        tracing::warn!(%error, retryable = error.is_retryable(), "projection stopped at a failure");
    }
    stream_response(batch.failures(&report.failed_ids))
}

/// A message of an SQS Lambda event as the launch core sees it.
pub fn received(message: &SqsMessage) -> Result<ReceivedMessage, String> {
    let message_id = message
        .message_id
        .clone()
        .ok_or("SQS message without messageId")?;
    Ok(ReceivedMessage {
        receipt_handle: message
            .receipt_handle
            .clone()
            .ok_or_else(|| format!("SQS message {message_id} without receiptHandle"))?,
        receive_count: message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        body: message.body.clone().unwrap_or_default(),
        message_id,
    })
}

/// The `launcher` Lambda: SQS batch → `RunTask` and `TaskLaunched`, with partial batch failures.
///
/// A message without id or receipt handle cannot be reported on its own; the whole batch then
/// fails (it is delivered again, and in the end goes to the dead-letter queue).
pub async fn launch_sqs<S, Q, L, T>(
    store: &S,
    queue: &Q,
    launcher: &L,
    event: &SqsEvent,
    time: &T,
    policy: &LaunchPolicy,
) -> Result<SqsEventResponse, Diagnostic>
where
    S: EventStore,
    Q: JobQueue,
    L: TaskLauncher,
    T: TimeSource + ?Sized,
{
    let messages: Vec<ReceivedMessage> = event
        .records
        .iter()
        .map(received)
        .collect::<Result<_, _>>()
        .map_err(|e| diagnostic(&e, false))?;
    let sent_at: HashMap<&str, DateTime<Utc>> = event
        .records
        .iter()
        .filter_map(|m| {
            let sent = m.attributes.get("SentTimestamp")?.parse::<i64>().ok()?;
            Some((
                m.message_id.as_deref()?,
                DateTime::from_timestamp_millis(sent)?,
            ))
        })
        .collect();
    let sent_at = &sent_at;
    let report = process_in_order(
        &messages,
        |m| m.message_id.clone(),
        |m| {
            let parsed = JobMessage::from_body(&m.body).ok();
            let span = tracing::info_span!(
                "message",
                message_id = %m.message_id,
                receive_count = m.receive_count,
                job_id = parsed.as_ref().map(|p| p.job_id.to_string()),
                attempt = parsed.as_ref().map(|p| p.attempt),
                event_id = parsed.as_ref().map(|p| p.event_id.to_string()),
            );
            async move {
                let clock = time.clock();
                let outcome = launch::launch_one(store, queue, launcher, m, clock, policy).await?;
                match &outcome {
                    LaunchOutcome::Launched { task_arn, .. } => {
                        tracing::info!(task_arn, "worker launched");
                        let mut emf = Emf::new("launcher", clock.now)
                            .metric("Launches", 1.0, Unit::Count)
                            .property("task_arn", task_arn.clone());
                        if let Some(sent) = sent_at.get(m.message_id.as_str()) {
                            let ms = (clock.now - *sent).num_milliseconds().max(0);
                            emf = emf.metric(names::QUEUE_WAIT, ms as f64, Unit::Milliseconds);
                        }
                        emf.emit();
                    }
                    LaunchOutcome::Skipped { reason, .. } => {
                        tracing::info!(reason, "launch skipped")
                    }
                    LaunchOutcome::LaunchFailed { error, .. } => {
                        tracing::warn!(%error, "launch failure recorded");
                        Emf::new("launcher", clock.now)
                            .metric(names::LAUNCH_FAILURES, 1.0, Unit::Count)
                            .emit();
                    }
                }
                Ok::<_, launch::LaunchFailure>(())
            }
            .instrument(span)
        },
    )
    .await;
    if let Some(error) = &report.error {
        if error.is_fault() {
            tracing::warn!(%error, "launch batch stopped at a failure");
        } else {
            tracing::info!(%error, "launch batch stopped at a deferred message");
        }
    }
    let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    Ok(sqs_response(fail_from(&ids, &report.failed_ids)))
}

/// A view as a sweep candidate.
pub fn candidate(view: &JobView) -> SweepCandidate {
    SweepCandidate {
        job_id: view.job_id,
        status: view.status,
        attempt: view.attempt,
        attempt_started_at: view.launched_at.or(view.attempt_started_at),
        heartbeat_at: view.heartbeat_at,
        timeout_s: view.timeout_s,
    }
}

/// Pages read per status by one sweep; a backlog beyond it is swept on the next run.
const MAX_PAGES: usize = 100;

async fn all_in<V: ViewStore>(
    views: &V,
    status: Status,
) -> Result<Vec<JobView>, jobledger_projections::ViewError> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let page = views
            .list(&ListQuery {
                status: Some(status),
                kind: None,
                limit: jobledger_projections::MAX_LIST_LIMIT,
                cursor,
            })
            .await?;
        out.extend(page.jobs);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The scheduled sweep: candidates from the read model, checked against the ledger by the core;
/// also reports the age of the oldest job still waiting for a worker.
pub async fn sweep_scheduled<S: EventStore, V: ViewStore, T: TimeSource + ?Sized>(
    store: &S,
    views: &V,
    policy: &SweepPolicy,
    time: &T,
) -> Result<SweepReport, Diagnostic> {
    let read_error = |e: jobledger_projections::ViewError| diagnostic(&e, e.is_retryable());
    let mut candidates = Vec::new();
    for status in [Status::Launching, Status::Running, Status::Cancelling] {
        candidates.extend(
            all_in(views, status)
                .await
                .map_err(read_error)?
                .iter()
                .map(candidate),
        );
    }
    let now = time.now();
    let mut oldest: Option<DateTime<Utc>> = None;
    for status in [Status::Submitted, Status::Queued] {
        for v in all_in(views, status).await.map_err(read_error)? {
            oldest = Some(oldest.map_or(v.created_at, |o| o.min(v.created_at)));
        }
    }
    let age_s = oldest.map_or(0, |o| (now - o).num_seconds().max(0));
    let report = sweep::sweep(store, &candidates, policy, time).await;
    Emf::new("sweeper", now)
        .metric(names::OLDEST_WAITING_AGE, age_s as f64, Unit::Seconds)
        .metric("TimedOut", report.timed_out.len() as f64, Unit::Count)
        .metric("SweepCandidates", candidates.len() as f64, Unit::Count)
        .emit();
    for (job_id, error) in &report.errors {
        tracing::warn!(%job_id, %error, "job could not be swept; the next sweep tries again");
    }
    Ok(report)
}

/// The `detail` of an ECS "Task State Change" event (the fields the sweeper reads).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EcsTaskStateChange {
    /// The task.
    #[serde(default)]
    pub task_arn: String,
    /// `STOPPED` once the task is gone.
    #[serde(default)]
    pub last_status: String,
    /// `SpotInterruption`, `EssentialContainerExited`, `TaskFailedToStart`, `UserInitiated`, …
    #[serde(default)]
    pub stop_code: Option<String>,
    /// ECS's words.
    #[serde(default)]
    pub stopped_reason: Option<String>,
    /// The overrides it was started with (they carry `JOB_ID` and `ATTEMPT`).
    #[serde(default)]
    pub overrides: TaskOverrides,
}

/// `overrides` of a task state change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverrides {
    /// Per container.
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverrides>,
}

/// One container's overrides.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerOverrides {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its extra environment.
    #[serde(default)]
    pub environment: Vec<NameValue>,
}

/// An environment variable.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NameValue {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

impl EcsTaskStateChange {
    /// The job and attempt the task ran, from its `JOB_ID` / `ATTEMPT` overrides.
    pub fn job_attempt(&self) -> Option<(JobId, u32)> {
        self.overrides.container_overrides.iter().find_map(|c| {
            let var = |n: &str| {
                c.environment
                    .iter()
                    .find(|kv| kv.name == n)
                    .map(|kv| kv.value.as_str())
            };
            Some((var("JOB_ID")?.parse().ok()?, var("ATTEMPT")?.parse().ok()?))
        })
    }
}

/// What the sweeper did with a task state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStopOutcome {
    /// Not a stop, not a worker task, or the job had already moved on.
    Ignored(String),
    /// `WorkerInterrupted` recorded (Spot).
    Interrupted(JobId, u32),
    /// `AttemptFailed` recorded.
    Failed(JobId, u32),
}

/// A stopped worker task whose job still runs that attempt: Spot interruption → `Interrupt`
/// (does not use up an attempt), anything else → `FailAttempt` (retryable: the job's
/// `max_attempts` bounds it).
pub async fn task_stopped<S: EventStore, T: TimeSource + ?Sized>(
    store: &S,
    change: &EcsTaskStateChange,
    time: &T,
) -> Result<TaskStopOutcome, ExecuteError> {
    if change.last_status != "STOPPED" {
        return Ok(TaskStopOutcome::Ignored(format!(
            "task is {}",
            change.last_status
        )));
    }
    let Some((job_id, attempt)) = change.job_attempt() else {
        return Ok(TaskStopOutcome::Ignored(
            "not a worker task (no JOB_ID/ATTEMPT)".into(),
        ));
    };
    let span = tracing::info_span!("task", %job_id, attempt, task_arn = %change.task_arn);
    async move {
        let history = store.load(job_id).await?;
        let (job, _) = fold(job_id, &history)?;
        if job.attempt != attempt || !matches!(job.status, Status::Launching | Status::Running) {
            return Ok(TaskStopOutcome::Ignored(format!(
                "job is {} on attempt {}",
                job.status, job.attempt
            )));
        }
        let code = change.stop_code.clone().unwrap_or_else(|| "unknown".into());
        let why = format!(
            "{code}: {}",
            change
                .stopped_reason
                .as_deref()
                .unwrap_or("no reason given")
        );
        let clock = time.clock();
        let spot = code == "SpotInterruption";
        let command = if spot {
            Command::Interrupt {
                attempt,
                reason: why,
                clock,
            }
        } else {
            Command::FailAttempt {
                attempt,
                error: format!("worker task stopped: {why}"),
                retryable: true,
                clock,
            }
        };
        let mut ctx = CommandContext::new(sweep::ACTOR, clock.now);
        if let Some(last) = history.last() {
            ctx.correlation_id = last.correlation_id.clone();
        }
        ctx.causation_id = change.task_arn.clone();
        match execute(store, job_id, &command, &ctx).await {
            Ok(_) if spot => {
                tracing::warn!("Spot interruption recorded");
                Emf::new("sweeper", clock.now)
                    .metric(names::INTERRUPTIONS, 1.0, Unit::Count)
                    .property("job_id", job_id.to_string())
                    .emit();
                Ok(TaskStopOutcome::Interrupted(job_id, attempt))
            }
            Ok(_) => {
                tracing::warn!("lost worker: attempt failed");
                Ok(TaskStopOutcome::Failed(job_id, attempt))
            }
            Err(ExecuteError::Rejected(r)) if is_already_handled(&r) => {
                Ok(TaskStopOutcome::Ignored(format!("job moved on: {r}")))
            }
            Err(e) => Err(e),
        }
    }
    .instrument(span)
    .await
}

/// Whether an `ExecuteError` may pass on a retry of the Lambda invocation.
pub fn execute_retryable(e: &ExecuteError) -> bool {
    match e {
        ExecuteError::Store(s) => s.is_retryable(),
        ExecuteError::Rejected(_) | ExecuteError::Corrupt { .. } => false,
    }
}

/// The `sweeper` Lambda's input: a schedule tick or an ECS task state change.
pub async fn sweeper_event<S: EventStore, V: ViewStore, T: TimeSource + ?Sized>(
    store: &S,
    views: &V,
    policy: &SweepPolicy,
    time: &T,
    event: aws_lambda_events::event::eventbridge::EventBridgeEvent<serde_json::Value>,
) -> Result<(), Diagnostic> {
    if event.detail_type == "ECS Task State Change" {
        let change: EcsTaskStateChange = serde_json::from_value(event.detail)
            .map_err(|e| diagnostic(&format!("malformed ECS Task State Change: {e}"), false))?;
        let outcome = task_stopped(store, &change, time)
            .await
            .map_err(|e| diagnostic(&e, execute_retryable(&e)))?;
        tracing::info!(
            ?outcome,
            task_arn = change.task_arn,
            "task state change handled"
        );
        return Ok(());
    }
    let report = sweep_scheduled(store, views, policy, time).await?;
    tracing::info!(
        timed_out = report.timed_out.len(),
        errors = report.errors.len(),
        "sweep done"
    );
    Ok(())
}

/// What the notifier glue did with one stream batch, per sink (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyBatchReport {
    /// Per sink, the id of the first record it failed and will see again, if any.
    pub stopped_at: Vec<(String, Option<String>)>,
    /// (sink, job, version) of the records dead-lettered in this batch.
    pub dead_lettered: Vec<(String, JobId, u64)>,
}

/// One sink over a decoded batch, in order: stops at the first record that failed and may pass on
/// a later delivery (returning its id); a record that failed `max_tries` times, or that retrying
/// cannot fix, is dead-lettered and the sink moves on.
async fn notify_sink_batch<S, N, O>(
    env: &crate::notify::NotifyEnv<'_, S, N, O>,
    sink: &crate::notify::AnySink,
    max_tries: u32,
    records: &[crate::dispatch::StreamRecord],
    report: &mut NotifyBatchReport,
) -> Option<String>
where
    S: EventStore,
    N: crate::notify::NotifyStateStore
        + crate::notify::DeadLetterStore
        + crate::notify::FailureCounter,
    O: jobledger_workers::ObjectStore,
{
    use crate::notify::{NewDeadLetter, Sink, ViewCache, notify_one};
    let mut cache = ViewCache::default();
    for r in records {
        let (job_id, version) = (r.event.job_id, r.event.version);
        let error = match notify_one(env, sink, &mut cache, &r.event)
            .instrument(event_span(&r.event))
            .await
        {
            Ok(outcome) => {
                tracing::debug!(sink = sink.name(), %job_id, version, ?outcome, "notified");
                continue;
            }
            Err(error) => error,
        };
        let tries = match env
            .states
            .count_failure(sink.name(), r.event.job_id, r.event.version)
            .await
        {
            Ok(tries) => tries,
            Err(e) => {
                // Without a count the record cannot be given up on safely: deliver it again.
                tracing::warn!(sink = sink.name(), error = %e, "cannot count a failed notification");
                return Some(r.id.clone());
            }
        };
        if error.is_retryable() && tries < max_tries {
            tracing::warn!(sink = sink.name(), %job_id, version, tries, error = %error,
                "notification will be retried");
            return Some(r.id.clone());
        }
        let letter = NewDeadLetter {
            sink: sink.name().to_string(),
            job_id: r.event.job_id,
            version: r.event.version,
            event_id: r.event.event_id,
            seq: 0,
            error: error.to_string(),
            // Past `max_tries` the record is listed already (a redelivery of a batch Lambda had
            // been told to move on from): count this one try on top.
            tries: if tries > max_tries { 1 } else { tries },
            failed_at: env.clock.now(),
        };
        if let Err(e) = env.states.add(letter).await {
            // Moving on without the record listed would lose it.
            tracing::warn!(sink = sink.name(), error = %e, "cannot dead-letter a notification");
            return Some(r.id.clone());
        }
        tracing::error!(sink = sink.name(), %job_id, version, tries, error = %error,
            "notification dead-lettered");
        Emf::new("notifier", env.clock.now())
            .dimension("Sink", sink.name())
            .metric("NotificationsDeadLettered", 1.0, Unit::Count)
            .property("job_id", r.event.job_id.to_string())
            .emit();
        report
            .dead_lettered
            .push((sink.name().to_string(), r.event.job_id, r.event.version));
    }
    None
}

/// The `notifier` Lambda: stream batch → every configured sink, each on its own.
///
/// Each sink goes through the batch in order and stops at its first record that failed retryably;
/// the other sinks carry on past it. The batch item failures start at the earliest record any sink
/// stopped at, so Lambda delivers it and every later record again: the sinks that had already
/// delivered them skip them (their per-job state says so) and the failing one tries again. After
/// `max_tries` failed tries (counted in the state store, across invocations) a record is
/// dead-lettered for that sink and is no longer reported. An undecodable record is reported as the
/// other stream glue does.
pub async fn notify_stream<S, N, O>(
    decoder: &impl ImageDecoder,
    store: &S,
    states: &N,
    objects: &O,
    notifier: &crate::notify::Notifier,
    event: &StreamEvent,
) -> (DynamoDbEventResponse, NotifyBatchReport)
where
    S: EventStore,
    N: crate::notify::NotifyStateStore
        + crate::notify::DeadLetterStore
        + crate::notify::FailureCounter,
    O: jobledger_workers::ObjectStore,
{
    use crate::notify::{NotifyEnv, Sink};
    let batch = stream::decode(decoder, event).await;
    let env = NotifyEnv {
        store,
        states,
        objects,
        clock: notifier.clock.as_ref(),
        link_ttl: notifier.link_ttl,
    };
    let mut report = NotifyBatchReport::default();
    for sink in &notifier.sinks {
        let stopped = notify_sink_batch(
            &env,
            sink,
            notifier.retry.max_tries,
            &batch.records,
            &mut report,
        )
        .await;
        report.stopped_at.push((sink.name().to_string(), stopped));
    }
    let earliest = batch
        .records
        .iter()
        .find(|r| {
            report
                .stopped_at
                .iter()
                .any(|(_, at)| at.as_deref() == Some(r.id.as_str()))
        })
        .map(|r| r.id.clone());
    if let Some(id) = &earliest {
        tracing::warn!(
            record = id,
            "notifications stopped at a failure; the stream will deliver it again"
        );
    }
    let failed: Vec<String> = earliest.into_iter().collect();
    (stream_response(batch.failures(&failed)), report)
}
