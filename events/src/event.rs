//! Job events: past-tense facts, each with a type name and a payload schema version.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spec::JobSpec;

/// Where a worker ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capacity {
    /// Fargate Spot (cheap, may be interrupted).
    #[serde(rename = "FARGATE_SPOT")]
    FargateSpot,
    /// Fargate on demand.
    #[serde(rename = "FARGATE")]
    Fargate,
    /// In-process or child process on the local machine (`jobledger dev`).
    #[serde(rename = "local")]
    Local,
}

/// What an attempt used and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// vCPUs of the task.
    pub vcpu: f64,
    /// Memory of the task.
    pub memory_mb: u64,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Model input tokens, all items.
    pub input_tokens: u64,
    /// Model output tokens, all items.
    pub output_tokens: u64,
    /// The model used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Compute plus model cost.
    pub cost_usd: f64,
}

/// `JobQueued` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The attempt the message is for.
    pub attempt: u32,
    /// The queue's message id.
    pub message_id: String,
}

/// `TaskLaunched` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    /// The attempt launched.
    pub attempt: u32,
    /// ECS task ARN, or a local task id.
    pub task_arn: String,
    /// Where it runs.
    pub capacity: Capacity,
}

/// `LaunchFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchFailure {
    /// The attempt that could not be launched.
    pub attempt: u32,
    /// Why.
    pub reason: String,
    /// Whether trying again may help.
    pub retryable: bool,
}

/// `AttemptStarted` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    /// The attempt.
    pub attempt: u32,
    /// The worker's identity (task id, host).
    pub worker: String,
}

/// `ProgressReported` payload (schema 2; schema 1 had no `failed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt.
    pub attempt: u32,
    /// Items done successfully so far.
    pub done: u64,
    /// Items failed so far.
    pub failed: u64,
    /// Items in the job.
    pub total: u64,
    /// Where the attempt's checkpoint is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_uri: Option<String>,
}

/// `AttemptFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// The attempt.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may help.
    pub retryable: bool,
}

/// `WorkerInterrupted` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interrupted {
    /// The attempt.
    pub attempt: u32,
    /// e.g. `SpotInterruption`, `SIGTERM`.
    pub reason: String,
}

/// `AttemptTimedOut` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedOut {
    /// The attempt.
    pub attempt: u32,
}

/// `RetryScheduled` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryScheduled {
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// Not to be launched before this time (backoff with jitter).
    pub not_before: DateTime<Utc>,
}

/// `JobSucceeded` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Succeeded {
    /// The attempt that finished.
    pub attempt: u32,
    /// Where the JSONL results are.
    pub result_uri: String,
    /// SHA-256 (hex) of the results file.
    pub result_sha256: String,
    /// Items that produced a result.
    pub items_ok: u64,
    /// Items recorded as failed (with a reason, in the results).
    pub items_failed: u64,
    /// What the attempt used and cost.
    pub usage: Usage,
}

/// `JobFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// Why the job gave up.
    pub reason: String,
}

/// `CancelRequested` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelRequested {
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `JobCancelled` payload (empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {}

/// Every job event.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// A client submitted the job.
    JobSubmitted(JobSpec),
    /// An attempt was put on the work queue.
    JobQueued(Queued),
    /// A worker task was started for an attempt.
    TaskLaunched(Launched),
    /// A worker task could not be started.
    LaunchFailed(LaunchFailure),
    /// The worker claimed the attempt.
    AttemptStarted(Started),
    /// The worker reported progress (also its heartbeat).
    ProgressReported(Progress),
    /// The attempt failed.
    AttemptFailed(AttemptFailure),
    /// The worker was stopped from outside (Spot reclaim, SIGTERM); does not use up an attempt.
    WorkerInterrupted(Interrupted),
    /// The attempt ran past its timeout or lost its heartbeat.
    AttemptTimedOut(TimedOut),
    /// Another attempt will run.
    RetryScheduled(RetryScheduled),
    /// The job finished with results.
    JobSucceeded(Succeeded),
    /// The job gave up.
    JobFailed(Failed),
    /// Someone asked to cancel a running job.
    CancelRequested(CancelRequested),
    /// The job was cancelled.
    JobCancelled(Cancelled),
}

