//! Given/when/then tests of the `Job` aggregate, one per rule of the state machine documented in
//! `events/src/job.rs`, plus the retry policy, progress checks and job spec validation.

use chrono::{DateTime, Duration, TimeZone, Utc};
use jobledger_events::command::{Clock, Command};
use jobledger_events::event::{self, Capacity, JobEvent, Usage};
use jobledger_events::job::{MAX_INTERRUPTIONS, backoff};
use jobledger_events::spec::{FieldError, Item, JobInput, JobKind, JobSpec, Notify, limits};
use jobledger_events::{Job, Rejection, Status};

// ---------------------------------------------------------------------------------------------
// The given/when/then helper.

struct Given {
    job: Job,
}

struct When {
    job: Job,
    command: Command,
    result: Result<Vec<JobEvent>, Rejection>,
}

/// A job folded from `events`.
fn given(events: impl IntoIterator<Item = JobEvent>) -> Given {
    let events: Vec<JobEvent> = events.into_iter().collect();
    Given {
        job: Job::from_events(&events),
    }
}

impl Given {
    fn when(self, command: Command) -> When {
        let result = self.job.decide(&command);
        When {
            job: self.job,
            command,
            result,
        }
    }
}

impl When {
    /// Asserts the appended events and returns the job after them.
    fn then(self, expected: impl IntoIterator<Item = JobEvent>) -> Job {
        let expected: Vec<JobEvent> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "events for {:?}", self.command);
                events.iter().fold(self.job, Job::evolve)
            }
            Err(r) => panic!(
                "{:?} was rejected: {r:?}; expected {expected:?}",
                self.command
            ),
        }
    }

    /// Asserts the rejection.
    fn rejects(self, expected: Rejection) {
        match self.result {
            Ok(events) => panic!(
                "{:?} appended {events:?}; expected {expected:?}",
                self.command
            ),
            Err(r) => assert_eq!(r, expected, "rejection for {:?}", self.command),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: events and commands with readable defaults.

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 15, 10, 0, 0)
        .single()
        .expect("a valid fixed time")
}

fn clock(jitter: f64) -> Clock {
    Clock { now: t0(), jitter }
}

fn spec() -> JobSpec {
    spec_with_attempts(3)
}

