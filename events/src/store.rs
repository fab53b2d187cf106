//! The `EventStore` port: load a job's history, append with an expected version, and the change feed.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{Hash, RecordedEvent};
use crate::ids::JobId;
use crate::job::Job;

/// An `Idempotency-Key` claimed by a submission, stored in the same transaction as its `JobSubmitted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// `<api key id>#<Idempotency-Key>`.
    pub key: String,
    /// The job the key created.
    pub job_id: JobId,
    /// SHA-256 (hex) of the request body, to tell a replay from a different request.
    pub fingerprint: String,
    /// When it was claimed (records expire 24 h later).
    pub created_at: DateTime<Utc>,
}

/// Events to append to one job, all or nothing.
#[derive(Clone, Debug)]
pub struct AppendBatch {
    /// The job.
    pub job_id: JobId,
    /// The version the caller saw; the batch's events are `expected_version + 1 …`.
    pub expected_version: u64,
    /// The events, in order, with versions and hashes filled in.
    pub events: Vec<RecordedEvent>,
    /// A key to claim atomically with the events (only with `JobSubmitted`).
    pub idempotency: Option<IdempotencyRecord>,
}

/// What can go wrong in a store. The API maps `Conflict` and `IdempotencyKeyTaken` to 409/422
/// (after retries), `Corrupt` to 500, `Backend` to 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended first: the version is taken.
    #[error("version conflict on job {job_id}: expected version {expected}")]
    Conflict {
        /// The job.
        job_id: JobId,
        /// The version the appender expected to be the head.
        expected: u64,
    },
    /// The idempotency key was already claimed; nothing was appended.
    #[error("idempotency key already used for job {}", .existing.job_id)]
    IdempotencyKeyTaken {
        /// The earlier claim.
        existing: IdempotencyRecord,
    },
    /// A stored item cannot be decoded. Never skipped silently.
    #[error("corrupt event in job {job_id} at version {version:?}: {reason}")]
    Corrupt {
        /// The job.
        job_id: String,
        /// The version, if readable.
        version: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The database itself failed.
    #[error("store backend error{}: {source}", if *.retryable { " (retryable)" } else { "" })]
    Backend {
        /// Whether trying again may help (throttling, busy, timeouts).
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A backend error from any cause.
    pub fn backend(
        retryable: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            retryable,
            source: source.into(),
        }
    }

    /// Whether a retry of the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::Backend {
                    retryable: true,
                    ..
                }
        )
    }
}

/// The newest event of a job: what the next appended event chains from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobHead {
    /// Its version (the job's version).
    pub version: u64,
    /// Its hash: the next event's `prev_hash`.
    pub hash: Hash,
    /// When it was recorded: the next event is never recorded earlier.
    pub at: DateTime<Utc>,
    /// Its id: the cause of an event that continues the chain.
    pub event_id: Uuid,
    /// Its correlation id, which an event that continues the chain keeps.
    pub correlation_id: String,
}

impl JobHead {
    /// The head fields of a stored event.
    pub fn of(e: &RecordedEvent) -> Self {
        JobHead {
            version: e.version,
            hash: e.hash,
            at: e.at,
            event_id: e.event_id,
            correlation_id: e.correlation_id.clone(),
        }
    }
}

/// A job folded from its stored history, without the history: what `execute` decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadedJob {
    /// The aggregate (`Job::default()` for a job with no events).
    pub job: Job,
    /// Its newest event; `None` for a job with no events.
    pub head: Option<JobHead>,
}

impl LoadedJob {
    /// Folds a history loaded in full; an event that does not decode is `Corrupt`.
    pub fn fold(job_id: JobId, history: &[RecordedEvent]) -> Result<Self, StoreError> {
        let mut job = Job::default();
        for e in history {
            let event = e.decode().map_err(|err| StoreError::Corrupt {
                job_id: job_id.to_string(),
                version: Some(e.version),
                reason: err.to_string(),
            })?;
            job.absorb(event);
        }
        Ok(LoadedJob {
            job,
            head: history.last().map(JobHead::of),
        })
    }
}

/// The ledger: per-job histories with conditional appends.
pub trait EventStore: Send + Sync {
    /// A job's whole history in version order (empty if the job does not exist).
    fn load(
        &self,
        job_id: JobId,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The job folded from its whole history, and its newest event: [`EventStore::load`] then
    /// [`LoadedJob::fold`], unless a store can fold without building every `RecordedEvent`.
    /// A stored event that cannot be read or decoded is `Corrupt`, as in `load`.
    fn load_job(
        &self,
        job_id: JobId,
    ) -> impl Future<Output = Result<LoadedJob, StoreError>> + Send {
        async move {
            let history = self.load(job_id).await?;
            LoadedJob::fold(job_id, &history)
        }
    }

    /// Appends a batch if the job's head is still `expected_version`; else `Conflict` and nothing is written.
    fn append(&self, batch: AppendBatch) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Looks up a claimed idempotency key.
    fn idempotency(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>, StoreError>> + Send;
}

/// One event of the change feed, with its global position.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEvent {
    /// Global, increasing position in the feed.
    pub seq: u64,
    /// The event.
    pub event: RecordedEvent,
}

/// An ordered change feed with a checkpoint per consumer (the embedded store; on AWS this is the DynamoDB stream).
pub trait ChangeFeed: Send + Sync {
    /// Events after `seq`, in feed order, at most `limit`.
    fn read_after(
        &self,
        seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<FeedEvent>, StoreError>> + Send;

    /// Resolves once the feed holds an event after `seq` (woken on commit, no polling).
    fn wait_after(&self, seq: u64) -> impl Future<Output = ()> + Send;

    /// The consumer's saved position (0 if none).
    fn checkpoint(&self, consumer: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Saves the consumer's position.
    fn save_checkpoint(
        &self,
        consumer: &str,
        seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
