//! The worker runtime against the real embedded ledger (`SqliteEventStore`) and `FsObjectStore`.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use jobledger_events::chain::compute_hash;
use jobledger_events::event::{Capacity, JobEvent};
use jobledger_events::spec::{Item, JobInput, Notify};
use jobledger_events::{
    AppendBatch, Clock, Command, CommandContext, EventStore, Hash, IdempotencyRecord, JobId,
    JobKind, JobSpec, RecordedEvent, Rejection, SqliteEventStore, Status, StoreError, execute,
};
use jobledger_workers::kinds::document::Document;
use jobledger_workers::kinds::image_alt::ImageInput;
use jobledger_workers::runtime::Checkpoint;
use jobledger_workers::{
    AttemptOutcome, Backend, BuiltinBackend, FsObjectStore, Generated, ItemError, ObjectError,
    ObjectStore, ResultLine, WorkerConfig, WorkerError, run_attempt, run_attempt_with,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

struct World {
    _dir: tempfile::TempDir,
    store: SqliteEventStore,
    objects: FsObjectStore,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let objects = FsObjectStore::new(dir.path().join("objects")).unwrap();
    World {
        _dir: dir,
        store,
        objects,
    }
}

fn ctx(actor: &str) -> CommandContext {
    CommandContext::new(actor, Utc::now())
}

fn spec(kind: JobKind, input: JobInput) -> JobSpec {
    JobSpec {
        kind,
        input,
        max_attempts: 3,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

fn text_item(id: &str, text: &str) -> Item {
    Item {
        id: id.into(),
        text: Some(text.into()),
        ..Item::default()
    }
}

fn texts(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| text_item(&format!("t{i}"), &format!("Item number {i} explains how the worker turns long pages into short descriptions for search engines.")))
        .collect()
}

/// Submits a job and walks it to LAUNCHING for attempt 1, as the dispatcher and launcher would.
async fn launched(w: &World, spec: JobSpec) -> JobId {
    let job = JobId::new();
    execute(&w.store, job, &Command::Submit(spec), &ctx("api-key:test"))
        .await
        .unwrap();
    launch(w, job, 1).await;
    job
}

async fn launch(w: &World, job: JobId, attempt: u32) {
    let queued = Command::MarkQueued {
        attempt,
        message_id: format!("m-{attempt}"),
    };
    execute(&w.store, job, &queued, &ctx("system:dispatcher"))
        .await
        .unwrap();
    let launch = Command::RecordLaunch {
        attempt,
        task_arn: format!("local-{attempt}"),
        capacity: Capacity::Local,
    };
    execute(&w.store, job, &launch, &ctx("system:launcher"))
        .await
        .unwrap();
}

async fn events(w: &World, job: JobId) -> Vec<JobEvent> {
    w.store
        .load(job)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect()
}

fn types(events: &[JobEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type()).collect()
}

fn cfg() -> WorkerConfig {
    WorkerConfig {
        worker_id: "test-1".into(),
        concurrency: 2,
        progress_every_items: 2,
        progress_every: Duration::from_secs(60),
        compute_usd_per_second: 0.001,
        ..WorkerConfig::default()
    }
}

fn no_shutdown() -> watch::Receiver<bool> {
    watch::channel(false).1
}

async fn results(w: &World, uri: &str) -> (Vec<u8>, Vec<ResultLine>) {
    let bytes = w.objects.get(uri).await.unwrap();
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    (bytes, lines)
}

fn png(img: RgbImage) -> String {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

/// The builtin backend, counting calls, and optionally pulling a trigger at the n-th call.
struct Probe {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    stop_at: Option<(usize, watch::Sender<bool>)>,
    /// At the n-th call, another actor sends this command to the job.
    interject_at: Option<(usize, SqliteEventStore, JobId, Command)>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            calls: Arc::new(AtomicUsize::new(0)),
            delay: Duration::ZERO,
            stop_at: None,
            interject_at: None,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn call(&self) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, tx)) = &self.stop_at
            && n == *at
        {
            tx.send_replace(true);
        }
        if let Some((at, store, job, command)) = &self.interject_at
            && n == *at
        {
            execute(store, *job, command, &ctx("system:test"))
                .await
                .unwrap();
        }
        tokio::time::sleep(self.delay).await;
    }
}

