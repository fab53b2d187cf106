//! The launch core: for each work message, start a worker task for the attempt and record `TaskLaunched`.
//!
//! Messages arrive at least once and may be stale, so the ledger decides: a job that is not `QUEUED`
//! for the message's attempt is skipped (the message is acknowledged), and launchers are idempotent per
//! attempt. A retry whose `not_before` is still ahead is hidden on the queue until then.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobledger_events::execute::ExecuteError;
use jobledger_events::{Clock, Command, CommandContext, EventStore, Job, JobId, Status};

use crate::batch::BatchReport;
use crate::dispatch::{LoadedJob, Task, is_already_handled, run_bounded};
use crate::ports::{
    JobMessage, JobQueue, LaunchError, MAX_VISIBILITY, MalformedMessage, QueueError,
    ReceivedMessage, TaskLauncher, TimeSource,
};

/// The actor recorded on the events the launcher appends.
pub const ACTOR: &str = "system:launcher";

/// Tuning of the launch core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPolicy {
    /// After this many deliveries of a message whose launch keeps failing with a retryable error,
    /// record the failure in the ledger (the job then decides: retry with backoff, or fail) instead
    /// of leaving the message for another delivery. Keep it below the queue's dead-letter limit, so
    /// a job is never left `QUEUED` with its message in the dead-letter queue.
    pub record_failure_after: u32,
}

impl Default for LaunchPolicy {
    fn default() -> Self {
        LaunchPolicy {
            record_failure_after: 3,
        }
    }
}

/// What handling one message did; in every case the message can be deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum LaunchOutcome {
    /// A worker task was started (or had been, by an earlier delivery) and `TaskLaunched` recorded
    /// unless the worker had already claimed the attempt.
    Launched {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The task.
        task_arn: String,
    },
    /// The job is not waiting for this attempt to launch (launched already, cancelled, a newer attempt).
    Skipped {
        /// The job.
        job_id: JobId,
        /// The message's attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// The launch failed and `LaunchFailed` was recorded; the job decided whether to retry.
    LaunchFailed {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The launcher's error.
        error: LaunchError,
    },
}

/// Why a message was not finished; it stays on the queue and is delivered again.
#[derive(Debug, thiserror::Error)]
pub enum LaunchFailure {
    /// The attempt may not launch before `until`; the message was hidden until then. Not a fault,
    /// but it stops the batch like one so the job's later messages stay behind it.
    #[error("job {job_id} attempt {attempt} may not launch before {until}")]
    Deferred {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// Its `not_before`.
        until: DateTime<Utc>,
    },
    /// The message arrived before the dispatcher recorded `JobQueued`; it was hidden for `retry_in`.
    /// Not a fault while it lasts a moment; it stops the batch like [`LaunchFailure::Deferred`].
    #[error("job {job_id} attempt {attempt} is not recorded as queued yet; retry in {retry_in:?}")]
    NotQueuedYet {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// How long the message is hidden.
        retry_in: Duration,
    },
    /// The body is not a job message (it goes to the dead-letter queue after enough deliveries).
    #[error(transparent)]
    Malformed(#[from] MalformedMessage),
    /// The launcher failed in a way that may pass; the message is delivered again.
    #[error("job {job_id} attempt {attempt}: {error}")]
    Launcher {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The launcher's error.
        error: LaunchError,
    },
    /// The queue failed (changing the message's visibility).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Loading the job or recording the launch failed.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

impl LaunchFailure {
    /// Whether this is a fault worth a warning, rather than a planned delay.
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            LaunchFailure::Deferred { .. } | LaunchFailure::NotQueuedYet { .. }
        )
    }
}

/// How long to hide a message that came before its `JobQueued`: 1 s, doubling per delivery, at most
/// a minute (whole seconds, as SQS wants).
fn not_queued_backoff(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// How long to hide a message so it comes back at `until` (whole seconds, rounded up, as SQS wants).
fn hide_for(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    let ms = (until - now).num_milliseconds().max(0) as u64;
    Duration::from_secs(ms.div_ceil(1000)).min(MAX_VISIBILITY)
}

/// How long a first delivery that arrived before its `JobQueued` waits for the ledger to catch up
/// (re-reading it a few times) before the message is hidden and tried again later. The dispatcher
/// sends a batch of messages and records their `JobQueued` a group commit later, so a fast
/// receiver regularly gets there first; waiting a moment beats hiding the message for a second.
pub const NOT_QUEUED_GRACE: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(8),
    Duration::from_millis(25),
    Duration::from_millis(65),
];

/// Whether the job is one step behind the message: the attempt's `JobQueued` is not recorded yet.
fn not_queued_yet(job: &Job, attempt: u32) -> bool {
    job.attempt == attempt && matches!(job.status, Status::Submitted | Status::RetryWait)
}

