//! `verify`: recomputes the hash chain and checks every invariant of each job's history.
//!
//! Rules (each finding names the job, the version and one of these):
//! - `readable`: the stored item parses as an event (or pin);
//! - `canonical encoding`: the stored bytes are exactly the canonical encoding of the parsed event;
//! - `gap-free versions`: versions run 1, 2, 3 … in order;
//! - `chain link`: `prev_hash` is the previous event's `hash` (zero for version 1);
//! - `event hash`: `hash` is the SHA-256 of `prev_hash` and the canonical envelope;
//! - `payload decodes`: the payload decodes (through the upcasters) as its type;
//! - `legal transitions`: each event is one `Job::decide` produces from the state before it, for
//!   the command the event records (replaying decide, not trusting the record);
//! - `attempt numbering`: events name the current attempt, retries the next one;
//! - `terminal events last`: nothing but a manual retry follows a terminal event;
//! - `timestamps monotone`: `at` never goes back within a job;
//! - `result checksum`: a reachable result file hashes to the recorded `result_sha256`;
//! - `head pin`: (export files) each job ends with a pin naming its last version and hash;
//! - `job contiguity`: (export files) a job's lines are not split or repeated.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read;

use chrono::{DateTime, Duration, Utc};
use jobledger_events::event::{JobEvent, RetryScheduled};
use jobledger_events::spec::JobInput;
use jobledger_events::{Clock, Command, Hash, Job, JobId, Rejection};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::format::{self, EventItem, Item, Pin, Pos};

/// Rule names used in findings.
pub mod rules {
    /// The stored item parses.
    pub const READABLE: &str = "readable";
    /// The stored bytes are canonical.
    pub const CANONICAL: &str = "canonical encoding";
    /// Versions 1, 2, 3 …
    pub const VERSIONS: &str = "gap-free versions";
    /// `prev_hash` links to the previous hash.
    pub const LINK: &str = "chain link";
    /// The hash matches the content.
    pub const HASH: &str = "event hash";
    /// The payload decodes.
    pub const DECODES: &str = "payload decodes";
    /// The state machine could produce the event.
    pub const LEGAL: &str = "legal transitions";
    /// Attempts are numbered consistently.
    pub const ATTEMPTS: &str = "attempt numbering";
    /// Nothing but a manual retry after a terminal event.
    pub const TERMINAL: &str = "terminal events last";
    /// Time never goes back.
    pub const TIME: &str = "timestamps monotone";
    /// Result files match their checksums.
    pub const RESULT: &str = "result checksum";
    /// Each job ends with a matching pin.
    pub const PIN: &str = "head pin";
    /// A job's lines are together and appear once.
    pub const CONTIGUOUS: &str = "job contiguity";
}

/// How far a retry's `not_before` may sit outside the backoff window: the command's clock and the
/// envelope's time are read separately by the caller.
const CLOCK_SLACK: Duration = Duration::seconds(60);

/// Findings kept in memory; beyond this they are only counted.
const MAX_KEPT: usize = 100_000;

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The job, when it could be made out.
    pub job_id: Option<JobId>,
    /// The version, when it could be made out.
    pub version: Option<u64>,
    /// Which rule (see [`rules`]).
    pub rule: &'static str,
    /// What is wrong.
    pub detail: String,
    /// Where it was read (line of an export file, seq of the store).
    #[serde(skip)]
    pub pos: Pos,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.job_id {
            Some(j) => write!(f, "job {j}")?,
            None => write!(f, "job ?")?,
        }
        match self.version {
            Some(v) => write!(f, " version {v}")?,
            None => write!(f, " version ?")?,
        }
        write!(f, ": [{}] {}", self.rule, self.detail)?;
        if self.pos != Pos::None {
            write!(f, " ({})", self.pos)?;
        }
        Ok(())
    }
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Events read.
    pub events: u64,
    /// Jobs seen.
    pub jobs: u64,
    /// Findings (the first 100,000).
    pub findings: Vec<Finding>,
    /// All findings, counted.
    pub total_findings: u64,
    /// Result files hashed and compared.
    pub results_checked: u64,
    /// Results whose file could not be reached here (remote URI or missing file); not a failure.
    pub results_unreachable: u64,
}