impl Backend for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        self.call().await;
        BuiltinBackend.alt_text(image).await
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.call().await;
        BuiltinBackend.meta_description(doc).await
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.call().await;
        BuiltinBackend.analyse(doc).await
    }
}

#[tokio::test]
async fn a_full_job_succeeds_with_a_results_file_and_its_checksum() {
    let w = world();
    let items = vec![
        Item {
            id: "page".into(),
            html: Some("<html><head><title>Shop</title><script>track()</script></head><body><p>We sell handmade ceramic bowls and cups from our small studio in Porto.</p></body></html>".into()),
            ..Item::default()
        },
        text_item("notes", "# Notes\n\nThe worker resumes from checkpoints, so a Spot interruption costs only a few seconds of work.\n"),
        text_item("plain", "Plain text also works, and it is summarised from its first real paragraph."),
    ];
    let job = launched(
        &w,
        spec(JobKind::MetaDescription, JobInput::Items { items }),
    )
    .await;

    let outcome = run_attempt(&w.store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap();

    let AttemptOutcome::Succeeded {
        result_uri,
        result_sha256,
        items_ok,
        items_failed,
        usage,
    } = outcome
    else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!((items_ok, items_failed), (3, 0));
    assert!(
        result_uri.ends_with(&format!("results/{job}~1.jsonl")),
        "{result_uri}"
    );
    let (bytes, lines) = results(&w, &result_uri).await;
    assert_eq!(result_sha256, hex::encode(Sha256::digest(&bytes)));
    let ids: Vec<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["page", "notes", "plain"], "results keep input order");
    assert_eq!(
        lines[0].output.as_ref().unwrap()["description"],
        "We sell handmade ceramic bowls and cups from our small studio in Porto."
    );
    assert!(lines.iter().all(|l| l.ok && l.error.is_none()));

    let history = events(&w, job).await;
    assert_eq!(
        types(&history),
        [
            "JobSubmitted",
            "JobQueued",
            "TaskLaunched",
            "AttemptStarted",
            "ProgressReported",
            "JobSucceeded"
        ]
    );
    let JobEvent::JobSucceeded(done) = history.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(done.result_uri, result_uri);
    assert_eq!(done.result_sha256, result_sha256);
    assert_eq!(done.usage, usage);
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.model.as_deref()
        ),
        (0, 0, None)
    );
    assert_eq!(usage.capacity, Some(Capacity::Local));
    let expected_cost = ((usage.duration_ms as f64 / 1000.0) * 0.001 * 1e6).round() / 1e6;
    assert!(
        (usage.cost_usd - expected_cost).abs() < 2e-6,
        "{} vs {expected_cost}",
        usage.cost_usd
    );
    let recorded = w.store.load(job).await.unwrap();
    assert!(recorded[3..].iter().all(|e| e.actor == "worker:test-1"));
}

