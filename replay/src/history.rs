//! `history` (a readable timeline of one job) and `state` (the job as it stood at a version or time).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use jobledger_events::envelope::format_time;
use jobledger_events::event::JobEvent;
use jobledger_events::spec::JobInput;
use jobledger_events::{Job, JobId, RecordedEvent, Status};
use jobledger_projections::JobView;
use serde::Serialize;

use crate::format::Entry;

/// One line of a timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The event's version.
    pub version: u64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who caused it.
    pub actor: String,
    /// The job's status after it.
    pub status: Status,
    /// The key fields, for a person.
    pub summary: String,
    /// The payload, upcast to the current schema.
    pub data: serde_json::Value,
}

/// A job's life, event by event, with the time spent in each status.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// The job.
    pub job_id: JobId,
    /// The events.
    pub steps: Vec<Step>,
    /// Milliseconds spent in each status, up to the last event.
    pub time_in_status_ms: BTreeMap<&'static str, i64>,
    /// Items that could not be read or decoded (the timeline skips them).
    pub problems: Vec<String>,
}

/// Splits entries into readable events and problems (unreadable items, undecodable payloads).
pub fn events_of(entries: Vec<Entry>) -> (Vec<RecordedEvent>, Vec<String>) {
    let mut events = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
    for entry in entries {
        match entry {
            Entry::Event(e) => events.push(e.event),
            Entry::Pin(..) => {}
            Entry::Unreadable {
                version,
                reason,
                pos,
                ..
            } => problems.push(format!(
                "version {}: unreadable ({reason}) {pos}",
                version.map_or("?".to_string(), |v| v.to_string())
            )),
        }
    }
    (events, problems)
}

/// Builds the timeline of one job's events.
pub fn timeline(job_id: JobId, events: &[RecordedEvent], mut problems: Vec<String>) -> Timeline {
    let mut job = Job::default();
    let mut steps = Vec::with_capacity(events.len());
    let mut time_in_status: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut since: Option<(Status, DateTime<Utc>)> = None;
    for e in events {
        let event = match e.decode() {
            Ok(event) => event,
            Err(err) => {
                problems.push(format!("version {}: {err}", e.version));
                continue;
            }
        };
        job = job.evolve(&event);
        if let Some((status, from)) = since {
            if status != job.status {
                *time_in_status.entry(status.as_str()).or_default() +=
                    (e.at - from).num_milliseconds();
                since = Some((job.status, e.at));
            }
        } else {
            since = Some((job.status, e.at));
        }
        steps.push(Step {
            version: e.version,
            at: e.at,
            event_type: e.event_type.clone(),
            actor: e.actor.clone(),
            status: job.status,
            summary: summary(&event),
            data: event.to_data(),
        });
    }
    if let (Some((status, from)), Some(last)) = (since, events.last()) {
        *time_in_status.entry(status.as_str()).or_default() += (last.at - from).num_milliseconds();
    }
    Timeline {
        job_id,
        steps,
        time_in_status_ms: time_in_status,
        problems,
    }
}

/// The fields of an event a person looks for first.
pub fn summary(e: &JobEvent) -> String {
    match e {
        JobEvent::JobSubmitted(s) => {
            let input = match &s.input {
                JobInput::Items { items } => format!("{} items", items.len()),
                JobInput::Uri { input_uri } => input_uri.clone(),
            };
            format!(
                "kind={} input={input} max_attempts={} timeout_s={}",
                s.kind, s.max_attempts, s.timeout_s
            )
        }
        JobEvent::JobQueued(p) => format!("attempt={} message_id={}", p.attempt, p.message_id),
        JobEvent::TaskLaunched(p) => format!(
            "attempt={} capacity={:?} task={}",
            p.attempt, p.capacity, p.task_arn
        ),
        JobEvent::LaunchFailed(p) => format!(
            "attempt={} retryable={} reason={}",
            p.attempt, p.retryable, p.reason
        ),
        JobEvent::AttemptStarted(p) => format!("attempt={} worker={}", p.attempt, p.worker),
        JobEvent::ProgressReported(p) => format!(
            "attempt={} done={} failed={} total={}",
            p.attempt, p.done, p.failed, p.total
        ),
        JobEvent::AttemptFailed(p) => format!(
            "attempt={} retryable={} error={}",
            p.attempt, p.retryable, p.error
        ),
        JobEvent::WorkerInterrupted(p) => format!("attempt={} reason={}", p.attempt, p.reason),
        JobEvent::AttemptTimedOut(p) => format!("attempt={}", p.attempt),
        JobEvent::RetryScheduled(p) => format!(
            "next_attempt={} not_before={}",
            p.next_attempt,
            format_time(&p.not_before)
        ),
        JobEvent::JobSucceeded(p) => format!(
            "attempt={} ok={} failed={} cost_usd={:.4} duration_ms={} result={}",
            p.attempt,
            p.items_ok,
            p.items_failed,
            p.usage.cost_usd,
            p.usage.duration_ms,
            p.result_uri
        ),
        JobEvent::JobFailed(p) => format!("reason={}", p.reason),
        JobEvent::CancelRequested(p) => format!("reason={}", p.reason),
        JobEvent::JobCancelled(_) => String::new(),
    }
}

