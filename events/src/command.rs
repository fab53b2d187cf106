//! Commands: what someone asks the job to do. Time and random values come in here, so deciding stays pure.

use chrono::{DateTime, Utc};

use crate::event::{Capacity, Usage};
use crate::spec::JobSpec;

/// The time and the random value a decision that may schedule a retry needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    /// Now.
    pub now: DateTime<Utc>,
    /// A uniform random value in `[0, 1)`, for backoff jitter.
    pub jitter: f64,
}

/// Every command a job accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Create the job.
    Submit(JobSpec),
    /// The dispatcher put the attempt on the queue.
    MarkQueued {
        /// The attempt.
        attempt: u32,
        /// The queue's message id.
        message_id: String,
    },
    /// The launcher started a task for the attempt.
    RecordLaunch {
        /// The attempt.
        attempt: u32,
        /// Task ARN or local id.
        task_arn: String,
        /// Where it runs.
        capacity: Capacity,
    },
    /// The launcher could not start a task.
    RecordLaunchFailure {
        /// The attempt.
        attempt: u32,
        /// Why.
        reason: String,
        /// Whether another attempt may help.
        retryable: bool,
        /// For the backoff.
        clock: Clock,
    },
    /// A worker claims the attempt.
    StartAttempt {
        /// The attempt.
        attempt: u32,
        /// The worker's identity.
        worker: String,
    },
    /// Progress and heartbeat, with an optional checkpoint.
    ReportProgress {
        /// The attempt.
        attempt: u32,
        /// Items done.
        done: u64,
        /// Items failed.
        failed: u64,
        /// Items in all.
        total: u64,
        /// Where the checkpoint is.
        checkpoint_uri: Option<String>,
    },
    /// The attempt finished with results.
    Succeed {
        /// The attempt.
        attempt: u32,
        /// Where the results are.
        result_uri: String,
        /// SHA-256 hex of the results.
        result_sha256: String,
        /// Items with a result.
        items_ok: u64,
        /// Items failed.
        items_failed: u64,
        /// Usage and cost.
        usage: Usage,
    },
    /// The attempt failed.
    FailAttempt {
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether another attempt may help.
        retryable: bool,
        /// For the backoff.
        clock: Clock,
    },
    /// The worker was stopped from outside (Spot); does not use up an attempt.
    Interrupt {
        /// The attempt.
        attempt: u32,
        /// e.g. `SpotInterruption`.
        reason: String,
        /// For the backoff.
        clock: Clock,
    },
    /// The sweeper found the attempt past its timeout or heartbeat.
    TimeOut {
        /// The attempt.
        attempt: u32,
        /// For the backoff.
        clock: Clock,
    },
    /// The worker stopped because it saw the cancellation.
    ConfirmCancel {
        /// The attempt.
        attempt: u32,
    },
    /// Cancel the job.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Run a failed or cancelled job again, by hand.
    Retry {
        /// Now (the retry is not delayed).
        now: DateTime<Utc>,
    },
}

impl Command {
    /// A short name for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Submit(_) => "submit",
            Command::MarkQueued { .. } => "mark_queued",
            Command::RecordLaunch { .. } => "record_launch",
            Command::RecordLaunchFailure { .. } => "record_launch_failure",
            Command::StartAttempt { .. } => "start_attempt",
            Command::ReportProgress { .. } => "report_progress",
            Command::Succeed { .. } => "succeed",
            Command::FailAttempt { .. } => "fail_attempt",
            Command::Interrupt { .. } => "interrupt",
            Command::TimeOut { .. } => "time_out",
            Command::ConfirmCancel { .. } => "confirm_cancel",
            Command::Cancel { .. } => "cancel",
            Command::Retry { .. } => "retry",
        }
    }

    /// The attempt the command is about, if any.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Command::MarkQueued { attempt, .. }
            | Command::RecordLaunch { attempt, .. }
            | Command::RecordLaunchFailure { attempt, .. }
            | Command::StartAttempt { attempt, .. }
            | Command::ReportProgress { attempt, .. }
            | Command::Succeed { attempt, .. }
            | Command::FailAttempt { attempt, .. }
            | Command::Interrupt { attempt, .. }
            | Command::TimeOut { attempt, .. }
            | Command::ConfirmCancel { attempt } => Some(*attempt),
            _ => None,
        }
    }
}