impl VerifyReport {
    /// Whether every rule held.
    pub fn ok(&self) -> bool {
        self.total_findings == 0
    }

    /// Whether some finding names this rule.
    pub fn has_rule(&self, rule: &str) -> bool {
        self.findings.iter().any(|f| f.rule == rule)
    }
}

/// One expected event of a command whose first event was already seen.
struct Expected {
    event: JobEvent,
    /// For a backoff retry: the latest `not_before` the state machine could have chosen.
    latest: Option<DateTime<Utc>>,
}

/// Per-job verification state; small, since a store scan keeps one per job.
struct JobCheck {
    job_id: JobId,
    /// The version expected next (`None` after an unreadable item: resynchronise on the next one).
    next_version: Option<u64>,
    /// The hash the next event must link to (`None` when unknown).
    prev: Option<Hash>,
    last_at: Option<DateTime<Utc>>,
    /// The aggregate as the history so far made it.
    job: Job,
    /// False once the state can no longer be trusted (an unreadable or undecodable event).
    semantic: bool,
    /// The rest of the current command's events.
    pending: VecDeque<Expected>,
    last_version: u64,
    last_hash: Hash,
}

impl JobCheck {
    fn new(job_id: JobId) -> Self {
        JobCheck {
            job_id,
            next_version: Some(1),
            prev: Some(Hash::ZERO),
            last_at: None,
            job: Job::default(),
            semantic: true,
            pending: VecDeque::new(),
            last_version: 0,
            last_hash: Hash::ZERO,
        }
    }
}

/// The jobs a verifier has closed by their pin (export files), kept to catch a job that appears
/// again after its pin.
enum Closed {
    /// Every closed job (any order).
    Kept(HashSet<JobId>),
    /// Jobs expected in job id order (every file `export` writes): then a job seen again must
    /// break that order, so each run of consecutive lines this verifier saw is enough: one entry
    /// per run of whole jobs a reader thread takes (256 KiB), not one per job.
    InOrder {
        runs: Vec<Run>,
        /// A job came out of order: this pass cannot tell a repeat, and must be run again in
        /// `Kept` mode.
        broken: bool,
    },
}

/// Consecutive lines of a file, their first and last job.
struct Run {
    first_line: u64,
    first: JobId,
    last: JobId,
}

/// Streaming verifier: feed it entries in source order, then `finish`.
pub struct Verifier {
    jobs: HashMap<JobId, JobCheck>,
    closed: Closed,
    /// The line of the item before (files).
    prev_line: Option<u64>,
    current: Option<JobId>,
    pins: bool,
    grouped: bool,
    check_results: bool,
    report: VerifyReport,
}

impl Verifier {
    /// A verifier for a source with (or without) pins whose jobs are (or are not) contiguous.
    pub fn new(pins: bool, grouped: bool) -> Self {
        Verifier {
            jobs: HashMap::new(),
            closed: Closed::Kept(HashSet::new()),
            prev_line: None,
            current: None,
            pins,
            grouped,
            check_results: true,
            report: VerifyReport::default(),
        }
    }

    /// Expects jobs in job id order, keeping two ids instead of every closed job; a source out of
    /// that order makes [`Verifier::finish_ordered_parts`] ask for a run without it.
    pub fn expecting_job_id_order(mut self) -> Self {
        self.closed = Closed::InOrder {
            runs: Vec::new(),
            broken: false,
        };
        self
    }

    /// Whether to hash reachable result files (on by default).
    pub fn check_results(mut self, on: bool) -> Self {
        self.check_results = on;
        self
    }

