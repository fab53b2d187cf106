//! `JobView`: the read model of one job, folded from its events.
//!
//! The fold mirrors `Job::evolve` for everything the aggregate tracks (status, attempt, budgets,
//! progress, task, error) and adds what only readers need: times taken from each envelope's `at`,
//! the result, usage and cost. It never decides anything and never reads a clock.

use chrono::{DateTime, Utc};
use jobledger_events::event::{Capacity, DecodeError, Usage};
use jobledger_events::spec::{JobInput, Notify};
use jobledger_events::{EventHead, JobEvent, JobId, JobKind, RecordedEvent, Status};
use serde::{Deserialize, Serialize};

/// Items done, failed and in all, as last reported (or as the result counted them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Items done successfully.
    pub done: u64,
    /// Items failed.
    pub failed: u64,
    /// Items in the job (0 until known for an `input_uri` job).
    pub total: u64,
}

/// One job as readers see it. Field names are part of the HTTP contract: add, never rename.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    pub job_id: JobId,
    /// The kind of work.
    pub kind: JobKind,
    /// Current status.
    pub status: Status,
    /// The current attempt (1-based).
    pub attempt: u32,
    /// Item counts.
    pub progress: Progress,
    /// When `JobSubmitted` was recorded.
    #[serde(serialize_with = "json_time::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the last folded event was recorded.
    #[serde(serialize_with = "json_time::serialize")]
    pub updated_at: DateTime<Utc>,
    /// Where the results are, once succeeded.
    pub result_uri: Option<String>,
    /// SHA-256 (hex) of the results file, once succeeded.
    pub result_sha256: Option<String>,
    /// What the successful attempt used and cost.
    pub usage: Option<Usage>,
    /// Version of the last folded event; the version guard of every view store.
    pub last_version: u64,
    /// The last error seen (kept after a later success, as in the aggregate).
    pub error: Option<String>,
    /// Which notification sinks the job wants.
    pub notify: Notify,
    /// The caller's metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Failed attempts counted against `max_attempts` (reset by a manual retry).
    pub failures: u32,
    /// Interruptions counted against the interruption budget (reset by a manual retry).
    pub interruptions: u32,
    /// Every interruption of the job's life (never reset; for stats).
    #[serde(default)]
    pub total_interruptions: u32,
    /// When the current attempt's `AttemptStarted` was recorded (cleared when a retry is scheduled).
    #[serde(serialize_with = "json_time::option")]
    pub attempt_started_at: Option<DateTime<Utc>>,
    /// When the last `AttemptStarted` or `ProgressReported` was recorded: the worker's heartbeat.
    #[serde(serialize_with = "json_time::option")]
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When the current attempt's task was launched (cleared when a retry is scheduled).
    #[serde(serialize_with = "json_time::option")]
    #[serde(default)]
    pub launched_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal status (cleared by a manual retry).
    #[serde(serialize_with = "json_time::option")]
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall-clock limit of one attempt, in seconds.
    pub timeout_s: u32,
    /// Attempts that may fail before the job fails.
    pub max_attempts: u32,
    /// The next attempt is not to be launched before this time.
    #[serde(serialize_with = "json_time::option")]
    pub not_before: Option<DateTime<Utc>>,
    /// Higher runs first where a backend can order work.
    pub priority: i32,
    /// The current attempt's task (cleared when a retry is scheduled, as in the aggregate).
    pub task_arn: Option<String>,
    /// Where the current attempt's task runs (cleared with `task_arn`).
    pub capacity: Option<Capacity>,
    /// The latest checkpoint, which the next attempt resumes from.
    #[serde(default)]
    pub checkpoint_uri: Option<String>,
    /// Money spent on the job so far (sum of the `usage.cost_usd` reported).
    pub cost_usd: f64,
}