#[tokio::test]
async fn one_bad_image_fails_that_item_and_the_job_still_succeeds() {
    let w = world();
    let good = RgbImage::from_fn(60, 40, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 200]));
    let items = vec![
        Item {
            id: "good".into(),
            image_base64: Some(png(good)),
            ..Item::default()
        },
        Item {
            id: "broken".into(),
            image_base64: Some(
                base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nnot really"),
            ),
            ..Item::default()
        },
    ];
    let job = launched(&w, spec(JobKind::ImageAlt, JobInput::Items { items })).await;

    let outcome = run_attempt(&w.store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap();

    let AttemptOutcome::Succeeded {
        result_uri,
        items_ok,
        items_failed,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!((items_ok, items_failed), (1, 1));
    let (_, lines) = results(&w, &result_uri).await;
    assert!(lines[0].ok);
    assert!(
        lines[0].output.as_ref().unwrap()["alt_text"]
            .as_str()
            .unwrap()
            .ends_with("(60×40 PNG)")
    );
    assert!(!lines[1].ok);
    assert!(lines[1].output.is_none());
    assert!(
        lines[1]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot decode PNG"),
        "{:?}",
        lines[1].error
    );
    let history = events(&w, job).await;
    let JobEvent::JobSucceeded(done) = history.last().unwrap() else {
        panic!("{:?}", types(&history))
    };
    assert_eq!((done.items_ok, done.items_failed), (1, 1));
}

#[tokio::test]
async fn shutdown_mid_run_checkpoints_and_records_the_interruption() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            JobInput::Items { items: texts(6) },
        ),
    )
    .await;
    let (tx, rx) = watch::channel(false);
    let probe = Probe {
        stop_at: Some((3, tx)),
        ..Probe::new()
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1,
        ..cfg()
    };

    let outcome = run_attempt_with(&w.store, &w.objects, &probe, job, 1, &cfg, rx)
        .await
        .unwrap();

    let AttemptOutcome::Interrupted {
        checkpoint_uri: Some(checkpoint),
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(probe.calls(), 3, "no item starts after the signal");
    let history = events(&w, job).await;
    assert_eq!(
        types(&history)[3..],
        [
            "AttemptStarted",
            "ProgressReported",
            "ProgressReported",
            "ProgressReported",
            "WorkerInterrupted",
            "RetryScheduled"
        ]
    );
    let JobEvent::WorkerInterrupted(i) = &history[7] else {
        unreachable!()
    };
    assert_eq!((i.attempt, i.reason.as_str()), (1, "SIGTERM"));
    let JobEvent::ProgressReported(p) = &history[6] else {
        unreachable!()
    };
    assert_eq!(
        (p.done, p.failed, p.total),
        (2, 0, 6),
        "the item in flight at the signal is not counted"
    );
    let manifest: Checkpoint =
        serde_json::from_slice(&w.objects.get(&checkpoint).await.unwrap()).unwrap();
    assert_eq!(
        (manifest.finished, manifest.total, manifest.segments.len()),
        (2, 6, 2)
    );
    // No results file: the job is not finished.
    let results_file = w
        .objects
        .path_of_key(&format!("results/{job}/1.jsonl"))
        .unwrap();
    assert!(
        matches!(
            w.objects
                .get(&format!("file://{}", results_file.display()))
                .await,
            Err(ObjectError::NotFound(_))
        ),
        "{}",
        results_file.display()
    );
}

#[tokio::test]
async fn the_next_attempt_resumes_from_the_checkpoint_and_skips_done_items() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            JobInput::Items { items: texts(7) },
        ),
    )
    .await;
    let (tx, rx) = watch::channel(false);
    let first = Probe {
        stop_at: Some((4, tx)),
        ..Probe::new()
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1,
        ..cfg()
    };
    let outcome = run_attempt_with(&w.store, &w.objects, &first, job, 1, &cfg, rx)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AttemptOutcome::Interrupted { .. }),
        "{outcome:?}"
    );

    launch(&w, job, 2).await;
    let second = Probe::new();
    let outcome = run_attempt_with(&w.store, &w.objects, &second, job, 2, &cfg, no_shutdown())
        .await
        .unwrap();

    let AttemptOutcome::Succeeded {
        result_uri,
        items_ok,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        second.calls(),
        4,
        "3 items came from the checkpoint, 4 were left"
    );
    assert_eq!(items_ok, 7);
    let (_, lines) = results(&w, &result_uri).await;
    let ids: Vec<String> = lines.iter().map(|l| l.id.clone()).collect();
    assert_eq!(ids, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    assert!(lines.iter().all(|l| {
        l.output.as_ref().unwrap()["description"]
            .as_str()
            .unwrap()
            .starts_with("Item number")
    }));
    assert!(result_uri.ends_with(&format!("results/{job}~2.jsonl")));
}

