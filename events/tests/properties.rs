//! Property tests: random command sequences through `decide`/`evolve` only ever produce legal
//! histories; the recorded history folds back to the live job; the hash chain of any history
//! verifies, and changing any canonical field of any event breaks it.

use chrono::{DateTime, Duration, TimeZone, Utc};
use jobledger_events::chain::{canonical_bytes, verify_chain};
use jobledger_events::command::{Clock, Command};
use jobledger_events::event::{Capacity, JobEvent, Usage};
use jobledger_events::execute::{CommandContext, fold, record};
use jobledger_events::job::MAX_INTERRUPTIONS;
use jobledger_events::spec::{Item, JobInput, JobKind, JobSpec, Notify};
use jobledger_events::{Hash, Job, JobId, RecordedEvent, Rejection, Status};
use proptest::prelude::*;
use serde_json::value::RawValue;
use uuid::Uuid;

/// What a step asks for; the attempt it names is the job's current one plus a small offset.
#[derive(Clone, Debug)]
enum Kind {
    Submit(JobSpec),
    Queue,
    Launch,
    LaunchFail(bool),
    Start,
    Progress(u64, u64, u64, bool),
    Succeed(u64, u64, Usage),
    Fail(bool),
    Interrupt,
    TimeOut,
    ConfirmCancel,
    Cancel,
    Retry,
}

#[derive(Clone, Debug)]
struct Step {
    kind: Kind,
    /// Usually 0; otherwise the command names a stale (earlier or later) attempt.
    attempt_offset: i64,
    jitter: f64,
    text: String,
    /// Nanoseconds past the step's second, so times exercise microsecond truncation.
    nanos: u32,
}

fn text() -> impl Strategy<Value = String> {
    // Any char at all: controls, quotes, backslashes, U+2028, astral planes.
    prop::collection::vec(any::<char>(), 0..8).prop_map(|cs| cs.into_iter().collect())
}

/// Numbers whose JSON form is interesting (tiny, huge, exponent forms, negative zero), and ones
/// the ledger cannot store, which the aggregate must refuse.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.5),
        Just(0.0000123),
        Just(0.25),
        Just(1e-7),
        Just(1e21),
        Just(5e-324),
        Just(-0.0),
        Just(123_456_789.125),
        0.0f64..1e6,
        (0u64..u64::MAX).prop_map(|bits| f64::from_bits(bits >> 2)),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0u64..12,
        1 => Just((1u64 << 53) - 1),
        1 => any::<u64>(),
    ]
}

fn spec() -> impl Strategy<Value = JobSpec> {
    (
        prop::collection::vec(text(), 0..3),
        0u32..5,
        text(),
        float(),
        -9_007_199_254_740_991i64..9_007_199_254_740_991i64,
    )
        .prop_map(|(texts, max_attempts, key, f, i)| {
            let mut metadata = serde_json::Map::new();
            metadata.insert(key, serde_json::json!({"f": f, "i": i, "whole": 5.0}));
            JobSpec {
                kind: JobKind::ContentAnalysis,
                input: JobInput::Items {
                    items: texts
                        .into_iter()
                        .enumerate()
                        .map(|(n, t)| Item {
                            id: format!("item-{n}"),
                            text: Some(t),
                            ..Item::default()
                        })
                        .collect(),
                },
                max_attempts,
                timeout_s: 600,
                priority: 0,
                notify: Notify::default(),
                metadata,
                idempotency_key: None,
                max_tokens: None,
            }
        })
}