/// An event's payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The type name is not a job event.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The schema version is newer than this build knows, or has no upcaster.
    #[error("{event_type} schema {schema} is not supported (current is {current})")]
    UnknownSchema {
        /// The event type.
        event_type: String,
        /// The stored schema.
        schema: u32,
        /// The newest schema this build knows.
        current: u32,
    },
    /// The payload does not match the type.
    #[error("{event_type} payload is invalid: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl JobEvent {
    /// The type name stored in the envelope.
    pub fn event_type(&self) -> &'static str {
        match self {
            JobEvent::JobSubmitted(_) => "JobSubmitted",
            JobEvent::JobQueued(_) => "JobQueued",
            JobEvent::TaskLaunched(_) => "TaskLaunched",
            JobEvent::LaunchFailed(_) => "LaunchFailed",
            JobEvent::AttemptStarted(_) => "AttemptStarted",
            JobEvent::ProgressReported(_) => "ProgressReported",
            JobEvent::AttemptFailed(_) => "AttemptFailed",
            JobEvent::WorkerInterrupted(_) => "WorkerInterrupted",
            JobEvent::AttemptTimedOut(_) => "AttemptTimedOut",
            JobEvent::RetryScheduled(_) => "RetryScheduled",
            JobEvent::JobSucceeded(_) => "JobSucceeded",
            JobEvent::JobFailed(_) => "JobFailed",
            JobEvent::CancelRequested(_) => "CancelRequested",
            JobEvent::JobCancelled(_) => "JobCancelled",
        }
    }

    /// The payload schema version written for new events of this type.
    pub fn schema(&self) -> u32 {
        current_schema(self.event_type())
    }

    /// Whether this event ends the job (nothing legal may follow but a manual retry).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::JobSucceeded(_) | JobEvent::JobFailed(_) | JobEvent::JobCancelled(_)
        )
    }

    /// The payload as a JSON value.
    pub fn to_data(&self) -> serde_json::Value {
        let value = match self {
            JobEvent::JobSubmitted(p) => serde_json::to_value(p),
            JobEvent::JobQueued(p) => serde_json::to_value(p),
            JobEvent::TaskLaunched(p) => serde_json::to_value(p),
            JobEvent::LaunchFailed(p) => serde_json::to_value(p),
            JobEvent::AttemptStarted(p) => serde_json::to_value(p),
            JobEvent::ProgressReported(p) => serde_json::to_value(p),
            JobEvent::AttemptFailed(p) => serde_json::to_value(p),
            JobEvent::WorkerInterrupted(p) => serde_json::to_value(p),
            JobEvent::AttemptTimedOut(p) => serde_json::to_value(p),
            JobEvent::RetryScheduled(p) => serde_json::to_value(p),
            JobEvent::JobSucceeded(p) => serde_json::to_value(p),
            JobEvent::JobFailed(p) => serde_json::to_value(p),
            JobEvent::CancelRequested(p) => serde_json::to_value(p),
            JobEvent::JobCancelled(p) => serde_json::to_value(p),
        };
        // Payloads are plain structs of strings, numbers and maps: serialising cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Decodes a payload of the current schema from JSON text.
    pub fn decode_current(event_type: &str, data: &str) -> Result<JobEvent, DecodeError> {
        fn parse<T: DeserializeOwned>(event_type: &str, data: &str) -> Result<T, DecodeError> {
            serde_json::from_str(data).map_err(|source| DecodeError::Payload {
                event_type: event_type.to_string(),
                source,
            })
        }
        Ok(match event_type {
            "JobSubmitted" => JobEvent::JobSubmitted(parse(event_type, data)?),
            "JobQueued" => JobEvent::JobQueued(parse(event_type, data)?),
            "TaskLaunched" => JobEvent::TaskLaunched(parse(event_type, data)?),
            "LaunchFailed" => JobEvent::LaunchFailed(parse(event_type, data)?),
            "AttemptStarted" => JobEvent::AttemptStarted(parse(event_type, data)?),
            "ProgressReported" => JobEvent::ProgressReported(parse(event_type, data)?),
            "AttemptFailed" => JobEvent::AttemptFailed(parse(event_type, data)?),
            "WorkerInterrupted" => JobEvent::WorkerInterrupted(parse(event_type, data)?),
            "AttemptTimedOut" => JobEvent::AttemptTimedOut(parse(event_type, data)?),
            "RetryScheduled" => JobEvent::RetryScheduled(parse(event_type, data)?),
            "JobSucceeded" => JobEvent::JobSucceeded(parse(event_type, data)?),
            "JobFailed" => JobEvent::JobFailed(parse(event_type, data)?),
            "CancelRequested" => JobEvent::CancelRequested(parse(event_type, data)?),
            "JobCancelled" => JobEvent::JobCancelled(parse(event_type, data)?),
            other => return Err(DecodeError::UnknownType(other.to_string())),
        })
    }

    /// The attempt an event belongs to, if it is about one.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            JobEvent::JobQueued(p) => Some(p.attempt),
            JobEvent::TaskLaunched(p) => Some(p.attempt),
            JobEvent::LaunchFailed(p) => Some(p.attempt),
            JobEvent::AttemptStarted(p) => Some(p.attempt),
            JobEvent::ProgressReported(p) => Some(p.attempt),
            JobEvent::AttemptFailed(p) => Some(p.attempt),
            JobEvent::WorkerInterrupted(p) => Some(p.attempt),
            JobEvent::AttemptTimedOut(p) => Some(p.attempt),
            JobEvent::RetryScheduled(p) => Some(p.next_attempt),
            JobEvent::JobSucceeded(p) => Some(p.attempt),
            _ => None,
        }
    }
}

/// The schema version new events of a type are written with.
pub fn current_schema(event_type: &str) -> u32 {
    match event_type {
        "ProgressReported" => 2,
        _ => 1,
    }
}