fn spec_with_attempts(max_attempts: u32) -> JobSpec {
    JobSpec {
        kind: JobKind::MetaDescription,
        input: JobInput::Items {
            items: vec![
                Item {
                    id: "post-1".into(),
                    text: Some("Hello".into()),
                    ..Item::default()
                },
                Item {
                    id: "post-2".into(),
                    text: Some("World".into()),
                    ..Item::default()
                },
            ],
        },
        max_attempts,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

fn submitted() -> JobEvent {
    JobEvent::JobSubmitted(spec())
}
fn queued(attempt: u32) -> JobEvent {
    JobEvent::JobQueued(event::Queued {
        attempt,
        message_id: format!("msg-{attempt}"),
    })
}
fn launched(attempt: u32) -> JobEvent {
    JobEvent::TaskLaunched(event::Launched {
        attempt,
        task_arn: format!("task-{attempt}"),
        capacity: Capacity::FargateSpot,
    })
}
fn launch_failed(attempt: u32, retryable: bool) -> JobEvent {
    JobEvent::LaunchFailed(event::LaunchFailure {
        attempt,
        reason: "capacity unavailable".into(),
        retryable,
    })
}
fn started(attempt: u32) -> JobEvent {
    JobEvent::AttemptStarted(event::Started {
        attempt,
        worker: format!("worker-{attempt}"),
    })
}
fn progressed(attempt: u32, done: u64, failed: u64, total: u64) -> JobEvent {
    JobEvent::ProgressReported(event::Progress {
        attempt,
        done,
        failed,
        total,
        checkpoint_uri: None,
    })
}
fn attempt_failed(attempt: u32, retryable: bool) -> JobEvent {
    JobEvent::AttemptFailed(event::AttemptFailure {
        attempt,
        error: "boom".into(),
        retryable,
    })
}
fn interrupted(attempt: u32) -> JobEvent {
    JobEvent::WorkerInterrupted(event::Interrupted {
        attempt,
        reason: "SpotInterruption".into(),
    })
}
fn timed_out(attempt: u32) -> JobEvent {
    JobEvent::AttemptTimedOut(event::TimedOut { attempt })
}
fn retry_scheduled(next_attempt: u32, not_before: DateTime<Utc>) -> JobEvent {
    JobEvent::RetryScheduled(event::RetryScheduled {
        next_attempt,
        not_before,
    })
}
fn usage() -> Usage {
    Usage {
        duration_ms: 1200,
        vcpu: 0.25,
        memory_mb: 512,
        capacity: Some(Capacity::FargateSpot),
        input_tokens: 100,
        output_tokens: 20,
        model: None,
        cost_usd: 0.0000123,
    }
}
fn succeeded(attempt: u32) -> JobEvent {
    JobEvent::JobSucceeded(event::Succeeded {
        attempt,
        result_uri: format!("file://results/{attempt}.jsonl"),
        result_sha256: "ab".repeat(32),
        items_ok: 2,
        items_failed: 0,
        usage: usage(),
    })
}
fn job_failed(reason: &str) -> JobEvent {
    JobEvent::JobFailed(event::Failed {
        reason: reason.into(),
    })
}
fn cancel_requested() -> JobEvent {
    JobEvent::CancelRequested(event::CancelRequested {
        reason: "not needed".into(),
    })
}
fn cancelled() -> JobEvent {
    JobEvent::JobCancelled(event::Cancelled {})
}

fn submit(spec: JobSpec) -> Command {
    Command::Submit(spec)
}
fn mark_queued(attempt: u32) -> Command {
    Command::MarkQueued {
        attempt,
        message_id: format!("msg-{attempt}"),
    }
}
fn record_launch(attempt: u32) -> Command {
    Command::RecordLaunch {
        attempt,
        task_arn: format!("task-{attempt}"),
        capacity: Capacity::FargateSpot,
    }
}
fn launch_failure(attempt: u32, retryable: bool) -> Command {
    Command::RecordLaunchFailure {
        attempt,
        reason: "capacity unavailable".into(),
        retryable,
        clock: clock(0.5),
    }
}
fn start(attempt: u32) -> Command {
    Command::StartAttempt {
        attempt,
        worker: format!("worker-{attempt}"),
    }
}
fn report(attempt: u32, done: u64, failed: u64, total: u64) -> Command {
    Command::ReportProgress {
        attempt,
        done,
        failed,
        total,
        checkpoint_uri: None,
    }
}
fn succeed(attempt: u32) -> Command {
    succeed_with(attempt, usage())
}
fn succeed_with(attempt: u32, usage: Usage) -> Command {
    Command::Succeed {
        attempt,
        result_uri: format!("file://results/{attempt}.jsonl"),
        result_sha256: "ab".repeat(32),
        items_ok: 2,
        items_failed: 0,
        usage,
    }
}
fn fail(attempt: u32, retryable: bool) -> Command {
    fail_with_jitter(attempt, retryable, 0.5)
}
fn fail_with_jitter(attempt: u32, retryable: bool, jitter: f64) -> Command {
    Command::FailAttempt {
        attempt,
        error: "boom".into(),
        retryable,
        clock: clock(jitter),
    }
}
fn interrupt(attempt: u32) -> Command {
    Command::Interrupt {
        attempt,
        reason: "SpotInterruption".into(),
        clock: clock(0.5),
    }
}
fn time_out(attempt: u32) -> Command {
    Command::TimeOut {
        attempt,
        clock: clock(0.5),
    }
}
fn confirm_cancel(attempt: u32) -> Command {
    Command::ConfirmCancel { attempt }
}
fn cancel() -> Command {
    Command::Cancel {
        reason: "not needed".into(),
    }
}
fn retry() -> Command {
    Command::Retry { now: t0() }
}

/// Every command kind, for `attempt`, named as `Command::name` names it.
fn every_command(attempt: u32) -> Vec<Command> {
    vec![
        submit(spec()),
        mark_queued(attempt),
        record_launch(attempt),
        launch_failure(attempt, true),
        start(attempt),
        report(attempt, 1, 0, 2),
        succeed(attempt),
        fail(attempt, true),
        interrupt(attempt),
        time_out(attempt),
        confirm_cancel(attempt),
        cancel(),
        retry(),
    ]
}

/// A history that leaves the job in `status` (attempt 1, or 2 for `RETRY_WAIT`).
fn history_in(status: Status) -> Vec<JobEvent> {
    let running = vec![submitted(), queued(1), launched(1), started(1)];
    let with = |mut base: Vec<JobEvent>, more: Vec<JobEvent>| {
        base.extend(more);
        base
    };
    match status {
        Status::New => vec![],
        Status::Submitted => vec![submitted()],
        Status::Queued => vec![submitted(), queued(1)],
        Status::Launching => vec![submitted(), queued(1), launched(1)],
        Status::Running => running,
        Status::RetryWait => with(
            running,
            vec![attempt_failed(1, true), retry_scheduled(2, t0())],
        ),
        Status::Succeeded => with(running, vec![succeeded(1)]),
        Status::Failed => with(running, vec![attempt_failed(1, false), job_failed("boom")]),
        Status::Cancelling => with(running, vec![cancel_requested()]),
        Status::Cancelled => vec![submitted(), cancel_requested(), cancelled()],
    }
}

/// The retry delay for the `failures`-th failure at jitter 0.5, as the module docs define it.
fn half_jitter_backoff(failures: u32) -> Duration {
    let ceiling = (5_000i64 * 2i64.pow(failures - 1)).min(15 * 60 * 1000);
    Duration::milliseconds(ceiling / 2)
}

// ---------------------------------------------------------------------------------------------
// Ordering rules.

#[test]
fn every_history_helper_reaches_the_status_it_names() {
    for status in Status::ALL {
        assert_eq!(Job::from_events(&history_in(status)).status, status);
    }
}

#[test]
fn a_job_that_was_never_submitted_is_not_found_for_every_command_but_submit() {
    for cmd in every_command(1) {
        if matches!(cmd, Command::Submit(_)) {
            continue;
        }
        given([]).when(cmd).rejects(Rejection::NotFound);
    }
}

#[test]
fn a_finished_job_cannot_be_cancelled() {
    given([
        submitted(),
        queued(1),
        launched(1),
        started(1),
        succeeded(1),
    ])
    .when(cancel())
    .rejects(Rejection::AlreadyFinished(Status::Succeeded));
}

#[test]
fn a_finished_job_answers_every_command_but_submit_and_retry_with_already_finished() {
    for status in [Status::Succeeded, Status::Failed, Status::Cancelled] {
        let job = Job::from_events(&history_in(status));
        // A stale attempt is still AlreadyFinished: finishing is checked first.
        for attempt in [job.attempt, job.attempt + 1] {
            for cmd in every_command(attempt) {
                if matches!(cmd, Command::Submit(_) | Command::Retry { .. }) {
                    continue;
                }
                given(history_in(status))
                    .when(cmd)
                    .rejects(Rejection::AlreadyFinished(status));
            }
        }
    }
}

#[test]
fn submitting_a_job_that_exists_is_already_exists_even_once_finished() {
    for status in Status::ALL.into_iter().filter(|s| *s != Status::New) {
        given(history_in(status))
            .when(submit(spec()))
            .rejects(Rejection::AlreadyExists);
    }
}

#[test]
fn a_command_for_an_earlier_attempt_is_stale() {
    given(history_in(Status::RetryWait))
        .when(mark_queued(1))
        .rejects(Rejection::StaleAttempt { current: 2, got: 1 });
}

#[test]
fn a_command_for_a_later_attempt_is_stale() {
    given(history_in(Status::Running))
        .when(fail(2, true))
        .rejects(Rejection::StaleAttempt { current: 1, got: 2 });
}

#[test]
fn staleness_is_checked_before_legality() {
    // Starting from SUBMITTED is illegal, but the wrong attempt is reported first.
    given([submitted()])
        .when(start(7))
        .rejects(Rejection::StaleAttempt { current: 1, got: 7 });
    given([submitted()])
        .when(start(1))
        .rejects(Rejection::IllegalTransition {
            from: Status::Submitted,
            command: "start_attempt",
        });
}

// ---------------------------------------------------------------------------------------------
// One test per row of the table.

#[test]
fn a_valid_submission_creates_the_job() {
    let job = given([]).when(submit(spec())).then([submitted()]);
    assert_eq!(
        (job.status, job.attempt, job.total, job.version),
        (Status::Submitted, 1, 2, 1)
    );
}

#[test]
fn an_invalid_submission_is_refused_with_one_message_per_field() {
    let mut bad = spec();
    bad.max_attempts = 0;
    given([])
        .when(submit(bad))
        .rejects(Rejection::Invalid(vec![FieldError {
            field: "max_attempts".into(),
            message: "must be 1 to 10, got 0".into(),
        }]));
}

#[test]
fn a_submitted_job_is_queued() {
    let job = given([submitted()]).when(mark_queued(1)).then([queued(1)]);
    assert_eq!(job.status, Status::Queued);
}

#[test]
fn a_job_waiting_for_a_retry_is_queued_for_the_next_attempt() {
    let job = given(history_in(Status::RetryWait))
        .when(mark_queued(2))
        .then([queued(2)]);
    assert_eq!((job.status, job.attempt), (Status::Queued, 2));
}

#[test]
fn a_queued_job_records_its_launch() {
    let job = given([submitted(), queued(1)])
        .when(record_launch(1))
        .then([launched(1)]);
    assert_eq!(job.status, Status::Launching);
    assert_eq!(job.task_arn.as_deref(), Some("task-1"));
}

#[test]
fn a_failed_launch_of_a_queued_job_schedules_a_retry_with_backoff() {
    let job = given([submitted(), queued(1)])
        .when(launch_failure(1, true))
        .then([
            launch_failed(1, true),
            retry_scheduled(2, t0() + half_jitter_backoff(1)),
        ]);
    assert_eq!(
        (job.status, job.attempt, job.failures),
        (Status::RetryWait, 2, 1)
    );
}

#[test]
fn a_failed_launch_of_a_launching_job_that_cannot_be_retried_fails_it() {
    let job = given([submitted(), queued(1), launched(1)])
        .when(launch_failure(1, false))
        .then([launch_failed(1, false), job_failed("capacity unavailable")]);
    assert_eq!(job.status, Status::Failed);
}

#[test]
fn a_worker_claims_a_launching_attempt() {
    let job = given([submitted(), queued(1), launched(1)])
        .when(start(1))
        .then([started(1)]);
    assert_eq!(job.status, Status::Running);
}

#[test]
fn a_worker_may_claim_a_queued_attempt_before_the_launch_is_recorded() {
    let job = given([submitted(), queued(1)])
        .when(start(1))
        .then([started(1)]);
    assert_eq!(job.status, Status::Running);
}

#[test]
fn a_running_job_reports_progress_without_changing_status() {
    let job = given(history_in(Status::Running))
        .when(report(1, 1, 0, 2))
        .then([progressed(1, 1, 0, 2)]);
    assert_eq!(
        (job.status, job.done, job.failed, job.total),
        (Status::Running, 1, 0, 2)
    );
}

#[test]
fn a_cancelling_job_still_reports_progress() {
    let job = given(history_in(Status::Cancelling))
        .when(report(1, 2, 0, 2))
        .then([progressed(1, 2, 0, 2)]);
    assert_eq!(job.status, Status::Cancelling);
}

#[test]
fn a_progress_checkpoint_is_kept_until_a_newer_one_arrives() {
    let checkpointed = JobEvent::ProgressReported(event::Progress {
        checkpoint_uri: Some("file://ckpt/1".into()),
        ..match progressed(1, 1, 0, 2) {
            JobEvent::ProgressReported(p) => p,
            _ => unreachable!("progressed builds ProgressReported"),
        }
    });
    let mut with_checkpoint = report(1, 1, 0, 2);
    if let Command::ReportProgress { checkpoint_uri, .. } = &mut with_checkpoint {
        *checkpoint_uri = Some("file://ckpt/1".into());
    }
    given(history_in(Status::Running))
        .when(with_checkpoint)
        .then([checkpointed.clone()]);
    let mut history = history_in(Status::Running);
    history.push(checkpointed);
    let job = given(history)
        .when(report(1, 2, 0, 2))
        .then([progressed(1, 2, 0, 2)]);
    assert_eq!(job.checkpoint_uri.as_deref(), Some("file://ckpt/1"));
    assert_eq!(job.done, 2);
}

#[test]
fn a_running_job_succeeds() {
    let job = given(history_in(Status::Running))
        .when(succeed(1))
        .then([succeeded(1)]);
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result.map(|r| r.items_ok), Some(2));
}

#[test]
fn a_cancelling_job_that_finishes_anyway_succeeds() {
    let job = given(history_in(Status::Cancelling))
        .when(succeed(1))
        .then([succeeded(1)]);
    assert_eq!(job.status, Status::Succeeded);
}

#[test]
fn a_failed_attempt_of_a_running_job_schedules_a_retry() {
    let job = given(history_in(Status::Running))
        .when(fail(1, true))
        .then([
            attempt_failed(1, true),
            retry_scheduled(2, t0() + half_jitter_backoff(1)),
        ]);
    assert_eq!(
        (job.status, job.attempt, job.failures),
        (Status::RetryWait, 2, 1)
    );
    assert_eq!(job.error.as_deref(), Some("boom"));
}

#[test]
fn a_failed_attempt_of_a_launching_job_schedules_a_retry() {
    given([submitted(), queued(1), launched(1)])
        .when(fail(1, true))
        .then([
            attempt_failed(1, true),
            retry_scheduled(2, t0() + half_jitter_backoff(1)),
        ]);
}

#[test]
fn an_interrupted_worker_is_retried_at_once() {
    let job = given(history_in(Status::Running))
        .when(interrupt(1))
        .then([interrupted(1), retry_scheduled(2, t0())]);
    assert_eq!(
        (job.status, job.attempt, job.failures, job.interruptions),
        (Status::RetryWait, 2, 0, 1)
    );
}

#[test]
fn an_interrupted_launch_is_retried_at_once() {
    given([submitted(), queued(1), launched(1)])
        .when(interrupt(1))
        .then([interrupted(1), retry_scheduled(2, t0())]);
}

#[test]
fn a_timed_out_attempt_is_retried_with_backoff() {
    let job = given(history_in(Status::Running)).when(time_out(1)).then([
        timed_out(1),
        retry_scheduled(2, t0() + half_jitter_backoff(1)),
    ]);
    assert_eq!(job.error.as_deref(), Some("attempt 1 timed out"));
}

#[test]
fn a_timed_out_launch_is_retried_with_backoff() {
    given([submitted(), queued(1), launched(1)])
        .when(time_out(1))
        .then([
            timed_out(1),
            retry_scheduled(2, t0() + half_jitter_backoff(1)),
        ]);
}

#[test]
fn a_failed_attempt_of_a_cancelling_job_cancels_it() {
    let job = given(history_in(Status::Cancelling))
        .when(fail(1, true))
        .then([attempt_failed(1, true), cancelled()]);
    assert_eq!(job.status, Status::Cancelled);
}

#[test]
fn an_interrupted_cancelling_job_is_cancelled() {
    let job = given(history_in(Status::Cancelling))
        .when(interrupt(1))
        .then([interrupted(1), cancelled()]);
    assert_eq!(job.status, Status::Cancelled);
}

#[test]
fn a_timed_out_cancelling_job_is_cancelled() {
    let job = given(history_in(Status::Cancelling))
        .when(time_out(1))
        .then([timed_out(1), cancelled()]);
    assert_eq!(job.status, Status::Cancelled);
}

#[test]
fn a_worker_confirms_a_cancellation() {
    let job = given(history_in(Status::Cancelling))
        .when(confirm_cancel(1))
        .then([cancelled()]);
    assert_eq!(job.status, Status::Cancelled);
}

#[test]
fn a_job_that_is_not_running_is_cancelled_at_once() {
    for status in [
        Status::Submitted,
        Status::Queued,
        Status::Launching,
        Status::RetryWait,
    ] {
        let job = given(history_in(status))
            .when(cancel())
            .then([cancel_requested(), cancelled()]);
        assert_eq!(job.status, Status::Cancelled, "from {status}");
    }
}

#[test]
fn cancelling_a_running_job_asks_the_worker_to_stop() {
    let job = given(history_in(Status::Running))
        .when(cancel())
        .then([cancel_requested()]);
    assert_eq!(job.status, Status::Cancelling);
}

#[test]
fn a_job_cannot_be_cancelled_twice() {
    given(history_in(Status::Cancelling))
        .when(cancel())
        .rejects(Rejection::AlreadyCancelling);
}

#[test]
fn a_failed_job_is_retried_by_hand_at_once() {
    let job = given(history_in(Status::Failed))
        .when(retry())
        .then([retry_scheduled(2, t0())]);
    assert_eq!((job.status, job.attempt), (Status::RetryWait, 2));
}

#[test]
fn a_cancelled_job_is_retried_by_hand_at_once() {
    let job = given(history_in(Status::Cancelled))
        .when(retry())
        .then([retry_scheduled(2, t0())]);
    assert_eq!(job.status, Status::RetryWait);
}

#[test]
fn a_succeeded_job_cannot_be_retried() {
    given(history_in(Status::Succeeded))
        .when(retry())
        .rejects(Rejection::AlreadyFinished(Status::Succeeded));
}

// ---------------------------------------------------------------------------------------------
// Every (status, command) pair, checked against the table parsed out of job.rs's module docs, so
// the docs and the code cannot drift apart.

/// One row of the table: statuses, command, expected outcome, resulting statuses.
#[derive(Debug)]
struct Row {
    from: Vec<Status>,
    command: String,
    /// `Ok(event type alternatives, in order)` or the name of the rejection.
    outcome: Result<Vec<Vec<String>>, String>,
    to: Vec<Status>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn table_rows() -> Vec<Row> {
    let source = include_str!("../src/job.rs");
    let mut rows = Vec::new();
    for line in source.lines().filter_map(|l| l.strip_prefix("//! |")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || cells[0] == "from" || cells[0].starts_with("---") {
            continue;
        }
        let from: Vec<Status> = backticked(cells[0])
            .iter()
            .map(|s| Status::parse(s).unwrap_or_else(|| panic!("unknown status {s} in table")))
            .collect();
        // Rows about a job that does not exist or about any pair are the ordering rules.
        if from.is_empty() {
            continue;
        }
        let command = backticked(cells[1]).remove(0);
        let outcome = match cells[2].strip_prefix('—') {
            Some(rejection) => Err(backticked(rejection).remove(0)),
            None => Ok(cells[2]
                .split(" + ")
                .map(|part| {
                    if part.contains("retry-or-fail") {
                        vec!["RetryScheduled".to_string(), "JobFailed".to_string()]
                    } else {
                        vec![backticked(part).remove(0)]
                    }
                })
                .collect()),
        };
        let to = if cells[3] == "unchanged" {
            from.clone()
        } else {
            backticked(cells[3])
                .iter()
                .filter_map(|s| Status::parse(s))
                .collect()
        };
        rows.push(Row {
            from,
            command,
            outcome,
            to,
        });
    }
    rows
}

fn rejection_name(r: &Rejection) -> &'static str {
    match r {
        Rejection::Invalid(_) => "Invalid",
        Rejection::AlreadyExists => "AlreadyExists",
        Rejection::NotFound => "NotFound",
        Rejection::AlreadyFinished(_) => "AlreadyFinished",
        Rejection::StaleAttempt { .. } => "StaleAttempt",
        Rejection::AlreadyCancelling => "AlreadyCancelling",
        Rejection::InvalidProgress(_) => "InvalidProgress",
        Rejection::IllegalTransition { .. } => "IllegalTransition",
    }
}

#[test]
fn the_table_in_the_module_docs_is_parsed_whole() {
    let rows = table_rows();
    // 22 rows in all, minus the three about a job that does not exist or about any other pair.
    assert_eq!(rows.len(), 19, "{rows:#?}");
    let names: Vec<String> = every_command(1)
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    for row in &rows {
        assert!(names.contains(&row.command), "unknown command in {row:?}");
    }
}

#[test]
fn every_status_and_command_pair_follows_the_table_in_the_module_docs() {
    let rows = table_rows();
    let mut legal_pairs = 0;
    for status in Status::ALL {
        let job = Job::from_events(&history_in(status));
        for cmd in every_command(job.attempt) {
            let result = job.decide(&cmd);
            let name = cmd.name();
            let row = rows
                .iter()
                .find(|r| r.command == name && r.from.contains(&status));
            let expected: Result<Option<&Row>, Rejection> = if status == Status::New {
                if name == "submit" {
                    Ok(None)
                } else {
                    Err(Rejection::NotFound)
                }
            } else if name == "submit" {
                Err(Rejection::AlreadyExists)
            } else if status.is_terminal() && !(name == "retry" && status != Status::Succeeded) {
                Err(Rejection::AlreadyFinished(status))
            } else {
                match row {
                    Some(row) => Ok(Some(row)),
                    None => Err(Rejection::IllegalTransition {
                        from: status,
                        command: name,
                    }),
                }
            };
            match (expected, result) {
                (Ok(None), Ok(events)) => assert_eq!(events.len(), 1, "{status} {name}"),
                (Ok(Some(row)), Ok(events)) => {
                    legal_pairs += 1;
                    let types = row.outcome.as_ref().unwrap_or_else(|r| {
                        panic!("{status} {name}: the table says {r}, the code appended {events:?}")
                    });
                    assert_eq!(events.len(), types.len(), "{status} {name}: {events:?}");
                    for (event, allowed) in events.iter().zip(types) {
                        assert!(
                            allowed.iter().any(|t| t == event.event_type()),
                            "{status} {name}: {} is not one of {allowed:?}",
                            event.event_type()
                        );
                    }
                    let after = events.iter().fold(job.clone(), Job::evolve);
                    assert!(
                        row.to.contains(&after.status),
                        "{status} {name}: ended {} not in {:?}",
                        after.status,
                        row.to
                    );
                }
                (Ok(Some(row)), Err(r)) => {
                    legal_pairs += 1;
                    assert_eq!(
                        row.outcome.as_ref().err().map(String::as_str),
                        Some(rejection_name(&r)),
                        "{status} {name}: {r:?}"
                    );
                }
                (Err(want), Err(got)) => assert_eq!(got, want, "{status} {name}"),
                (want, got) => panic!("{status} {name}: expected {want:?}, got {got:?}"),
            }
        }
    }
    // Sum of the `from` statuses over the table's rows (SUCCEEDED retry is AlreadyFinished first).
    let listed: usize = rows.iter().map(|r| r.from.len()).sum::<usize>() - 1;
    assert_eq!(legal_pairs, listed);
}

// ---------------------------------------------------------------------------------------------
// Retry policy.

#[test]
fn backoff_is_jitter_times_five_seconds_doubling_per_failure() {
    assert_eq!(backoff(1, 1.0), Duration::seconds(5));
    assert_eq!(backoff(2, 1.0), Duration::seconds(10));
    assert_eq!(backoff(3, 0.5), Duration::seconds(10));
    assert_eq!(backoff(4, 0.25), Duration::seconds(10));
    assert_eq!(backoff(1, 0.123), Duration::milliseconds(615));
    assert_eq!(backoff(1, 0.0), Duration::zero());
}

#[test]
fn backoff_is_capped_at_fifteen_minutes() {
    assert_eq!(backoff(8, 1.0), Duration::seconds(640));
    assert_eq!(backoff(9, 1.0), Duration::minutes(15));
    assert_eq!(backoff(9, 0.5), Duration::seconds(450));
    assert_eq!(backoff(u32::MAX, 1.0), Duration::minutes(15));
}

#[test]
fn backoff_ignores_jitter_outside_zero_to_one() {
    assert_eq!(backoff(1, f64::NAN), Duration::zero());
    assert_eq!(backoff(1, -3.0), Duration::zero());
    assert_eq!(backoff(1, 7.0), Duration::seconds(5));
    assert_eq!(backoff(1, f64::INFINITY), Duration::zero());
}

/// Runs a command on a job, which must accept it.
fn apply(job: Job, cmd: Command) -> (Job, Vec<JobEvent>) {
    let events = job
        .decide(&cmd)
        .unwrap_or_else(|r| panic!("{cmd:?} rejected: {r:?}"));
    (events.iter().fold(job, Job::evolve), events)
}

/// Runs attempt `job.attempt` from queue to `RUNNING`.
fn run_attempt(job: Job) -> Job {
    let a = job.attempt;
    let (job, _) = apply(job, mark_queued(a));
    let (job, _) = apply(job, record_launch(a));
    apply(job, start(a)).0
}

#[test]
fn each_retry_waits_for_the_exact_backoff_of_its_failure_count() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(10))]);
    for failures in 1..=9u32 {
        job = run_attempt(job);
        let attempt = job.attempt;
        let (next, events) = apply(job, fail_with_jitter(attempt, true, 0.5));
        let ceiling_s = (5i64 << (failures - 1)).min(900);
        assert_eq!(
            events[1],
            retry_scheduled(attempt + 1, t0() + Duration::milliseconds(ceiling_s * 500)),
            "failure {failures}"
        );
        job = next;
    }
}