/// Why an event could not be folded into a view.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The payload could not be decoded (or upcast).
    #[error("job {job_id} version {version}: {source}")]
    Decode {
        /// The job.
        job_id: JobId,
        /// The event's version.
        version: u64,
        /// The decoding error.
        #[source]
        source: DecodeError,
    },
    /// The event belongs to another job than the view.
    #[error("event of job {got} cannot be folded into the view of job {expected}")]
    WrongJob {
        /// The view's job.
        expected: JobId,
        /// The event's job.
        got: JobId,
    },
    /// Events are missing between the view and the event (delivered out of order).
    #[error("job {job_id}: expected version {expected}, got {got}")]
    Gap {
        /// The job.
        job_id: JobId,
        /// The version the view needs next.
        expected: u64,
        /// The event's version.
        got: u64,
    },
    /// A history must start with `JobSubmitted`, and only there.
    #[error("job {job_id} version {version}: {event_type} is not allowed {where_}")]
    Misplaced {
        /// The job.
        job_id: JobId,
        /// The event's version.
        version: u64,
        /// The event's type.
        event_type: String,
        /// "as the first event" or "after the first event".
        where_: &'static str,
    },
}

/// JSON times exactly as chrono's serde impl writes them (RFC 3339, `Z`, a fraction of 0, 3, 6
/// or 9 digits), without going through its formatter one character at a time: a view holds up
/// to seven times, and a rebuild writes every view.
pub(crate) mod json_time {
    use chrono::{DateTime, Datelike, Timelike, Utc};
    use serde::{Serialize, Serializer};

    /// A small text buffer, long enough for any four-digit-year time.
    pub(crate) struct Text {
        buf: [u8; 32],
        len: usize,
    }

    impl Text {
        pub(crate) fn as_str(&self) -> Option<&str> {
            std::str::from_utf8(&self.buf[..self.len]).ok()
        }
    }

    /// `value` (below 100) as two digits at `at`.
    fn two_digits(buf: &mut [u8; 32], at: usize, value: u32) {
        buf[at] = b'0' + (value / 10) as u8;
        buf[at + 1] = b'0' + (value % 10) as u8;
    }

    /// `at` as chrono writes it, when its year has four digits (chrono adds a sign otherwise).
    /// The date and the time of day are each read once: every accessor of a `DateTime` would
    /// work out the local date and time again.
    pub(crate) fn text(at: &DateTime<Utc>) -> Option<Text> {
        let naive = at.naive_utc();
        let (date, time) = (naive.date(), naive.time());
        let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let of_day = time.num_seconds_from_midnight();
        let (mut second, mut nano) = (of_day % 60, time.nanosecond());
        // A leap second is written as second 60, as chrono does.
        if nano >= 1_000_000_000 {
            second += 1;
            nano -= 1_000_000_000;
        }
        let mut buf = *b"0000-00-00T00:00:00.000000000Z\0\0";
        two_digits(&mut buf, 0, year / 100);
        two_digits(&mut buf, 2, year % 100);
        two_digits(&mut buf, 5, date.month());
        two_digits(&mut buf, 8, date.day());
        two_digits(&mut buf, 11, of_day / 3600);
        two_digits(&mut buf, 14, of_day / 60 % 60);
        two_digits(&mut buf, 17, second);
        let mut rest = nano;
        for digit in buf[20..29].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        // The fraction in 0, 3, 6 or 9 digits, the fewest that hold it.
        let end = match nano {
            0 => 19,
            n if n % 1_000_000 == 0 => 23,
            n if n % 1_000 == 0 => 26,
            _ => 29,
        };
        buf[end] = b'Z';
        Some(Text { buf, len: end + 1 })
    }

    /// Serializes a time.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let text = text(at);
        match text.as_ref().and_then(Text::as_str) {
            Some(text) => s.serialize_str(text),
            None => at.serialize(s),
        }
    }

    /// Serializes an optional time.
    pub fn option<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        struct Time<'a>(&'a DateTime<Utc>);
        impl Serialize for Time<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize(self.0, s)
            }
        }
        match at {
            Some(at) => s.serialize_some(&Time(at)),
            None => s.serialize_none(),
        }
    }
}

impl JobView {
    /// Folds one event into a view (`None` before the job's first event).
    ///
    /// An event at or below `last_version` is a duplicate or late delivery and returns the view
    /// unchanged. On success the result is always `Some`; the `Option` lets a fold start from nothing.
    pub fn apply(
        view: Option<JobView>,
        event: &RecordedEvent,
    ) -> Result<Option<JobView>, ProjectionError> {
        let mut view = view;
        JobView::apply_in_place(&mut view, event.head(), || event.decode())?;
        Ok(view)
    }

