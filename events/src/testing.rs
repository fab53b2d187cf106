//! Test support (feature `testing`): history builders and the store conformance suite.
//!
//! Every `EventStore` must pass [`run_conformance`]; stores that also offer a change feed must pass
//! [`run_change_feed_conformance`]. A store plugs in through a [`StoreHarness`]: a way to get a
//! fresh, empty store and a store-specific way to damage one stored event. Each case is also a
//! public function, so a store's test file can run them as separate tests and see which one fails.
//!
//! The suite panics (with a message saying which rule broke) on the first failure, as tests do.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::chain::{compute_hash, verify_chain};
use crate::command::{Clock, Command};
use crate::envelope::{Hash, RecordedEvent, ledger_time};
use crate::event::{Capacity, JobEvent, Progress, Usage};
use crate::execute::{CommandContext, ExecuteError, execute, record};
use crate::ids::JobId;
use crate::job::Job;
use crate::spec::{Item, JobInput, JobKind, JobSpec, Notify};
use crate::store::{
    AppendBatch, ChangeFeed, EventStore, IdempotencyRecord, JobHead, LoadedJob, StoreError,
};

/// What a store's tests provide so the conformance suite can run against it.
pub trait StoreHarness<S: EventStore> {
    /// A new store with no events, idempotency records or checkpoints.
    fn fresh(&self) -> impl Future<Output = S> + Send;

    /// Damages the stored event `(job_id, version)` so that the store cannot decode it any more
    /// (e.g. payload that is not JSON, a hash of the wrong length, a missing attribute).
    fn corrupt(&self, store: &S, job_id: JobId, version: u64) -> impl Future<Output = ()> + Send;
}

/// A fixed, microsecond-precise time, `seconds` after 2025-01-01T00:00:00Z.
pub fn test_time(seconds: i64) -> DateTime<Utc> {
    let base = DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default();
    ledger_time(base + chrono::Duration::seconds(seconds))
}