#[tokio::test]
async fn a_cancellation_seen_on_progress_stops_the_worker_and_cancels_the_job() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::ContentAnalysis,
            JobInput::Items { items: texts(5) },
        ),
    )
    .await;
    let probe = Probe {
        interject_at: Some((
            2,
            w.store.clone(),
            job,
            Command::Cancel {
                reason: "user asked".into(),
            },
        )),
        ..Probe::new()
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1,
        ..cfg()
    };

    let outcome = run_attempt_with(&w.store, &w.objects, &probe, job, 1, &cfg, no_shutdown())
        .await
        .unwrap();

    assert!(
        matches!(
            outcome,
            AttemptOutcome::Cancelled {
                checkpoint_uri: Some(_)
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(probe.calls(), 2);
    let history = events(&w, job).await;
    assert_eq!(
        types(&history)[3..],
        [
            "AttemptStarted",
            "ProgressReported",
            "CancelRequested",
            "ProgressReported",
            "JobCancelled"
        ]
    );
}

#[tokio::test]
async fn a_stale_attempt_is_refused_and_nothing_is_written() {
    let w = world();
    let job = launched(&w, spec(JobKind::Noop, JobInput::Items { items: texts(2) })).await;
    let before = w.store.load(job).await.unwrap().len();

    let outcome = run_attempt(&w.store, &w.objects, job, 2, &cfg(), no_shutdown())
        .await
        .unwrap();

    assert_eq!(
        outcome,
        AttemptOutcome::Refused(Rejection::StaleAttempt { current: 1, got: 2 })
    );
    assert_eq!(w.store.load(job).await.unwrap().len(), before);
    let objects_dir = w._dir.path().join("objects");
    assert_eq!(
        std::fs::read_dir(objects_dir).unwrap().count(),
        0,
        "no object written"
    );
}

#[tokio::test]
async fn a_cancelled_job_is_refused() {
    let w = world();
    let job = launched(&w, spec(JobKind::Noop, JobInput::Items { items: texts(1) })).await;
    execute(
        &w.store,
        job,
        &Command::Cancel {
            reason: "no".into(),
        },
        &ctx("api-key:test"),
    )
    .await
    .unwrap();

    let outcome = run_attempt(&w.store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap();

    assert_eq!(
        outcome,
        AttemptOutcome::Refused(Rejection::AlreadyFinished(Status::Cancelled))
    );
}

#[tokio::test]
async fn items_are_read_from_an_input_uri() {
    let w = world();
    let jsonl: String = texts(3)
        .iter()
        .map(|i| serde_json::to_string(i).unwrap() + "\n")
        .collect();
    let uri = w
        .objects
        .put("inputs/batch.jsonl", jsonl.into_bytes())
        .await
        .unwrap();
    let job = launched(&w, spec(JobKind::Noop, JobInput::Uri { input_uri: uri })).await;

    let outcome = run_attempt(&w.store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap();

    let AttemptOutcome::Succeeded {
        result_uri,
        items_ok,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(items_ok, 3);
    let (_, lines) = results(&w, &result_uri).await;
    assert_eq!(lines[2].output, Some(serde_json::json!({"id": "t2"})));
}

#[tokio::test]
async fn an_unreadable_input_fails_the_attempt_without_retry() {
    let w = world();
    let missing = format!(
        "file://{}/inputs/none.jsonl",
        w._dir
            .path()
            .join("objects")
            .canonicalize()
            .unwrap()
            .display()
    );
    let job = launched(
        &w,
        spec(JobKind::Noop, JobInput::Uri { input_uri: missing }),
    )
    .await;

    let err = run_attempt(&w.store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap_err();

    assert!(matches!(err, WorkerError::Input(_)), "{err:?}");
    let history = events(&w, job).await;
    assert_eq!(
        types(&history)[3..],
        ["AttemptStarted", "AttemptFailed", "JobFailed"]
    );
    let JobEvent::AttemptFailed(f) = &history[4] else {
        unreachable!()
    };
    assert!(!f.retryable);
    assert!(f.error.contains("none.jsonl"), "{}", f.error);
}

#[tokio::test]
async fn progress_is_reported_on_time_even_before_n_items() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            JobInput::Items { items: texts(3) },
        ),
    )
    .await;
    let probe = Probe {
        delay: Duration::from_millis(150),
        ..Probe::new()
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1000,
        progress_every: Duration::from_millis(100),
        ..cfg()
    };

    let outcome = run_attempt_with(&w.store, &w.objects, &probe, job, 1, &cfg, no_shutdown())
        .await
        .unwrap();

    assert!(matches!(outcome, AttemptOutcome::Succeeded { .. }));
    let reports = types(&events(&w, job).await)
        .iter()
        .filter(|t| **t == "ProgressReported")
        .count();
    assert!(
        (2..=6).contains(&reports),
        "{reports} progress reports in ~450 ms at one per 100 ms"
    );
}

/// A backend whose model endpoint goes down at the n-th call.
struct Outage {
    inner: Probe,
    down_at: usize,
}

impl Backend for Outage {
    fn name(&self) -> &str {
        "outage"
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        self.inner.alt_text(image).await
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        if self.inner.calls() + 1 >= self.down_at {
            return Err(ItemError::Unavailable {
                retryable: true,
                message: "model endpoint answered 503".into(),
            });
        }
        self.inner.meta_description(doc).await
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.inner.analyse(doc).await
    }
}

#[tokio::test]
async fn a_backend_outage_fails_the_attempt_as_retryable_after_checkpointing() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            JobInput::Items { items: texts(5) },
        ),
    )
    .await;
    let backend = Outage {
        inner: Probe::new(),
        down_at: 3,
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1000,
        ..cfg()
    };

    let err = run_attempt_with(&w.store, &w.objects, &backend, job, 1, &cfg, no_shutdown())
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            WorkerError::Backend {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    let history = events(&w, job).await;
    assert_eq!(
        types(&history)[3..],
        [
            "AttemptStarted",
            "ProgressReported",
            "AttemptFailed",
            "RetryScheduled"
        ]
    );
    let JobEvent::ProgressReported(p) = &history[4] else {
        unreachable!()
    };
    assert_eq!(
        p.done, 2,
        "the two finished items were checkpointed before failing"
    );
    assert!(p.checkpoint_uri.is_some());
    let JobEvent::AttemptFailed(f) = &history[5] else {
        unreachable!()
    };
    assert!(f.retryable && f.error.contains("503"), "{f:?}");
}

/// The ledger, counting the histories loaded through it.
#[derive(Clone)]
struct CountingStore {
    inner: SqliteEventStore,
    loads: Arc<AtomicUsize>,
}

impl EventStore for CountingStore {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(job_id).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.inner.append(batch).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }
}

