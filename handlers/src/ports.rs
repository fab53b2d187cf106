//! Ports the pipeline cores use: the work queue, the task launcher, and where time comes from.
//!
//! The shapes follow the AWS services the cores run against in the cloud (SQS FIFO, ECS `RunTask`),
//! so `SqsJobQueue` and `EcsTaskLauncher` can implement them without the cores changing; the local
//! adapters (`SqliteJobQueue`, `InProcessLauncher`, `ChildProcessLauncher`) live in `crate::local`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobledger_events::JobId;
use jobledger_events::event::Capacity;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of the work message body this build writes; bodies of other versions are refused.
pub const MESSAGE_VERSION: u32 = 1;

/// The longest visibility timeout SQS accepts (12 hours); longer requests are clamped by the cores.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// The body of a work message: "launch this attempt of this job, not before then".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Body version ([`MESSAGE_VERSION`]).
    pub v: u32,
    /// The job.
    pub job_id: JobId,
    /// The attempt to launch.
    pub attempt: u32,
    /// Not to launch before this time (a scheduled retry's backoff); `None` means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The ledger event that asked for the attempt; it is also the message's deduplication id.
    pub event_id: Uuid,
}

impl JobMessage {
    /// A message of the current version.
    pub fn new(
        job_id: JobId,
        attempt: u32,
        not_before: Option<DateTime<Utc>>,
        event_id: Uuid,
    ) -> Self {
        JobMessage {
            v: MESSAGE_VERSION,
            job_id,
            attempt,
            not_before,
            event_id,
        }
    }

    /// The FIFO message group: one per job, so a job's messages stay in order.
    pub fn group_id(&self) -> String {
        self.job_id.to_string()
    }

    /// The deduplication id: the causing event's id, so a re-delivered event sends nothing new.
    pub fn dedup_id(&self) -> String {
        self.event_id.to_string()
    }

    /// The JSON body.
    pub fn to_body(&self) -> String {
        // A struct of a number, two uuids and a timestamp: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a body, refusing unknown versions rather than guessing.
    pub fn from_body(body: &str) -> Result<JobMessage, MalformedMessage> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version = serde_json::from_str(body)
            .map_err(|e| MalformedMessage(format!("not a job message: {e}")))?;
        if version.v != MESSAGE_VERSION {
            return Err(MalformedMessage(format!(
                "message version {} is not supported (this build reads {MESSAGE_VERSION})",
                version.v
            )));
        }
        serde_json::from_str(body)
            .map_err(|e| MalformedMessage(format!("invalid v{MESSAGE_VERSION} job message: {e}")))
    }
}

/// A message body that is not a job message this build understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct MalformedMessage(pub String);

/// One message handed out by [`JobQueue::receive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The queue's id for the message (stable across deliveries).
    pub message_id: String,
    /// The handle for this delivery; deleting or changing visibility needs it.
    pub receipt_handle: String,
    /// How many times the message has been handed out, this delivery included.
    pub receive_count: u32,
    /// The raw body; see [`JobMessage::from_body`].
    pub body: String,
}

