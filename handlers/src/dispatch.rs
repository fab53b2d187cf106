//! The dispatch core: for each `JobSubmitted` or `RetryScheduled` on the change feed, put the attempt
//! on the work queue and record `JobQueued`.
//!
//! Feeds deliver at least once, so every step is idempotent: the message's deduplication id is the
//! event id (a re-delivery within the window enqueues nothing), and a `mark_queued` the job refuses
//! because it has moved on means an earlier delivery already did the work.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use jobledger_events::execute::{ExecuteError, record};
use jobledger_events::store::JobHead;
use jobledger_events::{
    AppendBatch, Command, CommandContext, EventStore, FeedEvent, Hash, Job, JobEvent, JobId,
    RecordedEvent, Rejection, StoreError, execute,
};

use crate::batch::BatchReport;
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

/// A job as loaded, folded: what a reactor decides on, and appends to, without loading it again.
pub struct LoadedJob {
    /// The job.
    pub job_id: JobId,
    /// The folded state.
    pub job: Job,
    /// Its newest event (what the next event chains from); `None` for an unknown job.
    pub head: Option<JobHead>,
}

impl LoadedJob {
    /// Loads and folds a job (with the store's [`EventStore::load_job`], which need not build
    /// every event of the history).
    pub async fn load<S: EventStore>(store: &S, job_id: JobId) -> Result<Self, ExecuteError> {
        let loaded = store.load_job(job_id).await?;
        Ok(LoadedJob {
            job_id,
            job: loaded.job,
            head: loaded.head,
        })
    }

    /// The job as its first event, `JobSubmitted`, left it: what the ledger holds if nothing was
    /// appended since (an append on it expects version 1, so the store catches anything else).
    pub fn from_submission(event: &RecordedEvent) -> Result<Self, DispatchError> {
        let decoded = event.decode().map_err(|e| DispatchError::Corrupt {
            job_id: event.job_id,
            event_id: event.event_id,
            reason: e.to_string(),
        })?;
        Ok(LoadedJob {
            job_id: event.job_id,
            job: Job::default().evolve(&decoded),
            head: Some(JobHead::of(event)),
        })
    }