fn assert_chained(history: &[RecordedEvent]) {
    let mut prev = Hash::ZERO;
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1, "gap-free versions");
        assert_eq!(
            e.prev_hash, prev,
            "version {} chains from the one before",
            e.version
        );
        assert_eq!(
            e.hash,
            compute_hash(e),
            "version {} hashes its content",
            e.version
        );
        if i > 0 {
            assert!(e.at >= history[i - 1].at, "times never go back");
        }
        prev = e.hash;
    }
}

#[tokio::test]
async fn after_its_claim_a_worker_appends_without_loading_the_history_again() {
    let w = world();
    let job = launched(&w, spec(JobKind::Noop, JobInput::Items { items: texts(5) })).await;
    let store = CountingStore {
        inner: w.store.clone(),
        loads: Arc::new(AtomicUsize::new(0)),
    };

    let outcome = run_attempt(&store, &w.objects, job, 1, &cfg(), no_shutdown())
        .await
        .unwrap();

    assert!(
        matches!(outcome, AttemptOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let history = w.store.load(job).await.unwrap();
    let decoded: Vec<JobEvent> = history.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        types(&decoded)[3..],
        [
            "AttemptStarted",
            "ProgressReported",
            "ProgressReported",
            "JobSucceeded"
        ]
    );
    assert_chained(&history);
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "only the claim loads the job"
    );
}

#[tokio::test]
async fn an_attempt_timed_out_behind_the_workers_back_supersedes_it() {
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            JobInput::Items { items: texts(4) },
        ),
    )
    .await;
    let probe = Probe {
        interject_at: Some((
            2,
            w.store.clone(),
            job,
            Command::TimeOut {
                attempt: 1,
                clock: Clock {
                    now: Utc::now(),
                    jitter: 0.5,
                },
            },
        )),
        ..Probe::new()
    };
    let cfg = WorkerConfig {
        concurrency: 1,
        progress_every_items: 1,
        ..cfg()
    };

    let outcome = run_attempt_with(&w.store, &w.objects, &probe, job, 1, &cfg, no_shutdown())
        .await
        .unwrap();

    assert!(
        matches!(outcome, AttemptOutcome::Superseded(_)),
        "the worker sees the timeout through its refused report: {outcome:?}"
    );
    let history = w.store.load(job).await.unwrap();
    let decoded: Vec<JobEvent> = history.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        types(&decoded)[3..],
        [
            "AttemptStarted",
            "ProgressReported",
            "AttemptTimedOut",
            "RetryScheduled"
        ],
        "nothing of the worker lands after the timeout"
    );
    assert_chained(&history);
}