/// A valid `noop` job spec with `items` inline text items.
pub fn noop_spec(items: usize) -> JobSpec {
    JobSpec {
        kind: JobKind::Noop,
        input: JobInput::Items {
            items: (0..items.max(1))
                .map(|i| Item {
                    id: format!("item-{i}"),
                    text: Some(format!("text of item {i}")),
                    ..Item::default()
                })
                .collect(),
        },
        max_attempts: 3,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

/// A command context at [`test_time`]`(0)` with a fresh correlation id.
pub fn test_context(actor: &str) -> CommandContext {
    CommandContext::new(actor, test_time(0))
}

/// The commands that take a new job to `RUNNING` in attempt 1: submit, queue, launch, start.
pub fn commands_to_running(spec: JobSpec) -> Vec<Command> {
    vec![
        Command::Submit(spec),
        Command::MarkQueued {
            attempt: 1,
            message_id: "msg-1".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "local-task-1".into(),
            capacity: Capacity::Local,
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "worker-1".into(),
        },
    ]
}

/// A `report_progress` command for attempt 1.
pub fn progress_command(done: u64, total: u64) -> Command {
    Command::ReportProgress {
        attempt: 1,
        done,
        failed: 0,
        total,
        checkpoint_uri: None,
    }
}

/// Runs commands one after another through [`execute`]; returns every event they appended.
pub async fn run_commands<S: EventStore>(
    store: &S,
    job_id: JobId,
    commands: &[Command],
    ctx: &CommandContext,
) -> Result<Vec<RecordedEvent>, ExecuteError> {
    let mut events = Vec::new();
    for command in commands {
        events.extend(execute(store, job_id, command, ctx).await?.events);
    }
    Ok(events)
}

/// Submits a new job and takes it to `RUNNING` through `execute`; returns it and its history.
pub async fn running_job<S: EventStore>(store: &S) -> (JobId, Vec<RecordedEvent>) {
    let job_id = JobId::new();
    let events = run_commands(
        store,
        job_id,
        &commands_to_running(noop_spec(3)),
        &test_context("api-key:test"),
    )
    .await
    .unwrap_or_else(|e| panic!("taking job {job_id} to RUNNING failed: {e}"));
    (job_id, events)
}

/// Builds, without a store, a valid chained history: submit → queue → launch → start, then
/// `progress_events` progress reports (each with a checkpoint URI, ~400 bytes per event).
pub fn build_history(job_id: JobId, progress_events: usize) -> Vec<RecordedEvent> {
    let total = progress_events as u64 + 1;
    let mut commands = commands_to_running(noop_spec(3));
    commands.extend(
        (1..=progress_events as u64).map(|done| Command::ReportProgress {
            attempt: 1,
            done,
            failed: 0,
            total,
            checkpoint_uri: Some(format!(
                "file:///var/lib/jobledger/checkpoints/{job_id}/attempt-1/after-item-{done:08}.json"
            )),
        }),
    );
    let ctx = test_context("worker:bench");
    let mut job = Job::default();
    let mut head = Hash::ZERO;
    let mut history = Vec::with_capacity(commands.len());
    for command in &commands {
        let events = job
            .decide(command)
            .unwrap_or_else(|r| panic!("history builder made an illegal command: {r}"));
        let recorded = record(job_id, job.version, head, &events, &ctx);
        head = recorded.last().map_or(head, |e| e.hash);
        job = events.iter().fold(job, Job::evolve);
        history.extend(recorded);
    }
    history
}

/// Appends a prepared history in batches of `batch_size` events (each batch conditional on the
/// previous one).
pub async fn append_history<S: EventStore>(
    store: &S,
    events: &[RecordedEvent],
    batch_size: usize,
) -> Result<(), StoreError> {
    for chunk in events.chunks(batch_size.max(1)) {
        let first = &chunk[0];
        store
            .append(AppendBatch {
                job_id: first.job_id,
                expected_version: first.version - 1,
                events: chunk.to_vec(),
                idempotency: None,
            })
            .await?;
    }
    Ok(())
}

/// One raw progress event chained after `head` (for tests that bypass `execute`).
fn raw_progress(job_id: JobId, head: &RecordedEvent, done: u64) -> RecordedEvent {
    let event = JobEvent::ProgressReported(Progress {
        attempt: 1,
        done,
        failed: 0,
        total: 1_000,
        checkpoint_uri: None,
    });
    record(
        job_id,
        head.version,
        head.hash,
        &[event],
        &test_context("worker:test"),
    )
    .remove(0)
}

fn expect_ok<T>(what: &str, r: Result<T, impl std::fmt::Display>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Runs every `EventStore` case; each gets a fresh store.
pub async fn run_conformance<S, H>(harness: &H)
where
    S: EventStore + 'static,
    H: StoreHarness<S>,
{
    load_returns_what_was_appended_field_for_field(harness).await;
    a_stale_expected_version_is_a_conflict_and_writes_nothing(harness).await;
    concurrent_appenders_get_one_winner_per_version(harness).await;
    a_reused_idempotency_key_returns_the_original_claim(harness).await;
    a_long_history_loads_whole_and_in_order(harness).await;
    load_job_is_the_fold_of_load(harness).await;
    a_corrupt_item_is_reported_with_job_and_version(harness).await;
    the_hash_chain_continues_across_appends(harness).await;
    an_older_payload_schema_is_upcast_on_read(harness).await;
}

/// Runs every `ChangeFeed` case; each gets a fresh store.
pub async fn run_change_feed_conformance<S, H>(harness: &H)
where
    S: EventStore + ChangeFeed + 'static,
    H: StoreHarness<S>,
{
    the_feed_is_in_commit_order_and_pages(harness).await;
    checkpoints_are_kept_per_consumer(harness).await;
    a_waiter_is_woken_by_a_commit(harness).await;
}

/// Round trip: `load` returns exactly the appended envelopes, of one job only, including
/// multi-event batches, non-ASCII text, and correlation ids that are and are not UUIDs.
pub async fn load_returns_what_was_appended_field_for_field<S: EventStore, H: StoreHarness<S>>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let job_id = JobId::new();
    let other = JobId::new();
    let mut spec = noop_spec(2);
    spec.metadata
        .insert("site".into(), "blog ✓ — «ünïcode» \"quoted\"\n".into());
    spec.metadata.insert(
        "nested".into(),
        serde_json::json!({"b": [1, 2.5, null], "a": true}),
    );
    let mut ctx = test_context("api-key:ключ");
    ctx.correlation_id = "req 42 ✓".into();
    ctx.causation_id = "42".into();
    let mut expected = expect_ok(
        "submitting",
        run_commands(&store, job_id, &[Command::Submit(spec)], &ctx).await,
    );
    // Another job's events must not leak into this job's history.
    expect_ok(
        "submitting another job",
        run_commands(
            &store,
            other,
            &commands_to_running(noop_spec(1)),
            &test_context("api-key:other"),
        )
        .await,
    );
    let mut ctx = test_context("system:dispatcher");
    // Upper-case UUID text must come back as written, not normalised.
    ctx.causation_id = ctx.correlation_id.to_uppercase();
    let rest = commands_to_running(noop_spec(1)).split_off(1);
    expected.extend(expect_ok(
        "queue/launch/start",
        run_commands(&store, job_id, &rest, &ctx).await,
    ));
    let fail = Command::FailAttempt {
        attempt: 1,
        error: "model returned 500".into(),
        retryable: true,
        clock: Clock {
            now: test_time(60),
            jitter: 0.5,
        },
    };
    let two = expect_ok(
        "failing the attempt",
        run_commands(&store, job_id, &[fail], &ctx).await,
    );
    assert_eq!(
        two.len(),
        2,
        "a retryable failure appends AttemptFailed + RetryScheduled in one batch"
    );
    expected.extend(two);

    let loaded = expect_ok("load", store.load(job_id).await);
    assert_eq!(
        loaded.len(),
        expected.len(),
        "load returned a different number of events"
    );
    for (got, want) in loaded.iter().zip(&expected) {
        assert_eq!(
            serde_json::to_value(got).ok(),
            serde_json::to_value(want).ok(),
            "event {} does not round-trip",
            want.version
        );
        assert_eq!(got, want, "event {} differs", want.version);
        assert!(
            got.hash_is_valid(),
            "event {} hash no longer matches its content",
            got.version
        );
        assert!(
            got.decode().is_ok(),
            "event {} payload no longer decodes",
            got.version
        );
    }
    assert!(
        loaded.iter().all(|e| e.job_id == job_id),
        "load returned another job's events"
    );
    assert!(
        expect_ok("load unknown job", store.load(JobId::new()).await).is_empty(),
        "a job that was never written must load as an empty history"
    );
}

/// Optimistic concurrency: an append whose expected version is not the head is a `Conflict`
/// and writes nothing — not its events, not its idempotency key.
pub async fn a_stale_expected_version_is_a_conflict_and_writes_nothing<
    S: EventStore,
    H: StoreHarness<S>,
>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let (job_id, history) = running_job(&store).await;
    let head = history.len() as u64;

    for expected in [head - 1, head + 1, 0] {
        let base = &history[expected.saturating_sub(1).min(head - 1) as usize];
        let mut event = raw_progress(job_id, base, 1);
        event.version = expected + 1;
        event.hash = compute_hash(&event);
        let claim = IdempotencyRecord {
            key: format!("conflict-{expected}#k"),
            job_id,
            fingerprint: "f".into(),
            created_at: test_time(0),
        };
        let result = store
            .append(AppendBatch {
                job_id,
                expected_version: expected,
                events: vec![event],
                idempotency: Some(claim.clone()),
            })
            .await;
        match result {
            Err(StoreError::Conflict {
                job_id: j,
                expected: e,
            }) => {
                assert_eq!(
                    (j, e),
                    (job_id, expected),
                    "the conflict must name the job and expected version"
                );
            }
            other => panic!(
                "append expecting version {expected} with head {head} gave {other:?}, not Conflict"
            ),
        }
        assert_eq!(
            expect_ok("idempotency lookup", store.idempotency(&claim.key).await),
            None,
            "a conflicting append must not claim its idempotency key"
        );
    }
    let unknown = JobId::new();
    let mut event = raw_progress(unknown, &history[0], 1);
    event.hash = compute_hash(&event);
    let result = store
        .append(AppendBatch {
            job_id: unknown,
            expected_version: 1,
            events: vec![event],
            idempotency: None,
        })
        .await;
    assert!(
        matches!(result, Err(StoreError::Conflict { .. })),
        "appending after version 1 of a job with no events must conflict, got {result:?}"
    );
    assert_eq!(
        expect_ok("load", store.load(job_id).await),
        history,
        "a conflict changed the history"
    );
    assert!(
        expect_ok("load", store.load(unknown).await).is_empty(),
        "a conflict wrote events"
    );
}

/// 64 appenders race on one job through `execute`: every version has exactly one winner, there
/// are no gaps, every acknowledged event is stored, nothing unacknowledged is, and the chain holds.
pub async fn concurrent_appenders_get_one_winner_per_version<S, H>(harness: &H)
where
    S: EventStore + 'static,
    H: StoreHarness<S>,
{
    const APPENDERS: u64 = 64;
    let store = Arc::new(harness.fresh().await);
    let (job_id, history) = running_job(&*store).await;
    let start = Arc::new(tokio::sync::Barrier::new(APPENDERS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=APPENDERS {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            let ctx = test_context(&format!("worker:{i}"));
            start.wait().await;
            // `execute` retries a bounded number of times; keep asking until this appender wins.
            for _ in 0..1_000 {
                match execute(&*store, job_id, &progress_command(i, 1_000), &ctx).await {
                    Ok(done) => return done.events,
                    Err(ExecuteError::Store(StoreError::Conflict { .. })) => {
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("appender {i} failed: {e}"),
                }
            }
            panic!("appender {i} lost 1,000 races in a row")
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        acknowledged.extend(joined.unwrap_or_else(|e| panic!("appender task failed: {e}")));
    }
    assert_eq!(
        acknowledged.len() as u64,
        APPENDERS,
        "every appender appends exactly one event"
    );
    let versions: HashSet<u64> = acknowledged.iter().map(|e| e.version).collect();
    assert_eq!(
        versions.len(),
        acknowledged.len(),
        "two appenders were acknowledged for the same version"
    );

    let loaded = expect_ok("load", store.load(job_id).await);
    assert_eq!(
        loaded.len() as u64,
        history.len() as u64 + APPENDERS,
        "events were lost or invented"
    );
    assert_eq!(&loaded[..history.len()], &history[..], "the prefix changed");
    let stored: HashMap<u64, &RecordedEvent> = loaded.iter().map(|e| (e.version, e)).collect();
    for ack in &acknowledged {
        assert_eq!(
            stored.get(&ack.version),
            Some(&ack),
            "acknowledged event {} is not stored as acknowledged",
            ack.version
        );
    }
    assert_eq!(
        verify_chain(&loaded),
        vec![],
        "the chain is broken after concurrent appends"
    );
}

/// Idempotency: a second claim of a key fails with the original record and appends nothing.
pub async fn a_reused_idempotency_key_returns_the_original_claim<
    S: EventStore,
    H: StoreHarness<S>,
>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let key = "api-key:k1#order-7".to_string();
    let first = JobId::new();
    let second = JobId::new();
    let claim = |job_id, fingerprint: &str| IdempotencyRecord {
        key: key.clone(),
        job_id,
        fingerprint: fingerprint.into(),
        created_at: test_time(5),
    };
    let mut spec = noop_spec(1);
    spec.idempotency_key = Some("order-7".into());
    let mut ctx = test_context("api-key:k1");
    ctx.idempotency = Some(claim(first, "sha-first"));
    expect_ok(
        "first submit",
        execute(&store, first, &Command::Submit(spec.clone()), &ctx).await,
    );
    ctx.idempotency = Some(claim(second, "sha-second"));
    match execute(&store, second, &Command::Submit(spec), &ctx).await {
        Err(ExecuteError::Store(StoreError::IdempotencyKeyTaken { existing })) => {
            assert_eq!(
                existing,
                claim(first, "sha-first"),
                "the error must carry the original claim"
            );
        }
        other => panic!("reusing an idempotency key gave {other:?}, not IdempotencyKeyTaken"),
    }
    assert!(
        expect_ok("load", store.load(second).await).is_empty(),
        "the refused job has events"
    );
    assert_eq!(
        expect_ok("load", store.load(first).await).len(),
        1,
        "the first job changed"
    );
    assert_eq!(
        expect_ok("lookup", store.idempotency(&key).await),
        Some(claim(first, "sha-first")),
        "the stored claim is not the first one"
    );
    assert_eq!(
        expect_ok("lookup", store.idempotency("api-key:k1#never").await),
        None
    );
}

/// A 5,000-event history (over 1 MB, so paged backends must follow their cursors) loads whole,
/// in version order.
pub async fn a_long_history_loads_whole_and_in_order<S: EventStore, H: StoreHarness<S>>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let job_id = JobId::new();
    let history = build_history(job_id, 4_996);
    assert_eq!(history.len(), 5_000);
    let bytes: usize = history
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    assert!(
        bytes > 1 << 20,
        "the history must exceed 1 MB to test paging, it is {bytes} bytes"
    );
    expect_ok(
        "appending the history",
        append_history(&store, &history, 25).await,
    );
    let loaded = expect_ok("load", store.load(job_id).await);
    assert_eq!(
        loaded.len(),
        history.len(),
        "the long history was truncated or padded"
    );
    assert!(
        loaded.iter().zip(1..).all(|(e, v)| e.version == v),
        "the long history is out of order"
    );
    assert_eq!(loaded, history, "the long history changed");
}

/// `load_job` gives what folding `load`'s history gives: the aggregate and the newest event's
/// head, for a job with no events, a short one and a 5,000-event one.
pub async fn load_job_is_the_fold_of_load<S: EventStore, H: StoreHarness<S>>(harness: &H) {
    let store = harness.fresh().await;
    assert_eq!(
        expect_ok(
            "load_job of an unknown job",
            store.load_job(JobId::new()).await
        ),
        LoadedJob::default(),
        "a job with no events must load as the default job with no head"
    );
    let (short, short_history) = running_job(&store).await;
    let long = JobId::new();
    let long_history = build_history(long, 4_996);
    expect_ok(
        "appending the history",
        append_history(&store, &long_history, 500).await,
    );
    for (job_id, history) in [(short, short_history), (long, long_history)] {
        let loaded = expect_ok("load_job", store.load_job(job_id).await);
        let folded = expect_ok(
            "folding the loaded history",
            LoadedJob::fold(job_id, &expect_ok("load", store.load(job_id).await)),
        );
        assert_eq!(loaded, folded, "load_job differs from the fold of load");
        assert_eq!(loaded.job.version, history.len() as u64);
        assert_eq!(loaded.head, history.last().map(JobHead::of));
    }
}

/// A stored event that cannot be decoded is an error naming the job and version — never a panic,
/// never skipped.
pub async fn a_corrupt_item_is_reported_with_job_and_version<S: EventStore, H: StoreHarness<S>>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let (job_id, _) = running_job(&store).await;
    harness.corrupt(&store, job_id, 2).await;
    match store.load(job_id).await {
        Err(StoreError::Corrupt {
            job_id: j, version, ..
        }) => {
            assert_eq!(j, job_id.to_string(), "Corrupt must name the job");
            assert_eq!(version, Some(2), "Corrupt must name the version");
        }
        other => panic!("loading a corrupt history gave {other:?}, not Corrupt"),
    }
    match store.load_job(job_id).await {
        Err(StoreError::Corrupt {
            job_id: j, version, ..
        }) => assert_eq!((j, version), (job_id.to_string(), Some(2))),
        other => panic!("load_job of a corrupt history gave {other:?}, not Corrupt"),
    }
    let refused = execute(
        &store,
        job_id,
        &progress_command(1, 3),
        &test_context("worker:test"),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ExecuteError::Store(StoreError::Corrupt { .. }))
        ),
        "a command on a corrupt history must fail with Corrupt, got {refused:?}"
    );
}