/// Handles one work message (see the module docs). `clock` dates the commands and drives the
/// backoff of a recorded launch failure.
pub async fn launch_one<S: EventStore, Q: JobQueue, L: TaskLauncher>(
    store: &S,
    queue: &Q,
    launcher: &L,
    received: &ReceivedMessage,
    clock: Clock,
    policy: &LaunchPolicy,
) -> Result<LaunchOutcome, LaunchFailure> {
    let message = JobMessage::from_body(&received.body)?;
    let (job_id, attempt) = (message.job_id, message.attempt);
    let skipped = |reason: String| LaunchOutcome::Skipped {
        job_id,
        attempt,
        reason,
    };

    let mut loaded = LoadedJob::load(store, job_id).await?;
    if received.receive_count <= 1 {
        for pause in NOT_QUEUED_GRACE {
            if !not_queued_yet(&loaded.job, attempt) {
                break;
            }
            tokio::time::sleep(pause).await;
            loaded = LoadedJob::load(store, job_id).await?;
        }
    }
    let job = &loaded.job;
    if not_queued_yet(job, attempt) {
        // The dispatcher sends the message before it records `JobQueued`, so a fast receive can see
        // the job one step behind. Come back shortly rather than dropping the only message.
        let retry_in = not_queued_backoff(received.receive_count);
        queue
            .change_visibility(&received.receipt_handle, retry_in)
            .await?;
        return Err(LaunchFailure::NotQueuedYet {
            job_id,
            attempt,
            retry_in,
        });
    }
    if job.status != Status::Queued || job.attempt != attempt {
        return Ok(skipped(format!(
            "job is {} on attempt {}",
            job.status, job.attempt
        )));
    }

    // The ledger's not_before is the truth; the message's copy covers a ledger that has none.
    if let Some(until) = job.not_before.or(message.not_before)
        && until > clock.now
    {
        queue
            .change_visibility(&received.receipt_handle, hide_for(until, clock.now))
            .await?;
        return Err(LaunchFailure::Deferred {
            job_id,
            attempt,
            until,
        });
    }

    let ctx = CommandContext {
        actor: ACTOR.to_string(),
        correlation_id: loaded
            .correlation_id()
            .map_or_else(|| message.event_id.to_string(), str::to_string),
        causation_id: message.event_id.to_string(),
        now: clock.now,
        idempotency: None,
    };
    match launcher.launch(job_id, attempt).await {
        Ok(launched) => {
            let command = Command::RecordLaunch {
                attempt,
                task_arn: launched.task_arn.clone(),
                capacity: launched.capacity,
            };
            match loaded.execute(store, &command, &ctx).await {
                Ok(()) => {}
                // A fast worker may claim the attempt before this append: the launch still happened.
                Err(ExecuteError::Rejected(reason)) if is_already_handled(&reason) => {
                    tracing::debug!(%job_id, attempt, %reason, "TaskLaunched not recorded: job moved on")
                }
                Err(e) => return Err(e.into()),
            }
            Ok(LaunchOutcome::Launched {
                job_id,
                attempt,
                task_arn: launched.task_arn,
            })
        }
        Err(error) if error.retryable && received.receive_count < policy.record_failure_after => {
            Err(LaunchFailure::Launcher {
                job_id,
                attempt,
                error,
            })
        }
        Err(error) => {
            let command = Command::RecordLaunchFailure {
                attempt,
                reason: error.reason.clone(),
                retryable: error.retryable,
                clock,
            };
            match loaded.execute(store, &command, &ctx).await {
                Ok(()) => Ok(LaunchOutcome::LaunchFailed {
                    job_id,
                    attempt,
                    error,
                }),
                Err(ExecuteError::Rejected(reason)) if is_already_handled(&reason) => Ok(skipped(
                    format!("launch failed but the job moved on: {reason}"),
                )),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn log_outcome(outcome: &LaunchOutcome) {
    match outcome {
        LaunchOutcome::Launched {
            job_id,
            attempt,
            task_arn,
        } => tracing::info!(%job_id, attempt, task_arn, "worker launched"),
        LaunchOutcome::Skipped {
            job_id,
            attempt,
            reason,
        } => tracing::debug!(%job_id, attempt, reason, "launch skipped"),
        LaunchOutcome::LaunchFailed {
            job_id,
            attempt,
            error,
        } => tracing::warn!(%job_id, attempt, %error, "launch failure recorded"),
    }
}

/// Message groups (jobs) a launch batch works on at once.
pub const LAUNCH_CONCURRENCY: usize = 64;

/// What became of one message of a batch handled by [`launch_groups`].
#[derive(Debug)]
pub enum MessageResult {
    /// Handled: delete it.
    Done,
    /// Stopped its group; it stays hidden (deferred, or for the visibility timeout after a fault).
    Failed(LaunchFailure),
    /// Not tried because an earlier message of its group failed: hand it back to the queue.
    Untried,
}

/// Handles a batch of messages: the messages of one group (job) in order, stopping that group at
/// its first failure, and different groups concurrently (at most [`LAUNCH_CONCURRENCY`] at once),
/// as SQS FIFO allows. A body that is not a job message is found before anything runs; nothing
/// from it on is tried. Answers one result per message, in the batch's order.
pub async fn launch_groups<S: EventStore, Q: JobQueue, L: TaskLauncher, T: TimeSource + ?Sized>(
    store: &S,
    queue: &Q,
    launcher: &L,
    messages: &[ReceivedMessage],
    time: &T,
    policy: &LaunchPolicy,
) -> Vec<MessageResult> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<JobId, usize> = HashMap::new();
    // A body that is not a job message cuts the batch before anything runs: it fails and every
    // later message is handed back, exactly as if the batch had run one message at a time.
    let mut cut: Option<(usize, MalformedMessage)> = None;
    for (i, m) in messages.iter().enumerate() {
        let job_id = match JobMessage::from_body(&m.body) {
            Ok(message) => message.job_id,
            Err(e) => {
                cut = Some((i, e));
                break;
            }
        };
        let slot = *index.entry(job_id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(i);
    }
    let tasks = groups
        .into_iter()
        .map(|members| -> Task<'_, Vec<(usize, MessageResult)>> {
            Box::pin(async move {
                let mut results = Vec::with_capacity(members.len());
                let mut failed = false;
                for i in members {
                    if failed {
                        results.push((i, MessageResult::Untried));
                        continue;
                    }
                    // Read per message: a launch takes time, and each recorded failure gets its own jitter.
                    match launch_one(store, queue, launcher, &messages[i], time.clock(), policy)
                        .await
                    {
                        Ok(outcome) => {
                            log_outcome(&outcome);
                            results.push((i, MessageResult::Done));
                        }
                        Err(e) => {
                            failed = true;
                            results.push((i, MessageResult::Failed(e)));
                        }
                    }
                }
                results
            })
        })
        .collect();
    let per_group = run_bounded(tasks, LAUNCH_CONCURRENCY).await;
    let mut results: Vec<Option<MessageResult>> = messages.iter().map(|_| None).collect();
    for (i, result) in per_group.into_iter().flatten() {
        results[i] = Some(result);
    }
    if let Some((i, e)) = cut {
        results[i] = Some(MessageResult::Failed(e.into()));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(MessageResult::Untried))
        .collect()
}

/// Handles a batch of messages (see [`launch_groups`]) and reports it with the ordering contract of
/// [`crate::batch`]: the first message not handled and every later one are failed. Messages after
/// it may have been handled already; delivered again, they are skipped by the core.
/// Deleting the successful messages is the caller's job (Lambda does it from the report).
pub async fn launch_batch<S: EventStore, Q: JobQueue, L: TaskLauncher, T: TimeSource + ?Sized>(
    store: &S,
    queue: &Q,
    launcher: &L,
    messages: &[ReceivedMessage],
    time: &T,
    policy: &LaunchPolicy,
) -> BatchReport<LaunchFailure> {
    let results = launch_groups(store, queue, launcher, messages, time, policy).await;
    let Some(first) = results
        .iter()
        .position(|r| !matches!(r, MessageResult::Done))
    else {
        return BatchReport {
            failed_ids: Vec::new(),
            succeeded: messages.len(),
            error: None,
        };
    };
    // The first message not done failed: an untried one always follows a failed one of its group.
    let error = results.into_iter().find_map(|r| match r {
        MessageResult::Failed(e) => Some(e),
        _ => None,
    });
    BatchReport {
        failed_ids: messages[first..]
            .iter()
            .map(|m| m.message_id.clone())
            .collect(),
        succeeded: first,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferral_is_rounded_up_to_whole_seconds_and_capped() {
        let now = Utc::now();
        assert_eq!(
            hide_for(now + chrono::Duration::milliseconds(1500), now),
            Duration::from_secs(2)
        );
        assert_eq!(
            hide_for(now - chrono::Duration::seconds(1), now),
            Duration::ZERO
        );
        assert_eq!(
            hide_for(now + chrono::Duration::days(2), now),
            MAX_VISIBILITY
        );
    }

    #[test]
    fn a_message_ahead_of_its_job_comes_back_after_a_doubling_pause() {
        assert_eq!(not_queued_backoff(1), Duration::from_secs(1));
        assert_eq!(not_queued_backoff(3), Duration::from_secs(4));
        assert_eq!(not_queued_backoff(40), Duration::from_secs(60));
    }
}