fn usage() -> impl Strategy<Value = Usage> {
    (float(), float(), count(), count()).prop_map(
        |(vcpu, cost_usd, input_tokens, output_tokens)| Usage {
            duration_ms: 1000,
            vcpu,
            memory_mb: 512,
            capacity: Some(Capacity::FargateSpot),
            input_tokens,
            output_tokens,
            model: Some("builtin".into()),
            cost_usd,
        },
    )
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => spec().prop_map(Kind::Submit),
        6 => Just(Kind::Queue),
        4 => Just(Kind::Launch),
        1 => any::<bool>().prop_map(Kind::LaunchFail),
        5 => Just(Kind::Start),
        3 => (count(), count(), count(), any::<bool>())
            .prop_map(|(d, f, t, c)| Kind::Progress(d, f, t, c)),
        2 => (count(), count(), usage()).prop_map(|(ok, failed, u)| Kind::Succeed(ok, failed, u)),
        3 => any::<bool>().prop_map(Kind::Fail),
        3 => Just(Kind::Interrupt),
        1 => Just(Kind::TimeOut),
        1 => Just(Kind::ConfirmCancel),
        1 => Just(Kind::Cancel),
        2 => Just(Kind::Retry),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        kind(),
        prop_oneof![8 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)],
        0.0f64..1.0,
        text(),
        0u32..1_000_000_000,
    )
        .prop_map(|(kind, attempt_offset, jitter, text, nanos)| Step {
            kind,
            attempt_offset,
            jitter,
            text,
            nanos,
        })
}

/// A history always starts with a (valid) submission, then random steps.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    (spec(), prop::collection::vec(step(), 0..60)).prop_map(|(mut first, rest)| {
        first.max_attempts = first.max_attempts.clamp(1, 10);
        if let JobInput::Items { items } = &mut first.input
            && items.is_empty()
        {
            items.push(Item {
                id: "only".into(),
                ..Item::default()
            });
        }
        let mut all = vec![Step {
            kind: Kind::Submit(first),
            attempt_offset: 0,
            jitter: 0.0,
            text: String::new(),
            nanos: 0,
        }];
        all.extend(rest);
        all
    })
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 15, 10, 0, 0)
        .single()
        .expect("a valid fixed time")
}

fn command(step: &Step, job: &Job, now: DateTime<Utc>) -> Command {
    let attempt = (i64::from(job.attempt) + step.attempt_offset).max(0) as u32;
    let clock = Clock {
        now,
        jitter: step.jitter,
    };
    let text = step.text.clone();
    match &step.kind {
        Kind::Submit(spec) => Command::Submit(spec.clone()),
        Kind::Queue => Command::MarkQueued {
            attempt,
            message_id: text,
        },
        Kind::Launch => Command::RecordLaunch {
            attempt,
            task_arn: text,
            capacity: Capacity::Local,
        },
        Kind::LaunchFail(retryable) => Command::RecordLaunchFailure {
            attempt,
            reason: text,
            retryable: *retryable,
            clock,
        },
        Kind::Start => Command::StartAttempt {
            attempt,
            worker: text,
        },
        Kind::Progress(done, failed, total, checkpoint) => Command::ReportProgress {
            attempt,
            done: *done,
            failed: *failed,
            total: *total,
            checkpoint_uri: checkpoint.then(|| format!("file://ckpt/{text}")),
        },
        Kind::Succeed(items_ok, items_failed, usage) => Command::Succeed {
            attempt,
            result_uri: format!("file://results/{text}"),
            result_sha256: "0f".repeat(32),
            items_ok: *items_ok,
            items_failed: *items_failed,
            usage: usage.clone(),
        },
        Kind::Fail(retryable) => Command::FailAttempt {
            attempt,
            error: text,
            retryable: *retryable,
            clock,
        },
        Kind::Interrupt => Command::Interrupt {
            attempt,
            reason: text,
            clock,
        },
        Kind::TimeOut => Command::TimeOut { attempt, clock },
        Kind::ConfirmCancel => Command::ConfirmCancel { attempt },
        Kind::Cancel => Command::Cancel { reason: text },
        Kind::Retry => Command::Retry { now },
    }
}

