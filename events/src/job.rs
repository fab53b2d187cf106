//! The `Job` aggregate: `decide` turns a command into events, `evolve` folds an event into state.
//! Both are pure and synchronous.
//!
//! # State machine
//!
//! Checked in this order: a job that does not exist answers every command but `submit` with
//! `NotFound`; an existing job answers `submit` with `AlreadyExists` (even once finished); a finished
//! job (`SUCCEEDED`, `FAILED`, `CANCELLED`) answers everything else but `retry` with
//! `AlreadyFinished`; a command naming an attempt other than the current one is `StaleAttempt`.
//! Then:
//!
//! | from | command | events appended | to |
//! |---|---|---|---|
//! | (none) | `submit` (valid spec) | `JobSubmitted` | `SUBMITTED` |
//! | (none) | `submit` (invalid spec) | — `Invalid` (one message per field) | — |
//! | any existing | `submit` | — `AlreadyExists` | — |
//! | `SUBMITTED`, `RETRY_WAIT` | `mark_queued` | `JobQueued` | `QUEUED` |
//! | `QUEUED` | `record_launch` | `TaskLaunched` | `LAUNCHING` |
//! | `RUNNING`, `CANCELLING` | `record_launch` | `TaskLaunched` (late: the worker claimed first)³ | unchanged |
//! | `QUEUED`, `LAUNCHING` | `record_launch_failure` | `LaunchFailed` + retry-or-fail¹ | `RETRY_WAIT` / `FAILED` |
//! | `QUEUED`, `LAUNCHING` | `start_attempt` | `AttemptStarted` | `RUNNING` |
//! | `RUNNING`, `CANCELLING` | `report_progress` | `ProgressReported` | unchanged |
//! | `RUNNING`, `CANCELLING` | `succeed` | `JobSucceeded` | `SUCCEEDED` |
//! | `LAUNCHING`, `RUNNING` | `fail_attempt` | `AttemptFailed` + retry-or-fail¹ | `RETRY_WAIT` / `FAILED` |
//! | `LAUNCHING`, `RUNNING` | `interrupt` | `WorkerInterrupted` + `RetryScheduled` (now)² | `RETRY_WAIT` / `FAILED` |
//! | `LAUNCHING`, `RUNNING` | `time_out` | `AttemptTimedOut` + retry-or-fail¹ | `RETRY_WAIT` / `FAILED` |
//! | `CANCELLING` | `fail_attempt` | `AttemptFailed` + `JobCancelled` | `CANCELLED` |
//! | `CANCELLING` | `interrupt` | `WorkerInterrupted` + `JobCancelled` | `CANCELLED` |
//! | `CANCELLING` | `time_out` | `AttemptTimedOut` + `JobCancelled` | `CANCELLED` |
//! | `CANCELLING` | `confirm_cancel` | `JobCancelled` | `CANCELLED` |
//! | `SUBMITTED`, `QUEUED`, `LAUNCHING`, `RETRY_WAIT` | `cancel` | `CancelRequested` + `JobCancelled` | `CANCELLED` |
//! | `RUNNING` | `cancel` | `CancelRequested` | `CANCELLING` |
//! | `CANCELLING` | `cancel` | — `AlreadyCancelling` | — |
//! | `FAILED`, `CANCELLED` | `retry` | `RetryScheduled` (next attempt, now; budgets reset) | `RETRY_WAIT` |
//! | `SUCCEEDED` | `retry` | — `AlreadyFinished` | — |
//! | any other pair | any | — `IllegalTransition` | — |
//!
//! ¹ retry-or-fail: a non-retryable failure appends `JobFailed`. A retryable one counts against
//! `max_attempts`; while attempts remain it appends `RetryScheduled` for the next attempt with
//! `not_before = now + jitter × min(15 min, 5 s × 2^(failures − 1))` (exponential backoff, full jitter),
//! otherwise `JobFailed`.
//!
//! ² an interruption (Spot reclaim) does not use up an attempt, but a job may be interrupted at most
//! 10 times: the 10th interruption appends `JobFailed`.
//!
//! ³ a worker can start before the launcher's append lands (an in-process worker always can; on
//! ECS a retried append can be late): the task is still recorded, and the status stays.
//!
//! `report_progress` and `succeed` are refused with `InvalidProgress` when `done + failed > total`,
//! when a count is above 2^53 − 1 (the ledger stores numbers as RFC 8785 doubles), or when a usage
//! figure (`vcpu`, `cost_usd`) is negative or not finite.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::command::{Clock, Command};
use crate::event::{self, JobEvent};
use crate::rejection::Rejection;
use crate::spec::limits::MAX_SAFE_INTEGER;
use crate::spec::{JobInput, JobSpec};