    fn find(
        &mut self,
        job_id: Option<JobId>,
        version: Option<u64>,
        rule: &'static str,
        detail: String,
        pos: Pos,
    ) {
        self.report.total_findings += 1;
        if self.report.findings.len() < MAX_KEPT {
            self.report.findings.push(Finding {
                job_id,
                version,
                rule,
                detail,
                pos,
            });
        }
    }

    /// Feeds one entry.
    pub fn entry(&mut self, entry: format::Entry) {
        self.item(entry.item());
    }

    /// Feeds one item.
    pub fn item(&mut self, item: Item<'_>) {
        let pos = match &item {
            Item::Event(e) => e.pos,
            Item::Pin(_, pos) | Item::Unreadable { pos, .. } => *pos,
        };
        match item {
            Item::Event(e) => self.event(e),
            Item::Pin(pin, pos) => self.pin(pin, pos),
            Item::Unreadable {
                pos,
                job_id,
                version,
                reason,
            } => self.unreadable(pos, job_id, version, reason.to_string()),
        }
        self.prev_line = match pos {
            Pos::Line(n) => Some(n),
            _ => None,
        };
    }

    /// Makes `job_id` the open job of a grouped source, closing the previous one.
    fn switch_to(&mut self, job_id: JobId, pos: Pos, version: Option<u64>) {
        if !self.grouped || self.current == Some(job_id) {
            return;
        }
        if let Some(prev) = self.current.take() {
            self.close(prev, None, pos);
        }
        match &mut self.closed {
            Closed::Kept(ids) => {
                if ids.remove(&job_id) {
                    self.find(
                        Some(job_id),
                        version,
                        rules::CONTIGUOUS,
                        "the job's events appear again after its pin".into(),
                        pos,
                    );
                }
            }
            Closed::InOrder { runs, broken } => {
                let line = match pos {
                    Pos::Line(n) => Some(n),
                    _ => None,
                };
                let continues = line.is_some() && line == self.prev_line.map(|p| p + 1);
                if runs.last().is_some_and(|r| job_id <= r.last) {
                    *broken = true;
                }
                match (runs.last_mut(), line) {
                    (Some(run), _) if continues => run.last = job_id,
                    (_, Some(first_line)) => runs.push(Run {
                        first_line,
                        first: job_id,
                        last: job_id,
                    }),
                    // Not a file: no lines to order runs by.
                    (_, None) => *broken = true,
                }
            }
        }
        self.current = Some(job_id);
    }

    fn check_of(&mut self, job_id: JobId) -> &mut JobCheck {
        match self.jobs.entry(job_id) {
            Entry::Occupied(check) => check.into_mut(),
            Entry::Vacant(slot) => {
                self.report.jobs += 1;
                slot.insert(JobCheck::new(job_id))
            }
        }
    }

    fn event(&mut self, e: EventItem<'_>) {
        self.report.events += 1;
        let (job_id, pos) = (e.head.job_id, e.pos);
        self.switch_to(job_id, pos, Some(e.head.version));
        let check_results = self.check_results;
        let mut out = Vec::new();
        let mut results = (0, 0);
        {
            let check = self.check_of(job_id);
            check_event(check, e, &mut out, check_results.then_some(&mut results));
        }
        self.report.results_checked += results.0;
        self.report.results_unreachable += results.1;
        for (version, rule, detail) in out {
            self.find(Some(job_id), Some(version), rule, detail, pos);
        }
    }

    fn pin(&mut self, pin: Pin, pos: Pos) {
        if !self.pins {
            return;
        }
        if self.current == Some(pin.job_id) {
            self.current = None;
            self.close(pin.job_id, Some(pin), pos);
        } else {
            let detail = match self.current {
                Some(other) => format!("pin of job {} follows events of job {other}", pin.job_id),
                None => "pin with no events of its job before it".to_string(),
            };
            self.find(Some(pin.job_id), Some(pin.version), rules::PIN, detail, pos);
        }
    }