/// The statuses a legal (status, command) pair may end in, per the table in job.rs's docs.
fn legal(from: Status, command: &str) -> Option<Vec<Status>> {
    use Status::*;
    let to = match (from, command) {
        (New, "submit") => vec![Submitted],
        (Submitted | RetryWait, "mark_queued") => vec![Queued],
        (Queued, "record_launch") => vec![Launching],
        (Running | Cancelling, "record_launch") => vec![from],
        (Queued | Launching, "record_launch_failure") => vec![RetryWait, Failed],
        (Queued | Launching, "start_attempt") => vec![Running],
        (Running | Cancelling, "report_progress") => vec![from],
        (Running | Cancelling, "succeed") => vec![Succeeded],
        (Launching | Running, "fail_attempt" | "interrupt" | "time_out") => vec![RetryWait, Failed],
        (Cancelling, "fail_attempt" | "interrupt" | "time_out" | "confirm_cancel") => {
            vec![Cancelled]
        }
        (Submitted | Queued | Launching | RetryWait, "cancel") => vec![Cancelled],
        (Running, "cancel") => vec![Cancelling],
        (Failed | Cancelled, "retry") => vec![RetryWait],
        _ => return None,
    };
    Some(to)
}

/// Checks one decision against the rules; returns a description of the first broken one.
fn check_decision(
    before: &Job,
    cmd: &Command,
    result: &Result<Vec<JobEvent>, Rejection>,
) -> Result<(), String> {
    let name = cmd.name();
    let stale = cmd.attempt().is_some_and(|a| a != before.attempt);
    match (legal(before.status, name), result) {
        (Some(to), Ok(events)) => {
            if stale {
                return Err(format!("{name} for a stale attempt was accepted"));
            }
            if events.is_empty() || events.len() > 2 {
                return Err(format!("{name} appended {} events", events.len()));
            }
            if events[..events.len() - 1].iter().any(JobEvent::is_terminal) {
                return Err(format!("a terminal event is not last in {events:?}"));
            }
            let after = events.iter().fold(before.clone(), Job::evolve);
            if !to.contains(&after.status) {
                return Err(format!("{} {name} ended {}", before.status, after.status));
            }
            Ok(())
        }
        (Some(_), Err(r)) => match r {
            Rejection::StaleAttempt { current, got }
                if stale && *current == before.attempt && *got != *current =>
            {
                Ok(())
            }
            Rejection::InvalidProgress(_) | Rejection::Invalid(_) => Ok(()),
            // A stale command on a finished job is answered AlreadyFinished first.
            Rejection::AlreadyFinished(_) if before.status.is_terminal() => Ok(()),
            other => Err(format!("legal {} {name} refused: {other:?}", before.status)),
        },
        (None, Ok(events)) => Err(format!(
            "illegal {} {name} appended {events:?}",
            before.status
        )),
        (None, Err(r)) => match r {
            Rejection::NotFound if before.status == Status::New => Ok(()),
            Rejection::AlreadyExists if name == "submit" => Ok(()),
            Rejection::AlreadyFinished(s) if *s == before.status && s.is_terminal() => Ok(()),
            Rejection::AlreadyCancelling if before.status == Status::Cancelling => Ok(()),
            Rejection::StaleAttempt { .. } if stale => Ok(()),
            Rejection::IllegalTransition { from, command }
                if *from == before.status && *command == name =>
            {
                Ok(())
            }
            other => Err(format!("{} {name} refused with {other:?}", before.status)),
        },
    }
}