#[test]
fn a_failure_that_cannot_be_retried_fails_the_job_with_its_error() {
    given(history_in(Status::Running))
        .when(fail(1, false))
        .then([attempt_failed(1, false), job_failed("boom")]);
}

#[test]
fn the_last_allowed_failure_fails_the_job_with_the_reason() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(3))]);
    for _ in 0..2 {
        job = run_attempt(job);
        let a = job.attempt;
        job = apply(job, fail(a, true)).0;
        assert_eq!(job.status, Status::RetryWait);
    }
    job = run_attempt(job);
    let (job, events) = apply(job, fail(3, true));
    assert_eq!(
        events,
        vec![
            attempt_failed(3, true),
            job_failed("gave up after 3 failed attempt(s): boom")
        ]
    );
    assert_eq!((job.status, job.failures), (Status::Failed, 3));
}

#[test]
fn a_job_with_one_attempt_fails_on_its_first_timeout() {
    let job = run_attempt(Job::from_events(&[JobEvent::JobSubmitted(
        spec_with_attempts(1),
    )]));
    let (_, events) = apply(job, time_out(1));
    assert_eq!(
        events,
        vec![
            timed_out(1),
            job_failed("gave up after 1 failed attempt(s): attempt 1 timed out")
        ]
    );
}

#[test]
fn launch_failures_use_up_attempts() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(2))]);
    job = apply(job, mark_queued(1)).0;
    job = apply(job, launch_failure(1, true)).0;
    job = apply(job, mark_queued(2)).0;
    let (job, events) = apply(job, launch_failure(2, true));
    assert_eq!(
        events[1],
        job_failed("gave up after 2 failed attempt(s): capacity unavailable")
    );
    assert_eq!(job.status, Status::Failed);
}