    /// The correlation id of the job's newest event, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.head.as_ref().map(|h| h.correlation_id.as_str())
    }

    /// Decides `command` on this state and appends the events, as `execute` does but without
    /// loading the history again. If another appender got in first (a version conflict), falls
    /// back to `execute`, which reloads and decides again.
    pub async fn execute<S: EventStore>(
        &self,
        store: &S,
        command: &Command,
        ctx: &CommandContext,
    ) -> Result<(), ExecuteError> {
        let new_events = self.job.decide(command)?;
        let mut at = ctx.clone();
        // The ledger's times never go back, whatever the actors' clocks say (as in `execute`).
        if let Some(head) = &self.head {
            at.now = at.now.max(head.at);
        }
        let prev = self.head.as_ref().map_or(Hash::ZERO, |h| h.hash);
        let events = record(self.job_id, self.job.version, prev, &new_events, &at);
        let batch = AppendBatch {
            job_id: self.job_id,
            expected_version: self.job.version,
            events,
            idempotency: None,
        };
        match store.append(batch).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                execute(store, self.job_id, command, ctx).await.map(|_| ())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How the dispatch core learns the state of the job a request is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchPolicy {
    /// Decide a fresh submission (a `JobSubmitted` recorded less than [`FRESH_SUBMISSION`] ago)
    /// on the event itself instead of loading the job. If the job moved on meanwhile (delivered
    /// before, or cancelled), its message is a copy the queue drops (same deduplication id within
    /// its window) or one the launcher skips, and `JobQueued` is refused by the ledger. Only for a
    /// queue that keeps deduplication ids after a delete, as SQS and the local queue do.
    pub trust_fresh_submissions: bool,
}

/// How young a `JobSubmitted` must be for [`DispatchPolicy::trust_fresh_submissions`]: well inside
/// the queues' five-minute deduplication window, with room for clocks that disagree.
pub const FRESH_SUBMISSION: chrono::Duration = chrono::Duration::seconds(60);

fn is_fresh_submission(event: &RecordedEvent, now: DateTime<Utc>) -> bool {
    event.version == 1 && event.event_type == "JobSubmitted" && now - event.at < FRESH_SUBMISSION
}

/// A request that the job still accepts: its message is to be sent, then `JobQueued` recorded.
struct Planned {
    loaded: LoadedJob,
    attempt: u32,
    message: JobMessage,
}

/// What planning one record found: work to do, an outcome already final, or a failure.
type PlanResult = Result<Result<Planned, DispatchOutcome>, DispatchError>;

/// Step one of a dispatch: decode the event and ask the job (loaded once) whether queueing is
/// still legal, so an old event re-delivered after the deduplication window (stream retries can
/// come hours later) sends no stray message. Under [`DispatchPolicy::trust_fresh_submissions`] a
/// fresh submission is asked of the state its own event describes; a copy of its message sent on a
/// re-delivery falls inside the deduplication window.
async fn plan<S: EventStore>(
    store: &S,
    event: &RecordedEvent,
    now: DateTime<Utc>,
    policy: DispatchPolicy,
) -> PlanResult {
    let Some(Request {
        attempt,
        not_before,
    }) = requested_attempt(event)?
    else {
        return Ok(Err(DispatchOutcome::Ignored));
    };
    let job_id = event.job_id;
    let loaded = if policy.trust_fresh_submissions && is_fresh_submission(event, now) {
        LoadedJob::from_submission(event)?
    } else {
        LoadedJob::load(store, job_id).await?
    };
    let probe = Command::MarkQueued {
        attempt,
        message_id: String::new(),
    };
    if let Err(reason) = loaded.job.decide(&probe) {
        if is_already_handled(&reason) {
            return Ok(Err(DispatchOutcome::AlreadyHandled {
                job_id,
                attempt,
                reason,
            }));
        }
        return Err(ExecuteError::Rejected(reason).into());
    }
    Ok(Ok(Planned {
        loaded,
        attempt,
        message: JobMessage::new(job_id, attempt, not_before, event.event_id),
    }))
}

/// Step three of a dispatch: the message is on the queue; record `JobQueued` on the loaded job.
async fn record_queued<S: EventStore>(
    store: &S,
    planned: &Planned,
    event: &RecordedEvent,
    message_id: String,
    now: DateTime<Utc>,
) -> Result<DispatchOutcome, DispatchError> {
    let (job_id, attempt) = (planned.loaded.job_id, planned.attempt);
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
    match planned.loaded.execute(store, &command, &ctx).await {
        Ok(()) => Ok(DispatchOutcome::Queued {
            job_id,
            attempt,
            message_id,
        }),
        Err(ExecuteError::Rejected(reason)) if is_already_handled(&reason) => {
            Ok(DispatchOutcome::AlreadyHandled {
                job_id,
                attempt,
                reason,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Dispatches one event: sends the queue message for the attempt it asks for, then records `JobQueued`.
pub async fn dispatch_one<S: EventStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    event: &RecordedEvent,
    now: DateTime<Utc>,
) -> Result<DispatchOutcome, DispatchError> {
    let planned = match plan(store, event, now, DispatchPolicy::default()).await? {
        Ok(planned) => planned,
        Err(outcome) => return Ok(outcome),
    };
    let message_id = queue.send(&planned.message).await?;
    record_queued(store, &planned, event, message_id, now).await
}

/// A boxed unit of work of a batch. Boxing gives the futures one concrete type, which keeps the
/// batch functions' futures `Send` for the compiler (a chain of closures over borrowed records
/// trips its higher-ranked lifetime inference).
pub(crate) type Task<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs `tasks` with at most `limit` at once; answers their outputs in completion order.
pub(crate) async fn run_bounded<T>(tasks: Vec<Task<'_, T>>, limit: usize) -> Vec<T> {
    stream::iter(tasks)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

/// Jobs a dispatch batch loads or appends to at once.
pub const DISPATCH_CONCURRENCY: usize = 128;

fn log_outcome(outcome: &DispatchOutcome) {
    match outcome {
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
}

/// Dispatches a batch with the ordering contract of [`crate::batch`]: the report names the first
/// record that failed and every later one, as if the records had run one after another.
///
/// Underneath, different jobs are worked on concurrently (at most [`DISPATCH_CONCURRENCY`] at
/// once) and a job's requests strictly in feed order: each round takes the next request of every
/// job, loads the jobs, sends all their messages with one [`JobQueue::send_batch`], then records
/// every `JobQueued` at once so they share the ledger's group commits. An undecodable record is
/// found before anything runs, and nothing from it on is touched. A job whose request fails while
/// running (queue or ledger down, a refusal) is not touched again in this batch, but other jobs'
/// records after it may already be done: dispatching is idempotent, so delivered again they
/// change nothing.
pub async fn dispatch_batch<S: EventStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    records: &[StreamRecord],
    now: DateTime<Utc>,
) -> BatchReport<DispatchError> {
    dispatch_batch_with(store, queue, records, now, DispatchPolicy::default()).await
}

/// [`dispatch_batch`] with a [`DispatchPolicy`].
pub async fn dispatch_batch_with<S: EventStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    records: &[StreamRecord],
    now: DateTime<Utc>,
    policy: DispatchPolicy,
) -> BatchReport<DispatchError> {
    let mut done = vec![false; records.len()];
    let mut errors: BTreeMap<usize, DispatchError> = BTreeMap::new();
    // Jobs with a failed request: their later records wait for redelivery, in order.
    let mut stopped: HashSet<JobId> = HashSet::new();
    // Each job's records in feed order; only requests need work, the rest are done at once. A
    // record that cannot be decoded cuts the batch before anything is done: it and every later
    // record are left for redelivery, exactly as if the batch had run one record at a time.
    let mut per_job: HashMap<JobId, VecDeque<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        match requested_attempt(&r.event) {
            Ok(Some(_)) => per_job.entry(r.event.job_id).or_default().push_back(i),
            Ok(None) => done[i] = true,
            Err(e) => {
                errors.insert(i, e);
                done[i..].fill(false);
                break;
            }
        }
    }
    loop {
        let mut round: Vec<usize> = per_job
            .values_mut()
            .filter_map(VecDeque::pop_front)
            .collect();
        if round.is_empty() {
            break;
        }
        round.sort_unstable();
        let planned: Vec<(usize, PlanResult)> = run_bounded(
            round
                .into_iter()
                .map(|i| -> Task<'_, _> {
                    Box::pin(async move { (i, plan(store, &records[i].event, now, policy).await) })
                })
                .collect(),
            DISPATCH_CONCURRENCY,
        )
        .await;
        let mut to_send: Vec<(usize, Planned)> = Vec::new();
        for (i, result) in planned {
            match result {
                Ok(Ok(p)) => to_send.push((i, p)),
                Ok(Err(outcome)) => {
                    log_outcome(&outcome);
                    done[i] = true;
                }
                Err(e) => {
                    stopped.insert(records[i].event.job_id);
                    errors.insert(i, e);
                }
            }
        }
        if to_send.is_empty() {
            per_job.retain(|job, _| !stopped.contains(job));
            continue;
        }
        to_send.sort_unstable_by_key(|(i, _)| *i);
        let messages: Vec<JobMessage> = to_send.iter().map(|(_, p)| p.message.clone()).collect();
        let sent = match queue.send_batch(&messages).await {
            Ok(ids) if ids.len() == messages.len() => Ok(ids),
            Ok(ids) => Err(QueueError::backend(
                false,
                format!(
                    "{} messages sent, {} ids answered",
                    messages.len(),
                    ids.len()
                ),
            )),
            Err(e) => Err(e),
        };
        let ids = match sent {
            Ok(ids) => ids,
            Err(e) => {
                // Every record of the round failed; the earliest one carries the error.
                stopped.extend(to_send.iter().map(|(_, p)| p.loaded.job_id));
                errors.insert(to_send[0].0, e.into());
                per_job.retain(|job, _| !stopped.contains(job));
                continue;
            }
        };
        let recorded: Vec<(usize, Result<DispatchOutcome, DispatchError>)> = run_bounded(
            to_send
                .iter()
                .zip(ids)
                .map(|((i, p), id)| -> Task<'_, _> {
                    Box::pin(async move {
                        (
                            *i,
                            record_queued(store, p, &records[*i].event, id, now).await,
                        )
                    })
                })
                .collect(),
            DISPATCH_CONCURRENCY,
        )
        .await;
        for (i, result) in recorded {
            match result {
                Ok(outcome) => {
                    log_outcome(&outcome);
                    done[i] = true;
                }
                Err(e) => {
                    stopped.insert(records[i].event.job_id);
                    errors.insert(i, e);
                }
            }
        }
        per_job.retain(|job, _| !stopped.contains(job));
    }
    report_in_order(records, &done, errors)
}

/// The ordered report of a batch whose records may have run out of order: everything from the
/// first record not done is failed, with the error of that record.
fn report_in_order(
    records: &[StreamRecord],
    done: &[bool],
    mut errors: BTreeMap<usize, DispatchError>,
) -> BatchReport<DispatchError> {
    let Some(first) = done.iter().position(|d| !d) else {
        return BatchReport {
            failed_ids: Vec::new(),
            succeeded: records.len(),
            error: None,
        };
    };
    let error = errors
        .remove(&first)
        .or_else(|| errors.into_values().next());
    BatchReport {
        failed_ids: records[first..].iter().map(|r| r.id.clone()).collect(),
        succeeded: first,
        error,
    }
}