/// Invariants of a whole history.
fn check_history(events: &[JobEvent], job: &Job) -> Result<(), String> {
    let Some(JobEvent::JobSubmitted(spec)) = events.first() else {
        return Err("a history starts with JobSubmitted".into());
    };
    if events[1..]
        .iter()
        .any(|e| matches!(e, JobEvent::JobSubmitted(_)))
    {
        return Err("JobSubmitted twice".into());
    }
    let mut attempt = 1;
    for (i, e) in events.iter().enumerate() {
        if i > 0 && events[i - 1].is_terminal() {
            let manual_retry = matches!(e, JobEvent::RetryScheduled(_))
                && !matches!(events[i - 1], JobEvent::JobSucceeded(_));
            if !manual_retry {
                return Err(format!("{} follows {:?}", e.event_type(), events[i - 1]));
            }
        }
        match (e, e.attempt()) {
            (JobEvent::RetryScheduled(p), _) => {
                if p.next_attempt != attempt + 1 {
                    return Err(format!(
                        "retry to {} from attempt {attempt}",
                        p.next_attempt
                    ));
                }
                attempt = p.next_attempt;
            }
            (_, Some(a)) if a != attempt => {
                return Err(format!(
                    "{} for attempt {a} during attempt {attempt}",
                    e.event_type()
                ));
            }
            _ => {}
        }
    }
    if job.version != events.len() as u64 || job.attempt != attempt {
        return Err(format!(
            "job {job:?} does not match its {} events",
            events.len()
        ));
    }
    if job.failures > spec.max_attempts || job.interruptions > MAX_INTERRUPTIONS {
        return Err(format!("budgets overrun: {job:?}"));
    }
    if job.status == Status::Failed || job.status.is_terminal() {
        return Ok(());
    }
    if job.failures >= spec.max_attempts || job.interruptions >= MAX_INTERRUPTIONS {
        return Err(format!("{} with its budget used up: {job:?}", job.status));
    }
    Ok(())
}

/// Runs the steps; returns the live job, its events and their recorded form.
fn run(steps: &[Step]) -> Result<(Job, Vec<JobEvent>, Vec<RecordedEvent>), String> {
    let job_id = JobId::new();
    let mut job = Job::default();
    let mut events = Vec::new();
    let mut recorded: Vec<RecordedEvent> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let now = t0() + Duration::seconds(i as i64) + Duration::nanoseconds(i64::from(step.nanos));
        let cmd = command(step, &job, now);
        let result = job.decide(&cmd);
        check_decision(&job, &cmd, &result)?;
        let Ok(new_events) = result else { continue };
        let ctx = CommandContext {
            actor: format!("worker:{}", step.text),
            correlation_id: step.text.clone(),
            causation_id: format!("cmd-{i}"),
            now,
            idempotency: None,
        };
        let head = recorded.last().map_or(Hash::ZERO, |e| e.hash);
        recorded.extend(record(job_id, job.version, head, &new_events, &ctx));
        job = new_events.iter().fold(job, Job::evolve);
        events.extend(new_events);
        check_history(&events, &job)?;
    }
    Ok((job, events, recorded))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_commands_only_ever_produce_legal_histories(steps in steps()) {
        let (job, events, recorded) = run(&steps).map_err(TestCaseError::fail)?;
        prop_assert_eq!(recorded.len(), events.len());
        for (i, e) in recorded.iter().enumerate() {
            prop_assert_eq!(e.version, i as u64 + 1);
        }
        prop_assert_eq!(job.version, events.len() as u64);
    }

    #[test]
    fn the_recorded_history_folds_to_the_live_job(steps in steps()) {
        let (job, events, recorded) = run(&steps).map_err(TestCaseError::fail)?;
        let decoded: Vec<JobEvent> = recorded
            .iter()
            .map(|e| e.decode().map_err(|err| TestCaseError::fail(format!("v{}: {err}", e.version))))
            .collect::<Result<_, _>>()?;
        prop_assert_eq!(&decoded, &events);
        let job_id = recorded[0].job_id;
        let (folded, head) = fold(job_id, &recorded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&folded, &job);
        prop_assert_eq!(Some(head), recorded.last().map(|e| e.hash));
        // Also after a trip through the JSONL export form.
        let reread: Vec<RecordedEvent> = recorded
            .iter()
            .map(|e| serde_json::to_string(e).and_then(|line| serde_json::from_str(&line)))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&reread, &recorded);
        let (refolded, _) = fold(job_id, &reread).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&refolded, &job);
        // Folding owned events in place gives the same state as `evolve`.
        let mut absorbed = Job::default();
        for event in decoded {
            absorbed.absorb(event);
        }
        prop_assert_eq!(absorbed, job);
    }

    #[test]
    fn the_hash_chain_of_any_history_verifies(steps in steps()) {
        let (_, _, recorded) = run(&steps).map_err(TestCaseError::fail)?;
        prop_assert_eq!(verify_chain(&recorded), vec![]);
        for e in &recorded {
            prop_assert!(e.hash_is_valid());
        }
    }

    #[test]
    fn changing_any_canonical_field_of_any_event_breaks_the_chain(
        steps in steps(),
        which in any::<prop::sample::Index>(),
        field in 0usize..12,
        pos in any::<usize>(),
    ) {
        let (_, _, mut recorded) = run(&steps).map_err(TestCaseError::fail)?;
        let i = which.index(recorded.len());
        let before = canonical_bytes(&recorded[i]);
        mutate(&mut recorded[i], field, pos);
        let after = recorded[i].clone();
        // Field 11 is `hash` itself, which is not part of the canonical bytes.
        if field != 11 {
            prop_assert_ne!(canonical_bytes(&after), before, "field {} did not change", field);
        }
        prop_assert!(!after.hash_is_valid(), "field {} changed but the hash still matches", field);
        let breaks = verify_chain(&recorded);
        prop_assert!(!breaks.is_empty());
        prop_assert_eq!(breaks[0].version, after.version);
    }
}