/// The most interruptions a job survives; the last one fails it.
pub const MAX_INTERRUPTIONS: u32 = 10;
/// First backoff ceiling.
pub const BACKOFF_BASE: Duration = Duration::seconds(5);
/// Largest backoff ceiling.
pub const BACKOFF_CAP: Duration = Duration::minutes(15);

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Not submitted (no events).
    #[default]
    New,
    /// Accepted, not yet on the queue.
    Submitted,
    /// On the work queue.
    Queued,
    /// A worker task was started.
    Launching,
    /// A worker claimed the attempt.
    Running,
    /// Waiting for the next attempt.
    RetryWait,
    /// Finished with results.
    Succeeded,
    /// Gave up.
    Failed,
    /// Cancel requested; the worker is stopping.
    Cancelling,
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 10] = [
        Status::New,
        Status::Submitted,
        Status::Queued,
        Status::Launching,
        Status::Running,
        Status::RetryWait,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelling,
        Status::Cancelled,
    ];

    /// The wire name, e.g. `RETRY_WAIT`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Submitted => "SUBMITTED",
            Status::Queued => "QUEUED",
            Status::Launching => "LAUNCHING",
            Status::Running => "RUNNING",
            Status::RetryWait => "RETRY_WAIT",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Cancelling => "CANCELLING",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing but a manual retry can follow.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state, folded from its events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Job {
    /// Events folded so far.
    pub version: u64,
    /// Current status.
    pub status: Status,
    /// The submitted spec.
    pub spec: Option<JobSpec>,
    /// The current attempt (1-based; 0 before submit).
    pub attempt: u32,
    /// Failed attempts counted against `max_attempts` (reset by a manual retry).
    pub failures: u32,
    /// Interruptions (reset by a manual retry).
    pub interruptions: u32,
    /// Items done, failed, total, as last reported.
    pub done: u64,
    /// Items failed so far.
    pub failed: u64,
    /// Items in the job.
    pub total: u64,
    /// The latest checkpoint, which the next attempt resumes from.
    pub checkpoint_uri: Option<String>,
    /// The current attempt's task.
    pub task_arn: Option<String>,
    /// Not to launch before (after a scheduled retry).
    pub not_before: Option<DateTime<Utc>>,
    /// The result, once succeeded.
    pub result: Option<event::Succeeded>,
    /// The last error.
    pub error: Option<String>,
}

