//! Why a notification could not be delivered, and whether trying again may help.

use jobledger_events::JobId;
use jobledger_events::store::StoreError;
use jobledger_projections::ProjectionError;

use super::state::StateError;

/// A failed delivery. Messages never hold tokens or webhook URLs.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The service answered with an error (HTTP status, Slack `ok: false`, Notion error object).
    #[error("{service} answered {status} {code}: {message}")]
    Remote {
        /// `slack` or `notion`.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// Slack's `error` or Notion's `code`.
        code: String,
        /// More detail, if given.
        message: String,
        /// Whether trying again may help (rate limits, outages, conflicts).
        retryable: bool,
    },
    /// The request did not get an answer (connection refused, timeout).
    #[error("{service} request failed: {message}")]
    Transport {
        /// `slack` or `notion`.
        service: &'static str,
        /// What happened.
        message: String,
    },
    /// A 2xx answer that is not what the API documents.
    #[error("{service} answered something unexpected: {message}")]
    BadResponse {
        /// `slack` or `notion`.
        service: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Loading the job's history failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sink's state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The history cannot be folded into a view.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The feed delivered a version the ledger does not return yet.
    #[error("job {job_id}: delivered version {version} but the ledger holds {head}")]
    Behind {
        /// The job.
        job_id: JobId,
        /// The delivered version.
        version: u64,
        /// The ledger's head.
        head: u64,
    },
}

impl NotifyError {
    /// Whether delivering the same record again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Remote { retryable, .. } => *retryable,
            NotifyError::Transport { .. } | NotifyError::Behind { .. } => true,
            NotifyError::BadResponse { .. } | NotifyError::Projection(_) => false,
            NotifyError::Store(e) => e.is_retryable(),
            NotifyError::State(e) => e.is_retryable(),
        }
    }
}
