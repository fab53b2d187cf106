//! Why a command was refused. Each variant documents the HTTP status the API maps it to.

use crate::job::Status;
use crate::spec::FieldError;

/// A command the job refused; nothing was appended.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The spec breaks a limit (HTTP 422).
    #[error("invalid job: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Submit on a job that already exists (HTTP 409).
    #[error("job already exists")]
    AlreadyExists,
    /// A command for a job that was never submitted (HTTP 404).
    #[error("job not found")]
    NotFound,
    /// A command for a job that has finished (HTTP 409).
    #[error("job already finished as {0}")]
    AlreadyFinished(Status),
    /// A command about an attempt that is not the current one (HTTP 409).
    #[error("attempt {got} is stale: the job is on attempt {current}")]
    StaleAttempt {
        /// The job's current attempt.
        current: u32,
        /// The attempt the command named.
        got: u32,
    },
    /// A cancel for a job already being cancelled (HTTP 409).
    #[error("cancellation already requested")]
    AlreadyCancelling,
    /// Progress or result figures that do not add up or cannot be stored exactly (HTTP 422).
    #[error("invalid progress: {0}")]
    InvalidProgress(String),
    /// Any other (status, command) pair the state machine does not list (HTTP 409).
    #[error("cannot {command} a job that is {from}")]
    IllegalTransition {
        /// The job's status.
        from: Status,
        /// The command's name.
        command: &'static str,
    },
}

impl Rejection {
    /// The HTTP status this rejection maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::Invalid(_) | Rejection::InvalidProgress(_) => 422,
            Rejection::NotFound => 404,
            _ => 409,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_job",
            Rejection::AlreadyExists => "already_exists",
            Rejection::NotFound => "not_found",
            Rejection::AlreadyFinished(_) => "already_finished",
            Rejection::StaleAttempt { .. } => "stale_attempt",
            Rejection::AlreadyCancelling => "already_cancelling",
            Rejection::InvalidProgress(_) => "invalid_progress",
            Rejection::IllegalTransition { .. } => "illegal_transition",
        }
    }
}