/// The body of `evolve` (borrowed event, `clone`) and of `absorb` (owned event, `moved`): one
/// fold, written once, whichever way the event's strings reach the state.
macro_rules! fold_event {
    ($job:ident, $e:expr, $take:ident) => {{
        $job.version += 1;
        match $e {
            JobEvent::JobSubmitted(spec) => {
                $job.status = Status::Submitted;
                $job.attempt = 1;
                $job.total = match &spec.input {
                    JobInput::Items { items } => items.len() as u64,
                    JobInput::Uri { .. } => 0,
                };
                $job.spec = Some($take!(spec));
            }
            JobEvent::JobQueued(_) => $job.status = Status::Queued,
            JobEvent::TaskLaunched(p) => {
                if $job.status == Status::Queued {
                    $job.status = Status::Launching;
                }
                $job.task_arn = Some($take!(p.task_arn));
            }
            JobEvent::LaunchFailed(p) => {
                $job.failures += 1;
                $job.error = Some($take!(p.reason));
            }
            JobEvent::AttemptStarted(_) => $job.status = Status::Running,
            JobEvent::ProgressReported(p) => {
                $job.done = p.done;
                $job.failed = p.failed;
                $job.total = p.total;
                if p.checkpoint_uri.is_some() {
                    $job.checkpoint_uri = $take!(p.checkpoint_uri);
                }
            }
            JobEvent::AttemptFailed(p) => {
                $job.failures += 1;
                $job.error = Some($take!(p.error));
            }
            JobEvent::WorkerInterrupted(_) => $job.interruptions += 1,
            JobEvent::AttemptTimedOut(p) => {
                $job.failures += 1;
                $job.error = Some(format!("attempt {} timed out", p.attempt));
            }
            JobEvent::RetryScheduled(p) => {
                if $job.status.is_terminal() {
                    $job.failures = 0;
                    $job.interruptions = 0;
                    $job.result = None;
                }
                $job.status = Status::RetryWait;
                $job.attempt = p.next_attempt;
                $job.not_before = Some(p.not_before);
                $job.task_arn = None;
            }
            JobEvent::JobSucceeded(p) => {
                $job.status = Status::Succeeded;
                $job.done = p.items_ok;
                $job.failed = p.items_failed;
                $job.result = Some($take!(p));
            }
            JobEvent::JobFailed(p) => {
                $job.status = Status::Failed;
                $job.error = Some($take!(p.reason));
            }
            JobEvent::CancelRequested(_) => $job.status = Status::Cancelling,
            JobEvent::JobCancelled(_) => $job.status = Status::Cancelled,
        }
    }};
}

/// How `evolve` takes a string from a borrowed event.
macro_rules! clone {
    ($x:expr) => {
        $x.clone()
    };
}

/// How `absorb` takes a string from an owned event.
macro_rules! moved {
    ($x:expr) => {
        $x
    };
}