#[test]
fn interruptions_do_not_use_up_attempts() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(2))]);
    for _ in 0..(MAX_INTERRUPTIONS - 1) {
        job = run_attempt(job);
        let a = job.attempt;
        job = apply(job, interrupt(a)).0;
    }
    assert_eq!((job.failures, job.interruptions, job.attempt), (0, 9, 10));
    // One failure still leaves an attempt of the two.
    job = run_attempt(job);
    let (job, events) = apply(job, fail(10, true));
    assert_eq!(events[1].event_type(), "RetryScheduled");
    assert_eq!(job.status, Status::RetryWait);
}

#[test]
fn the_tenth_interruption_fails_the_job() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(10))]);
    for _ in 0..(MAX_INTERRUPTIONS - 1) {
        job = run_attempt(job);
        let a = job.attempt;
        job = apply(job, interrupt(a)).0;
        assert_eq!(job.status, Status::RetryWait);
    }
    job = run_attempt(job);
    let (job, events) = apply(job, interrupt(10));
    assert_eq!(
        events,
        vec![
            interrupted(10),
            job_failed("interrupted 10 times (last: SpotInterruption)")
        ]
    );
    assert_eq!(job.status, Status::Failed);
}

#[test]
fn a_manual_retry_resets_the_failure_and_interruption_budgets() {
    let mut job = Job::from_events(&[JobEvent::JobSubmitted(spec_with_attempts(1))]);
    job = run_attempt(job);
    job = apply(job, interrupt(1)).0;
    job = run_attempt(job);
    job = apply(job, fail(2, true)).0;
    assert_eq!(
        (job.status, job.failures, job.interruptions),
        (Status::Failed, 1, 1)
    );
    let (job, events) = apply(job, retry());
    assert_eq!(events, vec![retry_scheduled(3, t0())]);
    assert_eq!(
        (job.status, job.failures, job.interruptions),
        (Status::RetryWait, 0, 0)
    );
    // With the budget back, the next attempt runs and may fail once again.
    let job = run_attempt(job);
    let (job, events) = apply(job, fail(3, true));
    assert_eq!(
        events[1],
        job_failed("gave up after 1 failed attempt(s): boom")
    );
    assert_eq!(job.status, Status::Failed);
}