/// What can go wrong talking to a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt handle is not the message's current one (it was deleted, or delivered again since).
    #[error("receipt handle is invalid or expired")]
    InvalidReceipt,
    /// A parameter is out of the range the queue accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The queue itself failed.
    #[error("queue backend error{}: {source}", if *.retryable { " (retryable)" } else { "" })]
    Backend {
        /// Whether trying again may help (throttling, busy, timeouts).
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl QueueError {
    /// A backend error from any cause.
    pub fn backend(
        retryable: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        QueueError::Backend {
            retryable,
            source: source.into(),
        }
    }
}

/// A FIFO work queue with message groups, deduplication and visibility timeouts (SQS FIFO semantics).
pub trait JobQueue: Send + Sync {
    /// Sends a message in group [`JobMessage::group_id`] with deduplication id [`JobMessage::dedup_id`].
    /// A duplicate within the deduplication window is accepted, not enqueued, and answers the first
    /// message's id.
    fn send(&self, message: &JobMessage)
    -> impl Future<Output = Result<String, QueueError>> + Send;

    /// Receives up to `max` messages, hiding them for `visibility`; waits up to `wait` for one to be
    /// available (long polling). An empty answer after `wait` is not an error.
    fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, QueueError>> + Send;

    /// Deletes a received message (acknowledges it).
    fn delete(&self, receipt_handle: &str) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Hides a received message for `timeout` from now (zero makes it visible at once).
    fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Sends several messages, as [`JobQueue::send`] would one by one, answering their message ids
    /// in order. Queues that can should do it in one call or transaction; on an error some of the
    /// messages may have been sent (sending them again is deduplicated).
    fn send_batch(
        &self,
        messages: &[JobMessage],
    ) -> impl Future<Output = Result<Vec<String>, QueueError>> + Send {
        async move {
            let mut ids = Vec::with_capacity(messages.len());
            for message in messages {
                ids.push(self.send(message).await?);
            }
            Ok(ids)
        }
    }

    /// Deletes several received messages; answers how many were deleted. A receipt that is no
    /// longer current (the message was delivered again) is skipped, not an error.
    fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<usize, QueueError>> + Send {
        async move {
            let mut deleted = 0;
            for receipt in receipt_handles {
                match self.delete(receipt).await {
                    Ok(()) => deleted += 1,
                    Err(QueueError::InvalidReceipt) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(deleted)
        }
    }

    /// The most messages one [`JobQueue::receive`] may ask for (SQS: 10).
    fn max_receive(&self) -> usize {
        10
    }
}

/// A started worker task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchResult {
    /// ECS task ARN, or a local id such as `local:<pid>`.
    pub task_arn: String,
    /// Where it runs.
    pub capacity: Capacity,
}

/// A worker task could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("launch failed{}: {reason}", if *.retryable { " (retryable)" } else { "" })]
pub struct LaunchError {
    /// Why.
    pub reason: String,
    /// Whether launching again later may work (capacity, throttling) or never will (bad config).
    pub retryable: bool,
}

impl LaunchError {
    /// A failure that may pass if tried again.
    pub fn retryable(reason: impl Into<String>) -> Self {
        LaunchError {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// A failure that will not pass by trying again.
    pub fn permanent(reason: impl Into<String>) -> Self {
        LaunchError {
            reason: reason.into(),
            retryable: false,
        }
    }
}

/// Starts one worker task per attempt.
///
/// Implementations must be idempotent per `(job_id, attempt)`, as ECS `RunTask` is with
/// `clientToken = <job_id>-<attempt>`: launching the same attempt twice starts one task and answers
/// its id both times, because a queue message can be delivered again after a launch.
pub trait TaskLauncher: Send + Sync {
    /// Starts a worker for the attempt; the worker receives `JOB_ID` and `ATTEMPT`.
    fn launch(
        &self,
        job_id: JobId,
        attempt: u32,
    ) -> impl Future<Output = Result<LaunchResult, LaunchError>> + Send;
}

/// Where the cores' drivers get the time and the backoff jitter, so tests can move time.
pub trait TimeSource: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// A uniform random value in `[0, 1)` for backoff jitter.
    fn jitter(&self) -> f64;

    /// Both, as the domain's `Clock`.
    fn clock(&self) -> jobledger_events::Clock {
        jobledger_events::Clock {
            now: self.now(),
            jitter: self.jitter(),
        }
    }
}

/// The system clock and a random jitter.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemTime;

impl TimeSource for SystemTime {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn jitter(&self) -> f64 {
        rand::random::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_through_its_body() {
        let m = JobMessage::new(JobId::new(), 2, Some(Utc::now()), Uuid::now_v7());
        let back = JobMessage::from_body(&m.to_body()).expect("valid body");
        assert_eq!(back, m);
        assert!(m.to_body().starts_with("{\"v\":1,"));
    }

    #[test]
    fn an_unknown_message_version_is_refused() {
        let m = JobMessage::new(JobId::new(), 1, None, Uuid::now_v7());
        let body = m.to_body().replacen("\"v\":1", "\"v\":2", 1);
        let err = JobMessage::from_body(&body).expect_err("v2 must be refused");
        assert!(err.0.contains("version 2"), "{err}");
        assert!(JobMessage::from_body("[]").is_err());
    }
}