/// Many appends through `execute` keep one unbroken chain from the zero hash.
pub async fn the_hash_chain_continues_across_appends<S: EventStore, H: StoreHarness<S>>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let (job_id, _) = running_job(&store).await;
    let ctx = test_context("worker:test");
    for done in 1..=200 {
        expect_ok(
            "progress",
            execute(&store, job_id, &progress_command(done, 200), &ctx).await,
        );
    }
    let loaded = expect_ok("load", store.load(job_id).await);
    assert_eq!(loaded.len(), 204);
    assert_eq!(
        loaded[0].prev_hash,
        Hash::ZERO,
        "version 1 must chain from the zero hash"
    );
    for pair in loaded.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "version {} does not link to its predecessor",
            pair[1].version
        );
    }
    assert_eq!(verify_chain(&loaded), vec![]);
}

/// An event written with an older payload schema (`ProgressReported` schema 1, no `failed`) is
/// stored as written and decoded with `failed = 0`; the job keeps working on top of it.
pub async fn an_older_payload_schema_is_upcast_on_read<S: EventStore, H: StoreHarness<S>>(
    harness: &H,
) {
    let store = harness.fresh().await;
    let (job_id, history) = running_job(&store).await;
    let head = &history[history.len() - 1];
    let mut old = raw_progress(job_id, head, 5);
    old.schema = 1;
    old.data = expect_ok(
        "payload",
        RawValue::from_string(r#"{"attempt":1,"done":5,"total":10}"#.to_string()),
    );
    old.hash = compute_hash(&old);
    expect_ok(
        "appending a schema-1 event",
        store
            .append(AppendBatch {
                job_id,
                expected_version: head.version,
                events: vec![old.clone()],
                idempotency: None,
            })
            .await,
    );
    let loaded = expect_ok("load", store.load(job_id).await);
    let stored = &loaded[loaded.len() - 1];
    assert_eq!(
        stored, &old,
        "the old event must be stored exactly as written"
    );
    match expect_ok("decode", stored.decode()) {
        JobEvent::ProgressReported(p) => assert_eq!((p.done, p.failed, p.total), (5, 0, 10)),
        other => panic!("a schema-1 ProgressReported decoded as {other:?}"),
    }
    let next = expect_ok(
        "progress after an old event",
        execute(
            &store,
            job_id,
            &progress_command(6, 10),
            &test_context("worker:test"),
        )
        .await,
    );
    assert_eq!((next.job.version, next.job.done), (6, 6));
    assert_eq!(
        verify_chain(&expect_ok("load", store.load(job_id).await)),
        vec![]
    );
}

/// The feed returns every event once, in commit order with increasing `seq`, and pages by `limit`.
pub async fn the_feed_is_in_commit_order_and_pages<S, H>(harness: &H)
where
    S: EventStore + ChangeFeed,
    H: StoreHarness<S>,
{
    let store = harness.fresh().await;
    let jobs = [JobId::new(), JobId::new(), JobId::new()];
    let ctx = test_context("api-key:test");
    let mut committed = Vec::new();
    for command in commands_to_running(noop_spec(2)) {
        for job in jobs {
            committed
                .extend(expect_ok("execute", execute(&store, job, &command, &ctx).await).events);
        }
    }
    let feed = expect_ok("read_after", store.read_after(0, 1_000).await);
    let events: Vec<_> = feed.iter().map(|f| f.event.clone()).collect();
    assert_eq!(
        events, committed,
        "the feed is not the committed events in commit order"
    );
    assert!(
        feed.windows(2).all(|w| w[0].seq < w[1].seq),
        "feed seq must increase"
    );
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = expect_ok("read_after", store.read_after(after, 5).await);
        assert!(page.len() <= 5, "read_after returned more than limit");
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, feed, "paging the feed gives different events");
    assert_eq!(
        expect_ok("read_after", store.read_after(feed[3].seq, 2).await),
        feed[4..6].to_vec(),
        "read_after must start strictly after seq"
    );
}