    fn unreadable(
        &mut self,
        pos: Pos,
        job_id: Option<JobId>,
        version: Option<u64>,
        reason: String,
    ) {
        // In a file, a line that names no job belongs to the job around it; a store's rows have
        // no neighbours to belong to.
        let owner = job_id.or(if self.pins { self.current } else { None });
        if let Some(id) = job_id {
            self.switch_to(id, pos, version);
        }
        let guess = match owner.and_then(|id| self.jobs.get(&id)) {
            Some(check) => version.or(check.next_version),
            None => version,
        };
        self.find(owner, guess, rules::READABLE, reason, pos);
        if let Some(id) = owner {
            let check = self.check_of(id);
            // What follows can be checked for its own hash, but not against a state we lost.
            check.next_version = version.map(|v| v + 1);
            check.prev = None;
            check.semantic = false;
            check.pending.clear();
        }
    }

    /// Ends a job: the command in progress must be complete and the pin (if any) must match.
    fn close(&mut self, job_id: JobId, pin: Option<Pin>, pos: Pos) {
        let Some(check) = self.jobs.remove(&job_id) else {
            if let Some(pin) = pin {
                self.find(
                    Some(job_id),
                    Some(pin.version),
                    rules::PIN,
                    "pin of a job with no events".into(),
                    pos,
                );
            }
            return;
        };
        // Only an export file can repeat a job after its pin; a store's keys cannot.
        if self.pins {
            match &mut self.closed {
                Closed::Kept(ids) => {
                    ids.insert(job_id);
                }
                // Checked when the job started.
                Closed::InOrder { .. } => {}
            }
        }
        self.end_of_job(&check, pos);
        if self.pins {
            match pin {
                None => self.find(
                    Some(job_id),
                    Some(check.last_version),
                    rules::PIN,
                    "the job's events are not followed by its pin".into(),
                    pos,
                ),
                Some(pin) if pin.version != check.last_version || pin.hash != check.last_hash => self.find(
                    Some(job_id),
                    Some(pin.version),
                    rules::PIN,
                    format!(
                        "pin names version {} hash {} but the history ends at version {} hash {}",
                        pin.version, pin.hash, check.last_version, check.last_hash
                    ),
                    pos,
                ),
                Some(_) => {}
            }
        }
    }

    fn end_of_job(&mut self, check: &JobCheck, pos: Pos) {
        if let Some(next) = check.pending.front() {
            self.find(
                Some(check.job_id),
                Some(check.last_version + 1),
                rules::LEGAL,
                format!(
                    "the command's events stop early: {} was due after version {}",
                    next.event.event_type(),
                    check.last_version
                ),
                pos,
            );
        }
    }

    /// Ends the stream and returns the report.
    pub fn finish(self) -> VerifyReport {
        self.finish_keeping_jobs().0
    }

    /// Ends the stream; also returns the jobs closed by their pin (export files).
    fn finish_keeping_jobs(mut self) -> (VerifyReport, Closed) {
        if let Some(current) = self.current.take() {
            self.close(current, None, Pos::None);
        }
        let mut rest: Vec<JobCheck> = self.jobs.drain().map(|(_, c)| c).collect();
        rest.sort_by_key(|c| c.job_id);
        for check in rest {
            self.end_of_job(&check, Pos::None);
        }
        (self.report, self.closed)
    }

    /// Ends the streams of the parts of one split scan and merges their reports: a job found in
    /// two parts breaks `job contiguity`; findings come in source order.
    pub fn finish_parts(parts: Vec<Verifier>) -> VerifyReport {
        Self::merge_parts(parts).unwrap_or_else(Self::merge_kept)
    }