// ---------------------------------------------------------------------------------------------
// Progress and result figures.

#[test]
fn progress_may_account_for_every_item() {
    given(history_in(Status::Running))
        .when(report(1, 1, 1, 2))
        .then([progressed(1, 1, 1, 2)]);
}

#[test]
fn progress_cannot_count_more_items_than_the_total() {
    given(history_in(Status::Running))
        .when(report(1, 2, 1, 2))
        .rejects(Rejection::InvalidProgress(
            "done 2 + failed 1 is more than total 2".into(),
        ));
}

#[test]
fn progress_counts_beyond_what_the_ledger_stores_exactly_are_refused_not_overflowed() {
    // done + failed would overflow a u64; the count limit answers first.
    let rejection = given(history_in(Status::Running))
        .job
        .decide(&report(1, u64::MAX, u64::MAX, u64::MAX))
        .expect_err("refused");
    assert_eq!(rejection.code(), "invalid_progress");
    assert!(rejection.to_string().contains("2^53"), "{rejection}");
    let largest = limits::MAX_SAFE_INTEGER;
    given(history_in(Status::Running))
        .when(report(1, largest, 0, largest))
        .then([progressed(1, largest, 0, largest)]);
}

#[test]
fn a_result_with_a_cost_that_is_not_a_number_is_refused() {
    for bad in [f64::NAN, f64::INFINITY, -0.5] {
        let rejection = given(history_in(Status::Running))
            .job
            .decide(&succeed_with(
                1,
                Usage {
                    cost_usd: bad,
                    ..usage()
                },
            ))
            .expect_err("refused");
        assert_eq!(rejection.http_status(), 422);
        assert!(
            rejection.to_string().contains("usage.cost_usd"),
            "{rejection}"
        );
    }
}

