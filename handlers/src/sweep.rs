//! The sweep core: attempts that ran past their `timeout_s`, or whose worker went silent, are timed out.
//!
//! The read model only nominates candidates (it may lag); each nominee is checked again against its
//! ledger history before `time_out` is issued, and the job decides whether to retry or fail.

use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use jobledger_events::execute::{ExecuteError, fold};
use jobledger_events::{
    Clock, Command, CommandContext, EventStore, JobEvent, JobId, RecordedEvent, Status, execute,
};

use crate::dispatch::is_already_handled;
use crate::ports::TimeSource;

/// The actor recorded on the events the sweeper appends.
pub const ACTOR: &str = "system:sweeper";

/// What the sweeper needs to know about a job; callers build it from the read model (or use
/// [`SweepCandidate::from_history`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SweepCandidate {
    /// The job.
    pub job_id: JobId,
    /// Its status; only `LAUNCHING`, `RUNNING` and `CANCELLING` can be overdue.
    pub status: Status,
    /// The current attempt.
    pub attempt: u32,
    /// When the current attempt was launched (or claimed, if its launch was not recorded).
    pub attempt_started_at: Option<DateTime<Utc>>,
    /// The worker's last sign of life for the current attempt (claim or progress).
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The job's limit per attempt, in seconds.
    pub timeout_s: u32,
}

/// Tuning of the sweeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepPolicy {
    /// An attempt whose worker has been silent this long (since its last heartbeat, or since the
    /// launch if it never claimed the attempt) is timed out.
    pub heartbeat_limit: Duration,
}

impl Default for SweepPolicy {
    fn default() -> Self {
        // Workers report every few seconds; five minutes also covers a slow Fargate image pull.
        SweepPolicy {
            heartbeat_limit: Duration::minutes(5),
        }
    }
}

/// Why an attempt is overdue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// It ran longer than the job's `timeout_s`.
    Timeout {
        /// Time since the attempt started.
        elapsed: Duration,
    },
    /// Its worker has been silent longer than the heartbeat limit.
    Silent {
        /// Time since the last sign of life.
        silent_for: Duration,
    },
}

impl SweepCandidate {
    /// Folds a job's ledger history into a candidate (for any status; see [`SweepCandidate::overdue`]).
    pub fn from_history(
        job_id: JobId,
        history: &[RecordedEvent],
    ) -> Result<SweepCandidate, ExecuteError> {
        let (job, _) = fold(job_id, history)?;
        let mut launched_at = None;
        let mut claimed_at = None;
        let mut heartbeat_at = None;
        for e in history {
            let event = e.decode().map_err(|err| ExecuteError::Corrupt {
                job_id,
                version: e.version,
                reason: err.to_string(),
            })?;
            if event.attempt() != Some(job.attempt) {
                continue;
            }
            match event {
                JobEvent::TaskLaunched(_) => launched_at = Some(e.at),
                JobEvent::AttemptStarted(_) => {
                    claimed_at = Some(e.at);
                    heartbeat_at = Some(e.at);
                }
                JobEvent::ProgressReported(_) => heartbeat_at = Some(e.at),
                _ => {}
            }
        }
        Ok(SweepCandidate {
            job_id,
            status: job.status,
            attempt: job.attempt,
            attempt_started_at: launched_at.or(claimed_at),
            heartbeat_at,
            timeout_s: job.spec.as_ref().map_or(0, |s| s.timeout_s),
        })
    }

    /// Whether the current attempt is overdue at `now`, and why (the timeout wins over silence).
    pub fn overdue(&self, now: DateTime<Utc>, policy: &SweepPolicy) -> Option<Overdue> {
        if !matches!(
            self.status,
            Status::Launching | Status::Running | Status::Cancelling
        ) {
            return None;
        }
        let started = self.attempt_started_at?;
        let elapsed = now - started;
        if elapsed > Duration::seconds(i64::from(self.timeout_s)) {
            return Some(Overdue::Timeout { elapsed });
        }
        let silent_for = now - self.heartbeat_at.unwrap_or(started);
        (silent_for > policy.heartbeat_limit).then_some(Overdue::Silent { silent_for })
    }
}

