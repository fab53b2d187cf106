//! The dispatch core: for each `JobSubmitted` or `RetryScheduled` on the change feed, put the attempt
//! on the work queue and record `JobQueued`.
//!
//! Feeds deliver at least once, so every step is idempotent: the message's deduplication id is the
//! event id (a re-delivery within the window enqueues nothing), and a `mark_queued` the job refuses
//! because it has moved on means an earlier delivery already did the work.

use chrono::{DateTime, Utc};
use jobledger_events::execute::{ExecuteError, fold};
use jobledger_events::{
    Command, CommandContext, EventStore, FeedEvent, JobEvent, JobId, RecordedEvent, Rejection,
    execute,
};

use crate::batch::{BatchReport, process_in_order};
use crate::ports::{JobMessage, JobQueue, QueueError};

/// The actor recorded on the events the dispatcher appends.
pub const ACTOR: &str = "system:dispatcher";

/// One record of a change-feed batch: the id the source knows it by, and the event.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamRecord {
    /// The source's record id (the local feed's `seq`, a DynamoDB stream `SequenceNumber`).
    pub id: String,
    /// The ledger event.
    pub event: RecordedEvent,
}

impl From<FeedEvent> for StreamRecord {
    fn from(f: FeedEvent) -> Self {
        StreamRecord {
            id: f.seq.to_string(),
            event: f.event,
        }
    }
}

/// What dispatching one event did.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchOutcome {
    /// Not an event that asks for an attempt.
    Ignored,
    /// The attempt was put on the queue and `JobQueued` recorded.
    Queued {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The queue's message id.
        message_id: String,
    },
    /// The job has already moved past this request (queued by an earlier delivery, cancelled, …).
    AlreadyHandled {
        /// The job.
        job_id: JobId,
        /// The attempt the event asked for.
        attempt: u32,
        /// Why the job refused `mark_queued`.
        reason: Rejection,
    },
}

/// Why an event could not be dispatched; the record is delivered again.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The event's payload cannot be decoded.
    #[error("event {event_id} of job {job_id} cannot be decoded: {reason}")]
    Corrupt {
        /// The job.
        job_id: JobId,
        /// The event.
        event_id: uuid::Uuid,
        /// Why.
        reason: String,
    },
    /// The queue refused the message.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Loading the job or recording `JobQueued` failed.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

/// Whether a rejection means "an earlier delivery, or a later event, already took care of this":
/// the job is past the state the command expects. Such a rejection is a success for a reactor.
pub fn is_already_handled(rejection: &Rejection) -> bool {
    matches!(
        rejection,
        Rejection::IllegalTransition { .. }
            | Rejection::StaleAttempt { .. }
            | Rejection::AlreadyFinished(_)
            | Rejection::AlreadyCancelling
    )
}

/// An attempt an event asks to queue, and when it may run.
struct Request {
    attempt: u32,
    not_before: Option<DateTime<Utc>>,
}

/// The request an event makes; `None` for every event that is not a request.
fn requested_attempt(event: &RecordedEvent) -> Result<Option<Request>, DispatchError> {
    // Most feed events are not requests; check the type before paying for a decode.
    if event.event_type != "JobSubmitted" && event.event_type != "RetryScheduled" {
        return Ok(None);
    }
    let decoded = event.decode().map_err(|e| DispatchError::Corrupt {
        job_id: event.job_id,
        event_id: event.event_id,
        reason: e.to_string(),
    })?;
    Ok(match decoded {
        JobEvent::JobSubmitted(_) => Some(Request {
            attempt: 1,
            not_before: None,
        }),
        JobEvent::RetryScheduled(r) => Some(Request {
            attempt: r.next_attempt,
            not_before: Some(r.not_before),
        }),
        _ => None,
    })
}

/// Dispatches one event: sends the queue message for the attempt it asks for, then records `JobQueued`.
pub async fn dispatch_one<S: EventStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    event: &RecordedEvent,
    now: DateTime<Utc>,
) -> Result<DispatchOutcome, DispatchError> {
    let Some(Request {
        attempt,
        not_before,
    }) = requested_attempt(event)?
    else {
        return Ok(DispatchOutcome::Ignored);
    };
    let job_id = event.job_id;
    let already = |reason| DispatchOutcome::AlreadyHandled {
        job_id,
        attempt,
        reason,
    };

    // Ask the aggregate first whether queueing is still legal, so an old event re-delivered after the
    // deduplication window (stream retries can come hours later) sends no stray message.
    let history = store.load(job_id).await.map_err(ExecuteError::from)?;
    let (job, _) = fold(job_id, &history)?;
    let probe = Command::MarkQueued {
        attempt,
        message_id: String::new(),
    };
    if let Err(reason) = job.decide(&probe) {
        if is_already_handled(&reason) {
            return Ok(already(reason));
        }
        return Err(ExecuteError::Rejected(reason).into());
    }

    let message = JobMessage::new(job_id, attempt, not_before, event.event_id);
    let message_id = queue.send(&message).await?;

    let command = Command::MarkQueued {
        attempt,
        message_id: message_id.clone(),
    };
    let ctx = CommandContext {
        actor: ACTOR.to_string(),
        correlation_id: event.correlation_id.clone(),
        causation_id: event.event_id.to_string(),
        now,
        idempotency: None,
    };
    match execute(store, job_id, &command, &ctx).await {
        Ok(_) => Ok(DispatchOutcome::Queued {
            job_id,
            attempt,
            message_id,
        }),
        Err(ExecuteError::Rejected(reason)) if is_already_handled(&reason) => Ok(already(reason)),
        Err(e) => Err(e.into()),
    }
}

/// Dispatches a batch in order, stopping at the first failure (see [`crate::batch`]).
pub async fn dispatch_batch<S: EventStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    records: &[StreamRecord],
    now: DateTime<Utc>,
) -> BatchReport<DispatchError> {
    process_in_order(
        records,
        |r| r.id.clone(),
        |r| async move {
            let outcome = dispatch_one(store, queue, &r.event, now).await?;
            match &outcome {
                DispatchOutcome::Ignored => {}
                DispatchOutcome::Queued {
                    job_id,
                    attempt,
                    message_id,
                } => tracing::info!(%job_id, attempt, message_id, "attempt queued"),
                DispatchOutcome::AlreadyHandled {
                    job_id,
                    attempt,
                    reason,
                } => tracing::debug!(%job_id, attempt, %reason, "dispatch already handled"),
            }
            Ok(())
        },
    )
    .await
}