#[test]
fn a_result_with_token_counts_beyond_what_the_ledger_stores_exactly_is_refused() {
    let rejection = given(history_in(Status::Running))
        .job
        .decide(&succeed_with(
            1,
            Usage {
                input_tokens: 1 << 60,
                ..usage()
            },
        ))
        .expect_err("refused");
    assert!(
        rejection.to_string().contains("usage.input_tokens"),
        "{rejection}"
    );
}

// ---------------------------------------------------------------------------------------------
// Spec validation: one test per limit.

fn errors_of(spec: &JobSpec) -> Vec<FieldError> {
    spec.validate().err().unwrap_or_default()
}

fn fields_of(spec: &JobSpec) -> Vec<String> {
    errors_of(spec).into_iter().map(|e| e.field).collect()
}

fn with_items(n: usize) -> JobSpec {
    JobSpec {
        input: JobInput::Items {
            items: (0..n)
                .map(|i| Item {
                    id: format!("{i}"),
                    ..Item::default()
                })
                .collect(),
        },
        ..spec()
    }
}

#[test]
fn the_default_fixture_spec_is_valid() {
    assert_eq!(spec().validate(), Ok(()));
}

#[test]
fn an_unknown_kind_is_a_clear_deserialisation_error() {
    let err = serde_json::from_str::<JobSpec>(
        r#"{"kind":"poetry","items":[{"id":"a","text":"x"}],"max_attempts":3,"timeout_s":3600}"#,
    )
    .expect_err("poetry is not a kind");
    let message = err.to_string();
    assert!(
        message.contains("unknown variant `poetry`")
            && message.contains("`image_alt`, `meta_description`, `content_analysis`, `noop`"),
        "{message}"
    );
}