/// Changes one field of an event so that its canonical form differs near byte `pos` of it.
fn mutate(e: &mut RecordedEvent, field: usize, pos: usize) {
    match field {
        0 => e.actor = change_char(&e.actor, pos),
        1 => e.at += Duration::microseconds(1 + (pos % 1_000_000) as i64),
        2 => e.causation_id = change_char(&e.causation_id, pos),
        3 => e.correlation_id = change_char(&e.correlation_id, pos),
        4 => match change_data(e.data.get(), pos) {
            Some(data) => {
                e.data =
                    RawValue::from_string(data).expect("a digit or letter swap keeps JSON valid")
            }
            // `{}` (JobCancelled) has no byte to swap that keeps it JSON: change the type instead.
            None => e.event_type = change_char(&e.event_type, pos),
        },
        5 => e.event_id = flip_uuid(e.event_id, pos),
        6 => e.job_id = JobId(flip_uuid(e.job_id.0, pos)),
        7 => e.prev_hash = flip_hash(e.prev_hash, pos),
        8 => e.schema = e.schema.wrapping_add(1 + (pos % 1000) as u32),
        9 => e.event_type = change_char(&e.event_type, pos),
        10 => e.version += 1 + (pos % 1000) as u64,
        _ => e.hash = flip_hash(e.hash, pos),
    }
}

fn change_char(s: &str, pos: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return "x".into();
    }
    let at = pos % chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match (i == at, c) {
            (false, c) => c,
            (true, 'x') => 'y',
            (true, _) => 'x',
        })
        .collect()
}

fn flip_uuid(id: Uuid, pos: usize) -> Uuid {
    let mut bytes = *id.as_bytes();
    bytes[pos % 16] ^= 1 << (pos % 8);
    Uuid::from_bytes(bytes)
}

fn flip_hash(h: Hash, pos: usize) -> Hash {
    let mut bytes = h.0;
    bytes[pos % 32] ^= 1 << (pos % 8);
    Hash(bytes)
}

/// Swaps one ASCII letter or digit inside a string, or one digit of a number, for another; the
/// result is still JSON (a digit never becomes a leading zero).
fn change_data(raw: &str, pos: usize) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut candidates = Vec::new();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => {
                    i += if bytes.get(i + 1) == Some(&b'u') {
                        6
                    } else {
                        2
                    };
                    continue;
                }
                b'"' => in_string = false,
                _ if b.is_ascii_alphanumeric() => candidates.push(i),
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'0'..=b'9' => candidates.push(i),
                _ => {}
            }
        }
        i += 1;
    }
    if candidates.is_empty() {
        return None;
    }
    let at = candidates[pos % candidates.len()];
    let mut out = bytes.to_vec();
    out[at] = match out[at] {
        b'9' => b'1',
        b'z' => b'a',
        b'Z' => b'A',
        b => b + 1,
    };
    String::from_utf8(out).ok()
}
