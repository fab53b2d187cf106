//! The one place that does load → decide → append, with a bounded retry on version conflicts.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::chain::{canonical_json, compute_hash};
use crate::command::Command;
use crate::envelope::{Hash, RecordedEvent, ledger_time};
use crate::event::JobEvent;
use crate::ids::{JobId, new_event_id};
use crate::job::Job;
use crate::rejection::Rejection;
use crate::store::{AppendBatch, EventStore, IdempotencyRecord, LoadedJob, StoreError};

/// How many times a command is re-decided after losing a race to another appender.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Who asks, and why: becomes the envelope of every event the command appends.
#[derive(Clone, Debug)]
pub struct CommandContext {
    /// `api-key:<id>`, `worker:<task>`, `system:sweeper`, …
    pub actor: String,
    /// The request that started the chain.
    pub correlation_id: String,
    /// The event or command that caused this one.
    pub causation_id: String,
    /// Recording time.
    pub now: DateTime<Utc>,
    /// A key to claim with `JobSubmitted`.
    pub idempotency: Option<IdempotencyRecord>,
}

impl CommandContext {
    /// A context with a fresh correlation id.
    pub fn new(actor: impl Into<String>, now: DateTime<Utc>) -> Self {
        let correlation_id = new_event_id().to_string();
        CommandContext {
            actor: actor.into(),
            causation_id: correlation_id.clone(),
            correlation_id,
            now,
            idempotency: None,
        }
    }

    /// A context that continues the job's chain: [`execute`] takes the correlation id of the
    /// job's last event and that event's id as the cause (a worker only knows the job id).
    pub fn continuing(actor: impl Into<String>, now: DateTime<Utc>) -> Self {
        CommandContext {
            actor: actor.into(),
            correlation_id: String::new(),
            causation_id: String::new(),
            now,
            idempotency: None,
        }
    }
}

/// Why a command did not append.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The job refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed (or conflicts did not settle).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error("corrupt history of job {job_id} at version {version}: {reason}")]
    Corrupt {
        /// The job.
        job_id: JobId,
        /// The version.
        version: u64,
        /// Why.
        reason: String,
    },
}

/// The result of a command: the job after it, and the events it appended.
#[derive(Clone, Debug)]
pub struct Executed {
    /// The job's state after the command.
    pub job: Job,
    /// The appended events.
    pub events: Vec<RecordedEvent>,
}

/// Folds a stored history into a `Job`, decoding (and upcasting) each event.
pub fn fold(job_id: JobId, history: &[RecordedEvent]) -> Result<(Job, Hash), ExecuteError> {
    let mut job = Job::default();
    let mut head = Hash::ZERO;
    for e in history {
        let event = e.decode().map_err(|err| ExecuteError::Corrupt {
            job_id,
            version: e.version,
            reason: err.to_string(),
        })?;
        job.absorb(event);
        head = e.hash;
    }
    Ok((job, head))
}

/// Builds the recorded form of new events: versions, ids, hashes chained from `prev`.
pub fn record(
    job_id: JobId,
    after_version: u64,
    mut prev: Hash,
    events: &[JobEvent],
    ctx: &CommandContext,
) -> Vec<RecordedEvent> {
    let at = ledger_time(ctx.now);
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let data = RawValue::from_string(canonical_json(&event.to_data()))
                .unwrap_or_else(|_| empty_object());
            let mut e = RecordedEvent {
                job_id,
                version: after_version + 1 + i as u64,
                event_id: new_event_id(),
                event_type: event.event_type().to_string(),
                schema: event.schema(),
                data,
                at,
                actor: ctx.actor.clone(),
                correlation_id: ctx.correlation_id.clone(),
                causation_id: ctx.causation_id.clone(),
                prev_hash: prev,
                hash: Hash::ZERO,
            };
            e.hash = compute_hash(&e);
            prev = e.hash;
            e
        })
        .collect()
}

fn empty_object() -> Box<RawValue> {
    // A literal that is valid JSON; parsing it cannot fail.
    serde_json::from_str("{}").unwrap_or_else(|_| unreachable!())
}

/// Load → decide → append, re-deciding on a version conflict up to [`MAX_CONFLICT_RETRIES`] times.
pub async fn execute<S: EventStore>(
    store: &S,
    job_id: JobId,
    command: &Command,
    ctx: &CommandContext,
) -> Result<Executed, ExecuteError> {
    let mut attempt = 0;
    loop {
        let LoadedJob { job, head } = store.load_job(job_id).await?;
        let new_events = job.decide(command)?;
        // Clocks of different actors disagree, and a command decided on a stale read can land
        // after a later one: the ledger's times must still never go back.
        let mut ctx_at = ctx.clone();
        if let Some(last) = &head {
            ctx_at.now = ctx_at.now.max(last.at);
            if ctx_at.correlation_id.is_empty() {
                ctx_at.correlation_id = last.correlation_id.clone();
                ctx_at.causation_id = last.event_id.to_string();
            }
        }
        if ctx_at.correlation_id.is_empty() {
            ctx_at.correlation_id = new_event_id().to_string();
            ctx_at.causation_id = ctx_at.correlation_id.clone();
        }
        let prev = head.map_or(Hash::ZERO, |h| h.hash);
        let recorded = record(job_id, job.version, prev, &new_events, &ctx_at);
        let idempotency = match command {
            Command::Submit(_) => ctx.idempotency.clone(),
            _ => None,
        };
        let batch = AppendBatch {
            job_id,
            expected_version: job.version,
            events: recorded.clone(),
            idempotency,
        };
        match store.append(batch).await {
            Ok(()) => {
                let job = new_events.iter().fold(job, Job::evolve);
                return Ok(Executed {
                    job,
                    events: recorded,
                });
            }
            Err(StoreError::Conflict { .. }) if attempt < MAX_CONFLICT_RETRIES => {
                attempt += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