#[test]
fn a_job_needs_at_least_one_item() {
    assert_eq!(
        errors_of(&with_items(0)),
        vec![FieldError {
            field: "items".into(),
            message: "must hold 1 to 10000 items, got 0".into()
        }]
    );
}

#[test]
fn a_job_holds_at_most_ten_thousand_items() {
    assert_eq!(with_items(limits::MAX_ITEMS).validate(), Ok(()));
    assert_eq!(
        errors_of(&with_items(10_001)),
        vec![FieldError {
            field: "items".into(),
            message: "must hold 1 to 10000 items, got 10001".into()
        }]
    );
}

#[test]
fn inline_input_is_at_most_256_kib() {
    // `[{"id":"a","text":""}]` is 22 bytes; the text fills the rest.
    let sized = |bytes: usize| JobSpec {
        input: JobInput::Items {
            items: vec![Item {
                id: "a".into(),
                text: Some("x".repeat(bytes - 22)),
                ..Item::default()
            }],
        },
        ..spec()
    };
    assert_eq!(sized(256 * 1024).validate(), Ok(()));
    let errors = errors_of(&sized(256 * 1024 + 1));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "items");
    assert!(
        errors[0].message.contains("262145 bytes") && errors[0].message.contains("input_uri"),
        "{}",
        errors[0].message
    );
}