    /// [`Verifier::finish_parts`] of parts made with [`Verifier::expecting_job_id_order`]:
    /// `None` when the source was not in job id order after all (run again without it).
    pub fn finish_ordered_parts(parts: Vec<Verifier>) -> Option<VerifyReport> {
        Self::merge_parts(parts).ok()
    }

    /// Merges parts whose jobs were in job id order, within and across parts; gives the finished
    /// parts back otherwise.
    fn merge_parts(parts: Vec<Verifier>) -> Result<VerifyReport, Vec<(VerifyReport, Closed)>> {
        let finished: Vec<(VerifyReport, Closed)> = parts
            .into_iter()
            .map(Verifier::finish_keeping_jobs)
            .collect();
        let mut runs = Vec::new();
        for (_, closed) in &finished {
            match closed {
                Closed::InOrder {
                    runs: part,
                    broken: false,
                } => runs.extend(part.iter().map(|r| (r.first_line, r.first, r.last))),
                _ => return Err(finished),
            }
        }
        // The parts took runs of the file in turn: in file order, each run's jobs follow the last
        // job of the run before.
        runs.sort_unstable_by_key(|r| r.0);
        if runs.windows(2).any(|w| w[1].1 <= w[0].2) {
            return Err(finished);
        }
        Ok(Self::merge_reports(finished, Vec::new()))
    }

    /// Merges parts that kept every closed job: a job closed in two parts is a finding.
    fn merge_kept(finished: Vec<(VerifyReport, Closed)>) -> VerifyReport {
        let mut seen: HashSet<JobId> = HashSet::new();
        let mut repeated = Vec::new();
        for (_, closed) in &finished {
            if let Closed::Kept(ids) = closed {
                for id in ids {
                    if !seen.insert(*id) {
                        repeated.push(*id);
                    }
                }
            }
        }
        Self::merge_reports(finished, repeated)
    }

    fn merge_reports(
        finished: Vec<(VerifyReport, Closed)>,
        mut repeated: Vec<JobId>,
    ) -> VerifyReport {
        let mut report = VerifyReport::default();
        for (r, _) in finished {
            report.events += r.events;
            report.jobs += r.jobs;
            report.total_findings += r.total_findings;
            report.results_checked += r.results_checked;
            report.results_unreachable += r.results_unreachable;
            report.findings.extend(r.findings);
        }
        repeated.sort();
        for id in repeated {
            report.total_findings += 1;
            report.findings.push(Finding {
                job_id: Some(id),
                version: None,
                rule: rules::CONTIGUOUS,
                detail: "the job's events appear in two places, each closed by a pin".into(),
                pos: Pos::None,
            });
        }
        report.findings.sort_by_key(|f| match f.pos {
            Pos::Line(n) | Pos::Seq(n) => n,
            Pos::None => u64::MAX,
        });
        report.findings.truncate(MAX_KEPT);
        report
    }
}