    /// [`JobView::apply`] in place, for folds that read events without owning a `RecordedEvent`
    /// (a replay reading an export): `decode` is called only when the payload is needed, exactly
    /// when `apply` would decode it. On error the view is left as it was.
    pub fn apply_in_place(
        view: &mut Option<JobView>,
        event: EventHead<'_>,
        decode: impl FnOnce() -> Result<JobEvent, DecodeError>,
    ) -> Result<(), ProjectionError> {
        let decoded = || {
            decode().map_err(|source| ProjectionError::Decode {
                job_id: event.job_id,
                version: event.version,
                source,
            })
        };
        let misplaced = |where_| ProjectionError::Misplaced {
            job_id: event.job_id,
            version: event.version,
            event_type: event.event_type.to_string(),
            where_,
        };
        let Some(view) = view else {
            if event.version != 1 {
                return Err(ProjectionError::Gap {
                    job_id: event.job_id,
                    expected: 1,
                    got: event.version,
                });
            }
            return match decoded()? {
                JobEvent::JobSubmitted(spec) => {
                    *view = Some(JobView::submitted(&event, spec));
                    Ok(())
                }
                _ => Err(misplaced("as the first event")),
            };
        };
        if event.job_id != view.job_id {
            return Err(ProjectionError::WrongJob {
                expected: view.job_id,
                got: event.job_id,
            });
        }
        if event.version <= view.last_version {
            return Ok(());
        }
        if event.version != view.last_version + 1 {
            return Err(ProjectionError::Gap {
                job_id: view.job_id,
                expected: view.last_version + 1,
                got: event.version,
            });
        }
        let at = event.at;
        match decoded()? {
            JobEvent::JobSubmitted(_) => return Err(misplaced("after the first event")),
            JobEvent::JobQueued(_) => view.status = Status::Queued,
            JobEvent::TaskLaunched(p) => {
                // A late record (the worker claimed first) keeps the status, as the aggregate does.
                if view.status == Status::Queued {
                    view.status = Status::Launching;
                }
                view.task_arn = Some(p.task_arn);
                view.capacity = Some(p.capacity);
                view.launched_at = Some(at);
            }
            JobEvent::LaunchFailed(p) => {
                view.failures += 1;
                view.error = Some(p.reason);
            }
            JobEvent::AttemptStarted(_) => {
                view.status = Status::Running;
                view.attempt_started_at = Some(at);
                view.heartbeat_at = Some(at);
            }
            JobEvent::ProgressReported(p) => {
                view.progress = Progress {
                    done: p.done,
                    failed: p.failed,
                    total: p.total,
                };
                if p.checkpoint_uri.is_some() {
                    view.checkpoint_uri = p.checkpoint_uri;
                }
                view.heartbeat_at = Some(at);
            }
            JobEvent::AttemptFailed(p) => {
                view.failures += 1;
                view.error = Some(p.error);
            }
            JobEvent::WorkerInterrupted(_) => {
                view.interruptions += 1;
                view.total_interruptions += 1;
            }
            JobEvent::AttemptTimedOut(p) => {
                view.failures += 1;
                view.error = Some(format!("attempt {} timed out", p.attempt));
            }
            JobEvent::RetryScheduled(p) => {
                // A manual retry of a finished job resets the budgets, as the aggregate does.
                if view.status.is_terminal() {
                    view.failures = 0;
                    view.interruptions = 0;
                    view.result_uri = None;
                    view.result_sha256 = None;
                    view.usage = None;
                    view.finished_at = None;
                }
                view.status = Status::RetryWait;
                view.attempt = p.next_attempt;
                view.not_before = Some(p.not_before);
                view.task_arn = None;
                view.capacity = None;
                view.attempt_started_at = None;
                view.launched_at = None;
            }
            JobEvent::JobSucceeded(p) => {
                view.status = Status::Succeeded;
                view.progress.done = p.items_ok;
                view.progress.failed = p.items_failed;
                view.result_uri = Some(p.result_uri);
                view.result_sha256 = Some(p.result_sha256);
                view.cost_usd += p.usage.cost_usd;
                view.usage = Some(p.usage);
                view.finished_at = Some(at);
            }
            JobEvent::JobFailed(p) => {
                view.status = Status::Failed;
                view.error = Some(p.reason);
                view.finished_at = Some(at);
            }
            JobEvent::CancelRequested(_) => view.status = Status::Cancelling,
            JobEvent::JobCancelled(_) => {
                view.status = Status::Cancelled;
                view.finished_at = Some(at);
            }
        }
        view.last_version = event.version;
        view.updated_at = at;
        Ok(())
    }