#[test]
fn every_item_needs_an_id() {
    let mut spec = with_items(3);
    if let JobInput::Items { items } = &mut spec.input {
        items[1].id.clear();
    }
    assert_eq!(errors_of(&spec)[0].message, "item 1 has an empty id");
}

#[test]
fn an_input_uri_must_be_s3_or_file() {
    let spec = JobSpec {
        input: JobInput::Uri {
            input_uri: "https://example.com/items.jsonl".into(),
        },
        ..spec()
    };
    assert_eq!(fields_of(&spec), vec!["input_uri"]);
}

#[test]
fn max_attempts_is_one_to_ten() {
    for ok in [1, 10] {
        assert_eq!(spec_with_attempts(ok).validate(), Ok(()));
    }
    for bad in [0, 11] {
        assert_eq!(
            errors_of(&spec_with_attempts(bad)),
            vec![FieldError {
                field: "max_attempts".into(),
                message: format!("must be 1 to 10, got {bad}")
            }]
        );
    }
}

#[test]
fn the_timeout_is_one_minute_to_one_day() {
    for (timeout_s, valid) in [(59, false), (60, true), (86_400, true), (86_401, false)] {
        let spec = JobSpec {
            timeout_s,
            ..spec()
        };
        assert_eq!(spec.validate().is_ok(), valid, "{timeout_s}");
        if !valid {
            assert_eq!(
                errors_of(&spec)[0].message,
                format!("must be 60 to 86400 seconds, got {timeout_s}")
            );
        }
    }
}

#[test]
fn metadata_is_at_most_2_kib_as_json() {
    // `{"k":""}` is 8 bytes.
    let sized = |bytes: usize| {
        let mut metadata = serde_json::Map::new();
        metadata.insert("k".into(), "m".repeat(bytes - 8).into());
        JobSpec { metadata, ..spec() }
    };
    assert_eq!(sized(2048).validate(), Ok(()));
    assert_eq!(
        errors_of(&sized(2049)),
        vec![FieldError {
            field: "metadata".into(),
            message: "is 2049 bytes as JSON, more than 2048 (2 KiB)".into()
        }]
    );
}

#[test]
fn metadata_integers_beyond_2_pow_53_are_refused_rather_than_rounded() {
    let mut metadata = serde_json::Map::new();
    metadata.insert("nested".into(), serde_json::json!({"ids": [1, u64::MAX]}));
    let errors = errors_of(&JobSpec { metadata, ..spec() });
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .starts_with("metadata.nested.ids[1] is an integer beyond"),
        "{}",
        errors[0].message
    );
    let mut metadata = serde_json::Map::new();
    metadata.insert("ok".into(), serde_json::json!(-9_007_199_254_740_991i64));
    assert_eq!(JobSpec { metadata, ..spec() }.validate(), Ok(()));
}

#[test]
fn the_recorded_spec_holds_metadata_numbers_in_canonical_form() {
    let mut metadata = serde_json::Map::new();
    metadata.insert("whole".into(), serde_json::json!(5.0));
    let job = given([])
        .when(submit(JobSpec { metadata, ..spec() }))
        .then([JobEvent::JobSubmitted(JobSpec {
            metadata: serde_json::from_str(r#"{"whole":5}"#).expect("valid JSON"),
            ..spec()
        })]);
    assert_eq!(job.status, Status::Submitted);
}

fn with_key(key: &str) -> JobSpec {
    JobSpec {
        idempotency_key: Some(key.into()),
        ..spec()
    }
}

#[test]
fn an_idempotency_key_is_one_to_128_characters() {
    assert_eq!(with_key("k").validate(), Ok(()));
    assert_eq!(with_key(&"k".repeat(128)).validate(), Ok(()));
    assert_eq!(
        errors_of(&with_key("")),
        vec![FieldError {
            field: "idempotency_key".into(),
            message: "must be 1 to 128 characters, got 0".into()
        }]
    );
    assert_eq!(
        errors_of(&with_key(&"k".repeat(129)))[0].message,
        "must be 1 to 128 characters, got 129"
    );
}

#[test]
fn an_idempotency_key_is_printable_ascii() {
    for bad in ["tab\there", "bell\u{7}", "del\u{7f}", "café"] {
        assert_eq!(
            errors_of(&with_key(bad)),
            vec![FieldError {
                field: "idempotency_key".into(),
                message: "must be printable ASCII (0x20 to 0x7e)".into()
            }],
            "{bad:?}"
        );
    }
    // 100 two-byte characters are 200 bytes but 100 characters: the complaint is the charset.
    assert_eq!(
        errors_of(&with_key(&"é".repeat(100)))[0].message,
        "must be printable ASCII (0x20 to 0x7e)"
    );
}

#[test]
fn every_invalid_field_is_reported_at_once() {
    let mut metadata = serde_json::Map::new();
    metadata.insert("k".into(), "m".repeat(3000).into());
    let spec = JobSpec {
        max_attempts: 0,
        timeout_s: 59,
        metadata,
        idempotency_key: Some(String::new()),
        ..with_items(0)
    };
    assert_eq!(
        fields_of(&spec),
        vec![
            "items",
            "max_attempts",
            "timeout_s",
            "metadata",
            "idempotency_key"
        ]
    );
    let rejection = given([])
        .when(submit(spec.clone()))
        .result
        .expect_err("invalid");
    assert_eq!(rejection.http_status(), 422);
    let message = rejection.to_string();
    assert!(
        message.starts_with("invalid job: items: must hold 1 to 10000 items"),
        "{message}"
    );
    assert_eq!(message.matches("; ").count(), 4, "{message}");
}