type Out = Vec<(u64, &'static str, String)>;

/// All per-event rules for one event of one job.
fn check_event(
    c: &mut JobCheck,
    e: EventItem<'_>,
    out: &mut Out,
    results: Option<&mut (u64, u64)>,
) {
    let v = e.head.version;
    let Some(chain) = e.chain else {
        // Verification always scans with `check`; an item without its chain cannot be verified.
        out.push((
            v,
            rules::READABLE,
            "the reader did not read the hash chain".into(),
        ));
        c.semantic = false;
        c.pending.clear();
        return;
    };
    if !chain.canonical {
        out.push((
            v,
            rules::CANONICAL,
            "the stored bytes differ from the event's canonical encoding".into(),
        ));
    }
    if let Some(expected) = c.next_version
        && v != expected
    {
        out.push((
            v,
            rules::VERSIONS,
            format!("expected version {expected}, found {v}"),
        ));
    }
    c.next_version = Some(v + 1);
    if let Some(prev) = c.prev
        && chain.prev_hash != prev
    {
        out.push((
            v,
            rules::LINK,
            format!(
                "prev_hash {} is not the previous event's hash {prev}",
                chain.prev_hash
            ),
        ));
    }
    if let Some(computed) = e.computed_hash()
        && computed != chain.hash
    {
        out.push((
            v,
            rules::HASH,
            format!(
                "stored hash {} but the content hashes to {computed}",
                chain.hash
            ),
        ));
    }
    c.prev = Some(chain.hash);
    let at = e.head.at;
    if let Some(last) = c.last_at
        && at < last
    {
        out.push((
            v,
            rules::TIME,
            format!(
                "recorded at {} before the previous event ({})",
                jobledger_events::envelope::format_time(&at),
                jobledger_events::envelope::format_time(&last)
            ),
        ));
    }
    c.last_at = Some(c.last_at.map_or(at, |l| l.max(at)));
    c.last_version = v;
    c.last_hash = chain.hash;
    let event = match e.decode() {
        Ok(event) => event,
        Err(err) => {
            out.push((v, rules::DECODES, err.to_string()));
            c.semantic = false;
            c.pending.clear();
            return;
        }
    };
    if c.semantic {
        check_transition(c, &event, at, v, out);
    }
    if let (Some(results), JobEvent::JobSucceeded(s)) = (results, &event) {
        match check_result(&s.result_uri, &s.result_sha256) {
            ResultCheck::Matches => results.0 += 1,
            ResultCheck::Unreachable => results.1 += 1,
            ResultCheck::Differs(detail) => {
                results.0 += 1;
                out.push((v, rules::RESULT, detail));
            }
        }
    }
    let submitted = matches!(event, JobEvent::JobSubmitted(_));
    c.job.absorb(event);
    if submitted {
        slim(&mut c.job);
    }
}

/// Drops what deciding never reads (inline items, metadata), so a store scan stays small per job.
fn slim(job: &mut Job) {
    if let Some(spec) = job.spec.as_mut() {
        spec.input = JobInput::Items { items: Vec::new() };
        spec.metadata = serde_json::Map::new();
    }
}

/// Replays `decide`: the event must be the next of the command in progress, or the first event of
/// the command it records, decided from the state before it.
fn check_transition(c: &mut JobCheck, event: &JobEvent, at: DateTime<Utc>, v: u64, out: &mut Out) {
    if let Some(expected) = c.pending.pop_front() {
        if let Some((rule, detail)) =
            compare(&expected, event, "as the next event of the same command")
        {
            out.push((v, rule, detail));
            c.pending.clear();
        }
        return;
    }
    let Some((cmd, latest_cmd)) = command_for(&c.job, event, at) else {
        let rule = if c.job.status.is_terminal() {
            rules::TERMINAL
        } else {
            rules::LEGAL
        };
        out.push((
            v,
            rule,
            format!(
                "no command produces {} on its own (status {})",
                event.event_type(),
                c.job.status
            ),
        ));
        return;
    };
    match c.job.decide(&cmd) {
        Err(rejection) => {
            let rule = match rejection {
                Rejection::StaleAttempt { .. } => rules::ATTEMPTS,
                Rejection::AlreadyFinished(_) => rules::TERMINAL,
                _ => rules::LEGAL,
            };
            out.push((
                v,
                rule,
                format!(
                    "{} in status {} is refused: {rejection}",
                    event.event_type(),
                    c.job.status
                ),
            ));
        }
        Ok(events) => {
            // The latest backoff the same command could have chosen (jitter at its maximum).
            let latest: Vec<Option<DateTime<Utc>>> = match latest_cmd.map(|cmd| c.job.decide(&cmd))
            {
                Some(Ok(hi)) => hi.iter().map(retry_time).collect(),
                _ => events.iter().map(retry_time).collect(),
            };
            let mut expected = events
                .into_iter()
                .zip(latest.into_iter().chain(std::iter::repeat(None)))
                .map(|(event, latest)| Expected { event, latest });
            if let Some(first) = expected.next()
                && let Some((rule, detail)) = compare(&first, event, "from this state")
            {
                out.push((v, rule, detail));
                return;
            }
            c.pending = expected.collect();
        }
    }
}

fn retry_time(e: &JobEvent) -> Option<DateTime<Utc>> {
    match e {
        JobEvent::RetryScheduled(r) => Some(r.not_before),
        _ => None,
    }
}

/// The command an event records, with the clock it must have used (`now` = the event's time,
/// jitter 0), and the same command with jitter at its maximum when a backoff may follow.
fn command_for(job: &Job, e: &JobEvent, at: DateTime<Utc>) -> Option<(Command, Option<Command>)> {
    let lo = Clock {
        now: at,
        jitter: 0.0,
    };
    let hi = Clock {
        now: at,
        jitter: 1.0,
    };
    let pair = |f: &dyn Fn(Clock) -> Command| Some((f(lo), Some(f(hi))));
    match e {
        JobEvent::JobSubmitted(spec) => Some((Command::Submit(spec.clone()), None)),
        JobEvent::JobQueued(p) => Some((
            Command::MarkQueued {
                attempt: p.attempt,
                message_id: p.message_id.clone(),
            },
            None,
        )),
        JobEvent::TaskLaunched(p) => Some((
            Command::RecordLaunch {
                attempt: p.attempt,
                task_arn: p.task_arn.clone(),
                capacity: p.capacity,
            },
            None,
        )),
        JobEvent::LaunchFailed(p) => pair(&|clock| Command::RecordLaunchFailure {
            attempt: p.attempt,
            reason: p.reason.clone(),
            retryable: p.retryable,
            clock,
        }),
        JobEvent::AttemptStarted(p) => Some((
            Command::StartAttempt {
                attempt: p.attempt,
                worker: p.worker.clone(),
            },
            None,
        )),
        JobEvent::ProgressReported(p) => Some((
            Command::ReportProgress {
                attempt: p.attempt,
                done: p.done,
                failed: p.failed,
                total: p.total,
                checkpoint_uri: p.checkpoint_uri.clone(),
            },
            None,
        )),
        JobEvent::AttemptFailed(p) => pair(&|clock| Command::FailAttempt {
            attempt: p.attempt,
            error: p.error.clone(),
            retryable: p.retryable,
            clock,
        }),
        JobEvent::WorkerInterrupted(p) => pair(&|clock| Command::Interrupt {
            attempt: p.attempt,
            reason: p.reason.clone(),
            clock,
        }),
        JobEvent::AttemptTimedOut(p) => pair(&|clock| Command::TimeOut {
            attempt: p.attempt,
            clock,
        }),
        JobEvent::JobSucceeded(p) => Some((
            Command::Succeed {
                attempt: p.attempt,
                result_uri: p.result_uri.clone(),
                result_sha256: p.result_sha256.clone(),
                items_ok: p.items_ok,
                items_failed: p.items_failed,
                usage: p.usage.clone(),
            },
            None,
        )),
        JobEvent::CancelRequested(p) => Some((
            Command::Cancel {
                reason: p.reason.clone(),
            },
            None,
        )),
        JobEvent::JobCancelled(_) => Some((
            Command::ConfirmCancel {
                attempt: job.attempt,
            },
            None,
        )),
        // Only a manual retry schedules a retry on its own; its time is the command's `now`.
        JobEvent::RetryScheduled(p) if job.status.is_terminal() => {
            Some((Command::Retry { now: p.not_before }, None))
        }
        JobEvent::RetryScheduled(_) | JobEvent::JobFailed(_) => None,
    }
}

/// Compares a stored event with the one the state machine produces; `None` when they agree.
fn compare(
    expected: &Expected,
    actual: &JobEvent,
    context: &str,
) -> Option<(&'static str, String)> {
    let agree = match (&expected.event, actual) {
        (JobEvent::RetryScheduled(want), JobEvent::RetryScheduled(got)) => {
            if want.next_attempt != got.next_attempt {
                return Some((
                    rules::ATTEMPTS,
                    format!(
                        "retry schedules attempt {} but the next attempt is {}",
                        got.next_attempt, want.next_attempt
                    ),
                ));
            }
            in_backoff_window(want, expected.latest, got)
        }
        (want, got) => want == got,
    };
    if agree {
        return None;
    }
    let rule = match (expected.event.attempt(), actual.attempt()) {
        (Some(a), Some(b)) if a != b && expected.event.event_type() == actual.event_type() => {
            rules::ATTEMPTS
        }
        _ => rules::LEGAL,
    };
    Some((
        rule,
        format!(
            "found {} {} but the state machine produces {} {} {context}",
            actual.event_type(),
            actual.to_data(),
            expected.event.event_type(),
            expected.event.to_data()
        ),
    ))
}

fn in_backoff_window(
    earliest: &RetryScheduled,
    latest: Option<DateTime<Utc>>,
    got: &RetryScheduled,
) -> bool {
    let latest = latest.unwrap_or(earliest.not_before);
    got.not_before >= earliest.not_before - CLOCK_SLACK && got.not_before <= latest + CLOCK_SLACK
}

enum ResultCheck {
    Matches,
    Unreachable,
    Differs(String),
}

/// Hashes a local result file (`file://` URI) and compares it with the recorded checksum.
fn check_result(uri: &str, sha256: &str) -> ResultCheck {
    let Some(path) = uri.strip_prefix("file://") else {
        return ResultCheck::Unreachable;
    };
    let Ok(mut file) = std::fs::File::open(path) else {
        return ResultCheck::Unreachable;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => return ResultCheck::Differs(format!("result {uri} cannot be read: {e}")),
        }
    }
    let actual = hex::encode(hasher.finalize());
    if actual == sha256 {
        ResultCheck::Matches
    } else {
        ResultCheck::Differs(format!(
            "result {uri} hashes to {actual}, the event records {sha256}"
        ))
    }
}