    /// Folds a whole history (in version order); `None` for an empty one.
    pub fn fold(events: &[RecordedEvent]) -> Result<Option<JobView>, ProjectionError> {
        events.iter().try_fold(None, JobView::apply)
    }

    /// The view right after `JobSubmitted`.
    fn submitted(event: &EventHead<'_>, spec: jobledger_events::JobSpec) -> JobView {
        let total = match &spec.input {
            JobInput::Items { items } => items.len() as u64,
            JobInput::Uri { .. } => 0,
        };
        JobView {
            job_id: event.job_id,
            kind: spec.kind,
            status: Status::Submitted,
            attempt: 1,
            progress: Progress {
                done: 0,
                failed: 0,
                total,
            },
            created_at: event.at,
            updated_at: event.at,
            result_uri: None,
            result_sha256: None,
            usage: None,
            last_version: event.version,
            error: None,
            notify: spec.notify,
            metadata: spec.metadata,
            failures: 0,
            interruptions: 0,
            total_interruptions: 0,
            attempt_started_at: None,
            heartbeat_at: None,
            launched_at: None,
            finished_at: None,
            timeout_s: spec.timeout_s,
            max_attempts: spec.max_attempts,
            not_before: None,
            priority: spec.priority,
            task_arn: None,
            capacity: None,
            checkpoint_uri: None,
            cost_usd: 0.0,
        }
    }

    /// Wall time from submission to the terminal status, for finished jobs.
    pub fn duration(&self) -> Option<chrono::Duration> {
        self.finished_at.map(|end| end - self.created_at)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use jobledger_events::chain::compute_hash;
    use jobledger_events::command::{Clock, Command};
    use jobledger_events::event::{Capacity, Usage};
    use jobledger_events::execute::{CommandContext, record};
    use jobledger_events::spec::{Item, JobInput, JobSpec, Notify};
    use jobledger_events::{Hash, Job};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn times_are_written_exactly_as_chrono_writes_them() {
        #[derive(Serialize)]
        struct Ours {
            #[serde(serialize_with = "json_time::serialize")]
            at: DateTime<Utc>,
            #[serde(serialize_with = "json_time::option")]
            maybe: Option<DateTime<Utc>>,
        }
        #[derive(Serialize)]
        struct Chrono {
            at: DateTime<Utc>,
            maybe: Option<DateTime<Utc>>,
        }
        let mut seed = 0x5851_f42d_4c95_7f2du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut times: Vec<DateTime<Utc>> = (0..20_000)
            .map(|i| {
                // Years from before 0 to after 9999; every precision of the fraction.
                let secs = (next() % 700_000_000_000) as i64 - 100_000_000_000;
                let nanos = match i % 4 {
                    0 => 0,
                    1 => (next() % 1000) as u32 * 1_000_000,
                    2 => (next() % 1_000_000) as u32 * 1000,
                    _ => (next() % 1_000_000_000) as u32,
                };
                DateTime::from_timestamp(secs, nanos).unwrap()
            })
            .collect();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_250_000_000)
            .unwrap()
            .and_utc();
        times.extend([leap, DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC]);
        for at in times {
            for maybe in [None, Some(at)] {
                assert_eq!(
                    serde_json::to_string(&Ours { at, maybe }).unwrap(),
                    serde_json::to_string(&Chrono { at, maybe }).unwrap()
                );
            }
        }
    }