/// Lists the jobs the sweeper should look at (typically every job not yet finished).
pub trait CandidateSource: Send + Sync {
    /// The current candidates.
    fn candidates(
        &self,
    ) -> impl Future<Output = Result<Vec<SweepCandidate>, Box<dyn std::error::Error + Send + Sync>>> + Send;
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Attempts timed out now, and why.
    pub timed_out: Vec<(JobId, u32, Overdue)>,
    /// Jobs that could not be checked or timed out; the next sweep tries again.
    pub errors: Vec<(JobId, ExecuteError)>,
}

/// Checks one nominee against its ledger and times its attempt out if it is still overdue.
pub async fn sweep_one<S: EventStore>(
    store: &S,
    job_id: JobId,
    policy: &SweepPolicy,
    clock: Clock,
) -> Result<Option<(u32, Overdue)>, ExecuteError> {
    let history = store.load(job_id).await?;
    let current = SweepCandidate::from_history(job_id, &history)?;
    let Some(why) = current.overdue(clock.now, policy) else {
        return Ok(None);
    };
    let ctx = CommandContext::new(ACTOR, clock.now);
    let command = Command::TimeOut {
        attempt: current.attempt,
        clock,
    };
    match execute(store, job_id, &command, &ctx).await {
        Ok(_) => Ok(Some((current.attempt, why))),
        // The worker finished or the job moved on between the load and the append.
        Err(ExecuteError::Rejected(reason)) if is_already_handled(&reason) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sweeps the candidates: each one the read model shows overdue is re-checked and timed out.
/// Jobs are independent, so one failure does not stop the others.
pub async fn sweep<S: EventStore, T: TimeSource + ?Sized>(
    store: &S,
    candidates: &[SweepCandidate],
    policy: &SweepPolicy,
    time: &T,
) -> SweepReport {
    let mut report = SweepReport::default();
    for candidate in candidates {
        // Each job gets its own jitter, so jobs timed out together do not retry together.
        let clock = time.clock();
        if candidate.overdue(clock.now, policy).is_none() {
            continue;
        }
        match sweep_one(store, candidate.job_id, policy, clock).await {
            Ok(Some((attempt, why))) => {
                tracing::warn!(job_id = %candidate.job_id, attempt, ?why, "attempt timed out");
                report.timed_out.push((candidate.job_id, attempt, why));
            }
            Ok(None) => {}
            Err(e) => report.errors.push((candidate.job_id, e)),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(
        status: Status,
        started_ago_s: i64,
        heartbeat_ago_s: Option<i64>,
        now: DateTime<Utc>,
    ) -> SweepCandidate {
        SweepCandidate {
            job_id: JobId::new(),
            status,
            attempt: 1,
            attempt_started_at: Some(now - Duration::seconds(started_ago_s)),
            heartbeat_at: heartbeat_ago_s.map(|s| now - Duration::seconds(s)),
            timeout_s: 600,
        }
    }

    #[test]
    fn an_attempt_past_its_timeout_is_overdue_even_with_fresh_heartbeats() {
        let now = Utc::now();
        let c = candidate(Status::Running, 601, Some(1), now);
        assert!(matches!(
            c.overdue(now, &SweepPolicy::default()),
            Some(Overdue::Timeout { .. })
        ));
    }

    #[test]
    fn a_silent_worker_is_overdue_and_a_launch_without_heartbeat_counts_from_the_launch() {
        let now = Utc::now();
        let policy = SweepPolicy {
            heartbeat_limit: Duration::seconds(60),
        };
        assert!(matches!(
            candidate(Status::Running, 100, Some(61), now).overdue(now, &policy),
            Some(Overdue::Silent { .. })
        ));
        assert_eq!(
            candidate(Status::Running, 100, Some(59), now).overdue(now, &policy),
            None
        );
        assert!(
            candidate(Status::Launching, 61, None, now)
                .overdue(now, &policy)
                .is_some()
        );
        assert_eq!(
            candidate(Status::Launching, 59, None, now).overdue(now, &policy),
            None
        );
    }

    #[test]
    fn only_launching_running_and_cancelling_jobs_can_be_overdue() {
        let now = Utc::now();
        for status in Status::ALL {
            let overdue = candidate(status, 10_000, None, now)
                .overdue(now, &SweepPolicy::default())
                .is_some();
            let expected = matches!(
                status,
                Status::Launching | Status::Running | Status::Cancelling
            );
            assert_eq!(overdue, expected, "{status}");
        }
    }
}