/// The timeline as text for a terminal.
pub fn render(t: &Timeline) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job {}", t.job_id);
    let _ = writeln!(
        out,
        "{:<27} {:>4}  {:<18} {:<24} {:<11} details",
        "time", "ver", "event", "actor", "status"
    );
    for s in &t.steps {
        let _ = writeln!(
            out,
            "{:<27} {:>4}  {:<18} {:<24} {:<11} {}",
            format_time(&s.at),
            s.version,
            s.event_type,
            s.actor,
            s.status.as_str(),
            s.summary
        );
    }
    let _ = writeln!(out, "time in each status:");
    for (status, ms) in &t.time_in_status_ms {
        let _ = writeln!(out, "  {:<11} {}", status, human_ms(*ms));
    }
    for p in &t.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if s < 60 => format!("{}.{:03}s", s, (ms % 1000).abs()),
        _ if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60),
    }
}

/// Where to stop replaying for `state`.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// Up to and including this version.
    Version(u64),
    /// Events recorded at or before this time.
    Time(DateTime<Utc>),
}

/// The aggregate's state as a document (the aggregate itself has no wire form).
#[derive(Clone, Debug, Serialize)]
pub struct JobState {
    /// Events folded.
    pub version: u64,
    /// Status.
    pub status: Status,
    /// Current attempt.
    pub attempt: u32,
    /// Failed attempts counted against the budget.
    pub failures: u32,
    /// Interruptions counted against the budget.
    pub interruptions: u32,
    /// Items done.
    pub done: u64,
    /// Items failed.
    pub failed: u64,
    /// Items in all.
    pub total: u64,
    /// Latest checkpoint.
    pub checkpoint_uri: Option<String>,
    /// Current task.
    pub task_arn: Option<String>,
    /// Next launch not before.
    pub not_before: Option<DateTime<Utc>>,
    /// Result URI once succeeded.
    pub result_uri: Option<String>,
    /// Last error.
    pub error: Option<String>,
}

impl From<&Job> for JobState {
    fn from(j: &Job) -> Self {
        JobState {
            version: j.version,
            status: j.status,
            attempt: j.attempt,
            failures: j.failures,
            interruptions: j.interruptions,
            done: j.done,
            failed: j.failed,
            total: j.total,
            checkpoint_uri: j.checkpoint_uri.clone(),
            task_arn: j.task_arn.clone(),
            not_before: j.not_before,
            result_uri: j.result.as_ref().map(|r| r.result_uri.clone()),
            error: j.error.clone(),
        }
    }
}

/// The job as it stood: the aggregate's state and the read model's view at that point.
#[derive(Clone, Debug, Serialize)]
pub struct StateAt {
    /// The job.
    pub job_id: JobId,
    /// Time of the last event folded.
    pub as_of: Option<DateTime<Utc>>,
    /// The aggregate (what `decide` sees).
    pub job: JobState,
    /// The read model (what the API shows).
    pub view: Option<JobView>,
}

/// Folds the events up to `until`. Fails on an undecodable event (the state would be a guess).
pub fn state_at(job_id: JobId, events: &[RecordedEvent], until: Until) -> anyhow::Result<StateAt> {
    let prefix: Vec<&RecordedEvent> = events
        .iter()
        .take_while(|e| match until {
            Until::Version(v) => e.version <= v,
            Until::Time(t) => e.at <= t,
        })
        .collect();
    let mut job = Job::default();
    let mut view: Option<JobView> = None;
    for e in &prefix {
        let event = e
            .decode()
            .map_err(|err| anyhow::anyhow!("job {job_id} version {}: {err}", e.version))?;
        job = job.evolve(&event);
        view = JobView::apply(view, e)?;
    }
    Ok(StateAt {
        job_id,
        as_of: prefix.last().map(|e| e.at),
        job: JobState::from(&job),
        view,
    })
}