    fn spec(max_attempts: u32, items: usize) -> JobSpec {
        JobSpec {
            kind: JobKind::ContentAnalysis,
            input: JobInput::Items {
                items: (0..items)
                    .map(|i| Item {
                        id: format!("i{i}"),
                        text: Some("text".into()),
                        ..Item::default()
                    })
                    .collect(),
            },
            max_attempts,
            timeout_s: 600,
            priority: 2,
            notify: Notify::default(),
            metadata: serde_json::Map::new(),
            idempotency_key: None,
            max_tokens: None,
        }
    }

    /// A tiny in-memory ledger: decide, record with a chained hash, keep the recorded events.
    struct Ledger {
        job_id: JobId,
        job: Job,
        events: Vec<RecordedEvent>,
        minute: i64,
    }

    impl Ledger {
        fn new() -> Self {
            Ledger {
                job_id: JobId::new(),
                job: Job::default(),
                events: Vec::new(),
                minute: 0,
            }
        }

        fn now(&self) -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::minutes(self.minute)
        }

        /// Runs a command; returns whether the job accepted it.
        fn run(&mut self, cmd: &Command) -> bool {
            self.minute += 1;
            let Ok(new) = self.job.decide(cmd) else {
                return false;
            };
            let prev = self.events.last().map_or(Hash::ZERO, |e| e.hash);
            let ctx = CommandContext::new("test", self.now());
            let recorded = record(self.job_id, self.job.version, prev, &new, &ctx);
            self.job = new.iter().fold(self.job.clone(), Job::evolve);
            self.events.extend(recorded);
            true
        }
    }

    fn usage(cost: f64) -> Usage {
        Usage {
            duration_ms: 1000,
            vcpu: 0.25,
            memory_mb: 512,
            capacity: Some(Capacity::FargateSpot),
            input_tokens: 10,
            output_tokens: 5,
            model: None,
            cost_usd: cost,
        }
    }

    fn assert_agrees(view: &JobView, job: &Job) {
        assert_eq!(view.status, job.status, "status");
        assert_eq!(view.attempt, job.attempt, "attempt");
        assert_eq!(view.last_version, job.version, "version");
        assert_eq!(view.failures, job.failures, "failures");
        assert_eq!(view.interruptions, job.interruptions, "interruptions");
        assert_eq!(
            (
                view.progress.done,
                view.progress.failed,
                view.progress.total
            ),
            (job.done, job.failed, job.total),
            "progress"
        );
        assert_eq!(view.task_arn, job.task_arn, "task_arn");
        assert_eq!(view.not_before, job.not_before, "not_before");
        assert_eq!(view.error, job.error, "error");
        assert_eq!(view.checkpoint_uri, job.checkpoint_uri, "checkpoint_uri");
        assert_eq!(
            view.result_uri,
            job.result.as_ref().map(|r| r.result_uri.clone()),
            "result_uri"
        );
    }

    #[test]
    fn a_successful_job_shows_its_result_times_and_cost() {
        let mut l = Ledger::new();
        let clock = |l: &Ledger| Clock {
            now: l.now(),
            jitter: 0.5,
        };
        assert!(l.run(&Command::Submit(spec(3, 4))));
        assert!(l.run(&Command::MarkQueued {
            attempt: 1,
            message_id: "m1".into()
        }));
        assert!(l.run(&Command::RecordLaunch {
            attempt: 1,
            task_arn: "arn:1".into(),
            capacity: Capacity::FargateSpot
        }));
        assert!(l.run(&Command::StartAttempt {
            attempt: 1,
            worker: "w".into()
        }));
        let c = clock(&l);
        assert!(l.run(&Command::Interrupt {
            attempt: 1,
            reason: "SpotInterruption".into(),
            clock: c
        }));
        assert!(l.run(&Command::MarkQueued {
            attempt: 2,
            message_id: "m2".into()
        }));
        assert!(l.run(&Command::StartAttempt {
            attempt: 2,
            worker: "w".into()
        }));
        let started = l.now();
        assert!(l.run(&Command::ReportProgress {
            attempt: 2,
            done: 2,
            failed: 1,
            total: 4,
            checkpoint_uri: Some("file://cp".into())
        }));
        let beat = l.now();
        assert!(l.run(&Command::Succeed {
            attempt: 2,
            result_uri: "file://r".into(),
            result_sha256: "ab".into(),
            items_ok: 3,
            items_failed: 1,
            usage: usage(0.125)
        }));
        let view = JobView::fold(&l.events).unwrap().unwrap();
        assert_agrees(&view, &l.job);
        assert_eq!(view.status, Status::Succeeded);
        assert_eq!(view.attempt, 2);
        assert_eq!(
            view.progress,
            Progress {
                done: 3,
                failed: 1,
                total: 4
            }
        );
        assert_eq!(view.created_at, l.events[0].at);
        assert_eq!(view.updated_at, l.now());
        assert_eq!(view.finished_at, Some(l.now()));
        assert_eq!(view.attempt_started_at, Some(started));
        assert_eq!(view.heartbeat_at, Some(beat));
        assert_eq!(view.interruptions, 1);
        assert_eq!(view.total_interruptions, 1);
        assert_eq!(view.result_sha256.as_deref(), Some("ab"));
        assert_eq!(view.usage, Some(usage(0.125)));
        assert_eq!(view.cost_usd, 0.125);
        assert_eq!(view.priority, 2);
        assert_eq!(view.timeout_s, 600);
        // The task launched for attempt 1 is gone: attempt 2 was started without a recorded launch.
        assert_eq!(view.task_arn, None);
        assert_eq!(view.duration(), Some(l.now() - l.events[0].at));
    }

    #[test]
    fn duplicate_and_late_events_leave_the_view_unchanged() {
        let mut l = Ledger::new();
        assert!(l.run(&Command::Submit(spec(1, 1))));
        assert!(l.run(&Command::MarkQueued {
            attempt: 1,
            message_id: "m".into()
        }));
        assert!(l.run(&Command::Cancel {
            reason: "no".into()
        }));
        let view = JobView::fold(&l.events).unwrap().unwrap();
        for e in &l.events {
            let again = JobView::apply(Some(view.clone()), e).unwrap().unwrap();
            assert_eq!(again, view);
        }
    }

    #[test]
    fn a_gap_a_foreign_event_and_a_late_submit_are_errors() {
        let mut l = Ledger::new();
        assert!(l.run(&Command::Submit(spec(1, 1))));
        assert!(l.run(&Command::MarkQueued {
            attempt: 1,
            message_id: "m".into()
        }));
        assert!(l.run(&Command::Cancel {
            reason: "no".into()
        }));
        let first = JobView::fold(&l.events[..1]).unwrap();
        assert!(matches!(
            JobView::apply(first.clone(), &l.events[2]),
            Err(ProjectionError::Gap {
                expected: 2,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            JobView::apply(None, &l.events[1]),
            Err(ProjectionError::Gap {
                expected: 1,
                got: 2,
                ..
            })
        ));
        let mut other = l.events[1].clone();
        other.job_id = JobId::new();
        assert!(matches!(
            JobView::apply(first.clone(), &other),
            Err(ProjectionError::WrongJob { .. })
        ));
        let mut resubmit = l.events[0].clone();
        resubmit.version = 2;
        assert!(matches!(
            JobView::apply(first.clone(), &resubmit),
            Err(ProjectionError::Misplaced { .. })
        ));
        let mut not_submit = l.events[1].clone();
        not_submit.version = 1;
        assert!(matches!(
            JobView::apply(None, &not_submit),
            Err(ProjectionError::Misplaced { .. })
        ));
        let mut garbage = l.events[1].clone();
        garbage.data = serde_json::value::RawValue::from_string("{\"x\":1}".into()).unwrap();
        garbage.hash = compute_hash(&garbage);
        assert!(matches!(
            JobView::apply(first, &garbage),
            Err(ProjectionError::Decode { version: 2, .. })
        ));
    }

    #[test]
    fn a_manual_retry_resets_the_budgets_and_the_finish_time() {
        let mut l = Ledger::new();
        assert!(l.run(&Command::Submit(spec(1, 1))));
        assert!(l.run(&Command::Cancel {
            reason: "oops".into()
        }));
        let cancelled = JobView::fold(&l.events).unwrap().unwrap();
        assert!(cancelled.finished_at.is_some());
        let now = l.now();
        assert!(l.run(&Command::Retry { now }));
        let view = JobView::fold(&l.events).unwrap().unwrap();
        assert_agrees(&view, &l.job);
        assert_eq!(view.status, Status::RetryWait);
        assert_eq!(view.attempt, 2);
        assert_eq!(view.finished_at, None);
        assert_eq!(view.not_before, Some(now));
    }

    #[test]
    fn the_view_round_trips_through_json_with_the_api_field_names() {
        let mut l = Ledger::new();
        assert!(l.run(&Command::Submit(spec(1, 2))));
        let view = JobView::fold(&l.events).unwrap().unwrap();
        let json = serde_json::to_value(&view).unwrap();
        for field in [
            "job_id",
            "kind",
            "status",
            "attempt",
            "progress",
            "created_at",
            "updated_at",
            "result_uri",
            "result_sha256",
            "usage",
            "last_version",
            "error",
            "notify",
            "metadata",
            "failures",
            "interruptions",
            "attempt_started_at",
            "heartbeat_at",
            "timeout_s",
            "max_attempts",
            "not_before",
            "priority",
            "task_arn",
            "capacity",
            "cost_usd",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["status"], "SUBMITTED");
        assert_eq!(json["kind"], "content_analysis");
        assert_eq!(json["progress"]["total"], 2);
        let back: JobView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
    }

    /// One randomly chosen command, built for the job's current attempt (or a stale one).
    fn command(choice: u8, stale: bool, job: &Job, now: DateTime<Utc>) -> Command {
        let attempt = if stale {
            job.attempt.saturating_sub(1)
        } else {
            job.attempt
        };
        let clock = Clock { now, jitter: 0.3 };
        match choice % 13 {
            0 => Command::MarkQueued {
                attempt,
                message_id: "m".into(),
            },
            1 => Command::RecordLaunch {
                attempt,
                task_arn: format!("arn:{attempt}"),
                capacity: Capacity::Fargate,
            },
            2 => Command::RecordLaunchFailure {
                attempt,
                reason: "no capacity".into(),
                retryable: choice.is_multiple_of(2),
                clock,
            },
            3 => Command::StartAttempt {
                attempt,
                worker: "w".into(),
            },
            4 => Command::ReportProgress {
                attempt,
                done: u64::from(choice % 3),
                failed: 0,
                total: 3,
                checkpoint_uri: (choice.is_multiple_of(2)).then(|| format!("file://cp/{choice}")),
            },
            5 => Command::Succeed {
                attempt,
                result_uri: "file://r".into(),
                result_sha256: "00".into(),
                items_ok: 3,
                items_failed: 0,
                usage: usage(0.5),
            },
            6 => Command::FailAttempt {
                attempt,
                error: "boom".into(),
                retryable: !choice.is_multiple_of(2),
                clock,
            },
            7 => Command::Interrupt {
                attempt,
                reason: "SpotInterruption".into(),
                clock,
            },
            8 => Command::TimeOut { attempt, clock },
            9 => Command::ConfirmCancel { attempt },
            10 => Command::Cancel { reason: "r".into() },
            11 => Command::Retry { now },
            _ => Command::Submit(spec(3, 3)),
        }
    }

    proptest! {
        #[test]
        fn the_view_agrees_with_the_aggregate_on_random_histories(
            max_attempts in 1u32..4,
            steps in proptest::collection::vec((any::<u8>(), any::<bool>()), 1..80),
        ) {
            let mut l = Ledger::new();
            prop_assert!(l.run(&Command::Submit(spec(max_attempts, 3))));
            let mut view = JobView::fold(&l.events).unwrap();
            for (choice, stale) in steps {
                let before = l.events.len();
                let cmd = command(choice, stale, &l.job, l.now());
                l.run(&cmd);
                for e in &l.events[before..] {
                    view = JobView::apply(view, e).unwrap();
                }
                let v = view.as_ref().unwrap();
                assert_agrees(v, &l.job);
                prop_assert_eq!(v.updated_at, l.events.last().unwrap().at);
            }
            // The incremental fold and the whole-history fold are the same function.
            prop_assert_eq!(view, JobView::fold(&l.events).unwrap());
        }
    }
}