/// Each consumer has its own checkpoint, 0 until saved, overwritten by a save.
pub async fn checkpoints_are_kept_per_consumer<S, H>(harness: &H)
where
    S: EventStore + ChangeFeed,
    H: StoreHarness<S>,
{
    let store = harness.fresh().await;
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("projector").await),
        0
    );
    expect_ok("save", store.save_checkpoint("projector", 5).await);
    expect_ok("save", store.save_checkpoint("notifier:slack", 7).await);
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("projector").await),
        5
    );
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("notifier:slack").await),
        7
    );
    expect_ok("save", store.save_checkpoint("projector", 9).await);
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("projector").await),
        9
    );
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("notifier:slack").await),
        7
    );
    assert_eq!(
        expect_ok("checkpoint", store.checkpoint("dispatcher").await),
        0
    );
}

/// `wait_after` stays asleep while nothing is committed and wakes promptly on a commit.
pub async fn a_waiter_is_woken_by_a_commit<S, H>(harness: &H)
where
    S: EventStore + ChangeFeed + 'static,
    H: StoreHarness<S>,
{
    let store = Arc::new(harness.fresh().await);
    let (job_id, _) = running_job(&*store).await;
    let head = expect_ok("read_after", store.read_after(0, 100).await)
        .last()
        .map_or(0, |f| f.seq);
    tokio::time::timeout(Duration::from_secs(1), store.wait_after(head - 1))
        .await
        .unwrap_or_else(|_| panic!("wait_after of a seq already passed must return at once"));
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store.wait_after(head).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiter.is_finished(),
        "wait_after returned with nothing new in the feed"
    );
    expect_ok(
        "progress",
        execute(
            &*store,
            job_id,
            &progress_command(1, 3),
            &test_context("worker:test"),
        )
        .await,
    );
    let acknowledged = Instant::now();
    let woke = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap_or_else(|_| panic!("the waiter was not woken by a commit"))
        .unwrap_or_else(|e| panic!("waiter task failed: {e}"));
    let late = woke.saturating_duration_since(acknowledged);
    assert!(
        late < Duration::from_millis(100),
        "the waiter woke {late:?} after the commit was acknowledged"
    );
}