impl Job {
    /// Folds a whole history.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a JobEvent>) -> Job {
        events.into_iter().fold(Job::default(), Job::evolve)
    }

    /// Decides which events a command produces, or why it is refused.
    pub fn decide(&self, cmd: &Command) -> Result<Vec<JobEvent>, Rejection> {
        use Status::*;
        match (self.status, cmd) {
            (New, Command::Submit(spec)) => {
                spec.validate().map_err(Rejection::Invalid)?;
                return Ok(vec![JobEvent::JobSubmitted(spec.as_recorded())]);
            }
            (New, _) => return Err(Rejection::NotFound),
            (_, Command::Submit(_)) => return Err(Rejection::AlreadyExists),
            (Succeeded, _) => return Err(Rejection::AlreadyFinished(self.status)),
            (Failed | Cancelled, c) if !matches!(c, Command::Retry { .. }) => {
                return Err(Rejection::AlreadyFinished(self.status));
            }
            _ => {}
        }
        if let Some(got) = cmd.attempt()
            && got != self.attempt
        {
            return Err(Rejection::StaleAttempt {
                current: self.attempt,
                got,
            });
        }
        let illegal = || Rejection::IllegalTransition {
            from: self.status,
            command: cmd.name(),
        };
        let attempt = self.attempt;
        match (self.status, cmd) {
            (Submitted | RetryWait, Command::MarkQueued { message_id, .. }) => {
                Ok(vec![JobEvent::JobQueued(event::Queued {
                    attempt,
                    message_id: message_id.clone(),
                })])
            }
            (
                Queued | Running | Cancelling,
                Command::RecordLaunch {
                    task_arn, capacity, ..
                },
            ) => Ok(vec![JobEvent::TaskLaunched(event::Launched {
                attempt,
                task_arn: task_arn.clone(),
                capacity: *capacity,
            })]),
            (
                Queued | Launching,
                Command::RecordLaunchFailure {
                    reason,
                    retryable,
                    clock,
                    ..
                },
            ) => {
                let mut events = vec![JobEvent::LaunchFailed(event::LaunchFailure {
                    attempt,
                    reason: reason.clone(),
                    retryable: *retryable,
                })];
                events.push(self.retry_or_fail(*retryable, reason, clock));
                Ok(events)
            }
            (Queued | Launching, Command::StartAttempt { worker, .. }) => {
                Ok(vec![JobEvent::AttemptStarted(event::Started {
                    attempt,
                    worker: worker.clone(),
                })])
            }
            (
                Running | Cancelling,
                Command::ReportProgress {
                    done,
                    failed,
                    total,
                    checkpoint_uri,
                    ..
                },
            ) => {
                for (name, value) in [("done", *done), ("failed", *failed), ("total", *total)] {
                    safe_count(name, value)?;
                }
                // Both are at most 2^53 − 1 here, so the sum cannot overflow.
                if done + failed > *total {
                    return Err(Rejection::InvalidProgress(format!(
                        "done {done} + failed {failed} is more than total {total}"
                    )));
                }
                Ok(vec![JobEvent::ProgressReported(event::Progress {
                    attempt,
                    done: *done,
                    failed: *failed,
                    total: *total,
                    checkpoint_uri: checkpoint_uri.clone(),
                })])
            }
            (
                Running | Cancelling,
                Command::Succeed {
                    result_uri,
                    result_sha256,
                    items_ok,
                    items_failed,
                    usage,
                    ..
                },
            ) => {
                safe_count("items_ok", *items_ok)?;
                safe_count("items_failed", *items_failed)?;
                check_usage(usage)?;
                Ok(vec![JobEvent::JobSucceeded(event::Succeeded {
                    attempt,
                    result_uri: result_uri.clone(),
                    result_sha256: result_sha256.clone(),
                    items_ok: *items_ok,
                    items_failed: *items_failed,
                    usage: usage.clone(),
                })])
            }
            (
                Launching | Running,
                Command::FailAttempt {
                    error,
                    retryable,
                    clock,
                    ..
                },
            ) => Ok(vec![
                JobEvent::AttemptFailed(event::AttemptFailure {
                    attempt,
                    error: error.clone(),
                    retryable: *retryable,
                }),
                self.retry_or_fail(*retryable, error, clock),
            ]),
            (Launching | Running, Command::Interrupt { reason, clock, .. }) => {
                let interrupted = JobEvent::WorkerInterrupted(event::Interrupted {
                    attempt,
                    reason: reason.clone(),
                });
                let next = if self.interruptions + 1 >= MAX_INTERRUPTIONS {
                    JobEvent::JobFailed(event::Failed {
                        reason: format!("interrupted {MAX_INTERRUPTIONS} times (last: {reason})"),
                    })
                } else {
                    JobEvent::RetryScheduled(event::RetryScheduled {
                        next_attempt: attempt + 1,
                        not_before: clock.now,
                    })
                };
                Ok(vec![interrupted, next])
            }
            (Launching | Running, Command::TimeOut { clock, .. }) => Ok(vec![
                JobEvent::AttemptTimedOut(event::TimedOut { attempt }),
                self.retry_or_fail(true, &format!("attempt {attempt} timed out"), clock),
            ]),
            (
                Cancelling,
                Command::FailAttempt {
                    error, retryable, ..
                },
            ) => Ok(vec![
                JobEvent::AttemptFailed(event::AttemptFailure {
                    attempt,
                    error: error.clone(),
                    retryable: *retryable,
                }),
                cancelled(),
            ]),
            (Cancelling, Command::Interrupt { reason, .. }) => Ok(vec![
                JobEvent::WorkerInterrupted(event::Interrupted {
                    attempt,
                    reason: reason.clone(),
                }),
                cancelled(),
            ]),
            (Cancelling, Command::TimeOut { .. }) => Ok(vec![
                JobEvent::AttemptTimedOut(event::TimedOut { attempt }),
                cancelled(),
            ]),
            (Cancelling, Command::ConfirmCancel { .. }) => Ok(vec![cancelled()]),
            (Submitted | Queued | Launching | RetryWait, Command::Cancel { reason }) => Ok(vec![
                JobEvent::CancelRequested(event::CancelRequested {
                    reason: reason.clone(),
                }),
                cancelled(),
            ]),
            (Running, Command::Cancel { reason }) => {
                Ok(vec![JobEvent::CancelRequested(event::CancelRequested {
                    reason: reason.clone(),
                })])
            }
            (Cancelling, Command::Cancel { .. }) => Err(Rejection::AlreadyCancelling),
            (Failed | Cancelled, Command::Retry { now }) => {
                Ok(vec![JobEvent::RetryScheduled(event::RetryScheduled {
                    next_attempt: attempt + 1,
                    not_before: *now,
                })])
            }
            _ => Err(illegal()),
        }
    }

    /// After a failed attempt: schedule the next one with backoff, or give up.
    fn retry_or_fail(&self, retryable: bool, error: &str, clock: &Clock) -> JobEvent {
        let max_attempts = self.spec.as_ref().map_or(1, |s| s.max_attempts);
        let failures = self.failures + 1;
        if !retryable {
            return JobEvent::JobFailed(event::Failed {
                reason: error.to_string(),
            });
        }
        if failures >= max_attempts {
            return JobEvent::JobFailed(event::Failed {
                reason: format!("gave up after {failures} failed attempt(s): {error}"),
            });
        }
        JobEvent::RetryScheduled(event::RetryScheduled {
            next_attempt: self.attempt + 1,
            // Only a clock near the end of chrono's range could overflow; then retry at once.
            not_before: clock
                .now
                .checked_add_signed(backoff(failures, clock.jitter))
                .unwrap_or(clock.now),
        })
    }

    /// Folds one event into the state. Never decides anything.
    pub fn evolve(mut self, e: &JobEvent) -> Job {
        fold_event!(self, e, clone);
        self
    }

    /// [`Job::evolve`] in place, taking the event's strings instead of copying them: a replay
    /// owns the events it decodes and drops them right after.
    pub fn absorb(&mut self, e: JobEvent) {
        fold_event!(self, e, moved);
    }
}