/// Verifies one job (`Some`) or every job (`None`) of a source.
pub async fn verify_source<S: crate::source::HistorySource>(
    src: &S,
    job: Option<JobId>,
    show: bool,
) -> Result<VerifyReport, crate::source::SourceError> {
    match job {
        Some(job_id) => {
            let mut v = Verifier::new(src.has_pins(), true);
            let entries = src.job(job_id, true).await?;
            if entries.is_empty() {
                return Err(crate::source::SourceError::Unavailable(format!(
                    "job {job_id} is not in {}",
                    src.describe()
                )));
            }
            // Result files are read on the blocking pool: they may be large.
            tokio::task::spawn_blocking(move || {
                for e in entries {
                    v.entry(e);
                }
                v.finish()
            })
            .await
            .map_err(|e| crate::source::SourceError::Unavailable(format!("verifier failed: {e}")))
        }
        None => {
            let (pins, grouped) = (src.has_pins(), src.grouped());
            let verify_all = |ordered: bool| {
                crate::drive::drive_parts(
                    src,
                    true,
                    show,
                    "verify",
                    crate::drive::default_parts(),
                    move || {
                        let v = Verifier::new(pins, grouped);
                        if ordered {
                            v.expecting_job_id_order()
                        } else {
                            v
                        }
                    },
                    |v, item| v.item(item),
                )
            };
            // Files whose jobs come in job id order (every export) are checked in flat memory;
            // a file in another order is read again, keeping every job it closes.
            if pins && grouped {
                let parts = verify_all(true).await?;
                if let Some(report) = Verifier::finish_ordered_parts(parts) {
                    return Ok(report);
                }
            }
            Ok(Verifier::finish_parts(verify_all(false).await?))
        }
    }
}