/// A plausible `usage` for `succeed` commands in tests.
pub fn sample_usage() -> Usage {
    Usage {
        duration_ms: 61_000,
        vcpu: 0.25,
        memory_mb: 512,
        capacity: Some(Capacity::FargateSpot),
        input_tokens: 12_345,
        output_tokens: 678,
        model: Some("builtin".into()),
        cost_usd: 0.0042,
    }
}

/// Ways a stored event row can be damaged, as a bad disk or a careless tool would: what, and the
/// SQL that does it to one row of the SQLite store (`?1` the job id's 16 bytes, `?2` the
/// version). A reader must report each as corrupt at that version, never skip the row. (A payload
/// of the wrong shape is caught only where it is decoded: `load` hands payloads out as stored.)
pub const DAMAGED_ROWS: [(&str, &str); 13] = [
    (
        "payload is not JSON",
        "UPDATE events SET data = 'nope' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "payload is cut off",
        "UPDATE events SET data = '{\"attempt\":' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "payload is a blob",
        "UPDATE events SET data = x'7b7d' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "type is a blob",
        "UPDATE events SET type = x'ff' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "type is not UTF-8",
        "UPDATE events SET type = CAST(x'ff' AS TEXT) WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "envelope is text",
        "UPDATE events SET envelope = 'e' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "envelope truncated",
        "UPDATE events SET envelope = substr(envelope, 1, 40) WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "envelope truncated in a string",
        "UPDATE events SET envelope = substr(envelope, 1, length(envelope) - 1) WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "envelope of an unknown format",
        "UPDATE events SET envelope = x'02' || substr(envelope, 2) WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "envelope with bytes too many",
        "UPDATE events SET envelope = envelope || x'00' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "time out of range",
        "UPDATE events SET envelope = substr(envelope, 1, 81) || x'ffffffffffffff7f' || substr(envelope, 90) WHERE job_id = ?1 AND version = ?2",
    ),
    // A damaged key moves the row out of the job's range: the hole must be reported.
    (
        "job id damaged",
        "UPDATE events SET job_id = x'00' WHERE job_id = ?1 AND version = ?2",
    ),
    (
        "version not a number",
        "UPDATE events SET version = 'two' WHERE job_id = ?1 AND version = ?2",
    ),
];

/// Runs `sql` (one of [`DAMAGED_ROWS`], or any statement with the same parameters) on the SQLite
/// store's file from a connection of its own; panics unless it changed exactly one row.
pub fn tamper(db: &std::path::Path, sql: &str, job_id: JobId, version: u64) {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("opening {} for tampering: {e}", db.display()));
    let changed = conn
        .execute(
            sql,
            rusqlite::params![&job_id.as_uuid().as_bytes()[..], version as i64],
        )
        .unwrap_or_else(|e| panic!("tampering with {sql}: {e}"));
    assert_eq!(changed, 1, "tampering must hit exactly one row: {sql}");
}

/// Asserts that `result` is [`StoreError::Corrupt`] naming `job_id` and `version`; `what` names
/// the damage in the failure message.
pub fn expect_corrupt_at<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, StoreError>,
    job_id: JobId,
    version: u64,
) {
    match result {
        Err(StoreError::Corrupt {
            job_id: j,
            version: v,
            reason,
        }) => assert_eq!(
            (j, v),
            (job_id.to_string(), Some(version)),
            "{what}: {reason}"
        ),
        other => panic!("{what}: gave {other:?}, not Corrupt at version {version}"),
    }
}