/// Counts are stored as JSON numbers, which RFC 8785 reads as IEEE doubles: larger integers would
/// be recorded rounded (or, from 10^21 up, in exponent form that no longer decodes as an integer).
fn safe_count(name: &str, value: u64) -> Result<(), Rejection> {
    if value > MAX_SAFE_INTEGER {
        return Err(Rejection::InvalidProgress(format!(
            "{name} {value} is more than {MAX_SAFE_INTEGER} (2^53 - 1), the largest count the ledger stores exactly"
        )));
    }
    Ok(())
}

/// A usage figure the ledger cannot store exactly (NaN, infinities, huge counts) would make the
/// recorded `JobSucceeded` differ from, or fail to decode into, the event that was decided.
fn check_usage(usage: &event::Usage) -> Result<(), Rejection> {
    for (name, value) in [
        ("usage.duration_ms", usage.duration_ms),
        ("usage.memory_mb", usage.memory_mb),
        ("usage.input_tokens", usage.input_tokens),
        ("usage.output_tokens", usage.output_tokens),
    ] {
        safe_count(name, value)?;
    }
    for (name, value) in [
        ("usage.vcpu", usage.vcpu),
        ("usage.cost_usd", usage.cost_usd),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(Rejection::InvalidProgress(format!(
                "{name} must be a finite number of at least 0, got {value}"
            )));
        }
    }
    Ok(())
}

fn cancelled() -> JobEvent {
    JobEvent::JobCancelled(event::Cancelled {})
}

/// Full-jitter exponential backoff after the `failures`-th failure: `jitter × min(cap, base × 2^(failures−1))`.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let ceiling_ms = (BACKOFF_BASE.num_milliseconds() << exp).min(BACKOFF_CAP.num_milliseconds());
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Duration::milliseconds((ceiling_ms as f64 * jitter) as i64)
}
