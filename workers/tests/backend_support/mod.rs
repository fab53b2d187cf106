//! Shared by the backend tests: a ledger and object store in a temp folder, a job walked to
//! LAUNCHING, and (from `jobledger-testsupport`) a scripted local HTTP server that records every
//! request it gets.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Cursor;

use base64::Engine as _;
use chrono::Utc;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use jobledger_events::event::{Capacity, JobEvent, Usage};
use jobledger_events::spec::{Item, JobInput, Notify};
use jobledger_events::{
    Command, CommandContext, EventStore, JobId, JobKind, JobSpec, SqliteEventStore, execute,
};
use jobledger_workers::{
    AttemptOutcome, Backend, FsObjectStore, ObjectStore, ResultLine, WorkerConfig, WorkerError,
    run_attempt_with,
};
use tokio::sync::watch;

pub use jobledger_testsupport::http::{FakeServer, Reply};

/// A ledger and an object store in a temp folder.
pub struct World {
    pub dir: tempfile::TempDir,
    pub store: SqliteEventStore,
    pub objects: FsObjectStore,
}

pub fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let objects = FsObjectStore::new(dir.path().join("objects")).unwrap();
    World {
        dir,
        store,
        objects,
    }
}

fn ctx(actor: &str) -> CommandContext {
    CommandContext::new(actor, Utc::now())
}

pub fn spec(kind: JobKind, items: Vec<Item>, max_tokens: Option<u64>) -> JobSpec {
    JobSpec {
        kind,
        input: JobInput::Items { items },
        max_attempts: 3,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens,
    }
}

pub fn text_item(id: &str, text: &str) -> Item {
    Item {
        id: id.into(),
        text: Some(text.into()),
        ..Item::default()
    }
}

/// A PNG (or JPEG) of `w`×`h` with a gradient, and its bytes.
pub fn image_bytes(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 120]));
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

pub fn image_item(id: &str, bytes: &[u8]) -> Item {
    Item {
        id: id.into(),
        image_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..Item::default()
    }
}

/// Submits a job and walks it to LAUNCHING for attempt 1 on Fargate Spot.
pub async fn launched(w: &World, spec: JobSpec) -> JobId {
    let job = JobId::new();
    execute(&w.store, job, &Command::Submit(spec), &ctx("api-key:test"))
        .await
        .unwrap();
    let queued = Command::MarkQueued {
        attempt: 1,
        message_id: "m-1".into(),
    };
    execute(&w.store, job, &queued, &ctx("system:dispatcher"))
        .await
        .unwrap();
    let launch = Command::RecordLaunch {
        attempt: 1,
        task_arn: "arn:aws:ecs:us-east-1:1:task/c/1".into(),
        capacity: Capacity::FargateSpot,
    };
    execute(&w.store, job, &launch, &ctx("system:launcher"))
        .await
        .unwrap();
    job
}

/// A Fargate Spot worker config with a real compute price.
pub fn cfg() -> WorkerConfig {
    WorkerConfig {
        worker_id: "test-1".into(),
        concurrency: 2,
        capacity: Some(Capacity::FargateSpot),
        vcpu: 1.0,
        memory_mb: 2048,
        compute_usd_per_second: jobledger_workers::config::compute_usd_per_second(
            1.0,
            2048,
            Some(Capacity::FargateSpot),
        ),
        ..WorkerConfig::default()
    }
}

pub async fn run<B: Backend>(
    w: &World,
    backend: &B,
    job: JobId,
    cfg: &WorkerConfig,
) -> Result<AttemptOutcome, WorkerError> {
    run_attempt_with(
        &w.store,
        &w.objects,
        backend,
        job,
        1,
        cfg,
        watch::channel(false).1,
    )
    .await
}

pub async fn results(w: &World, uri: &str) -> Vec<ResultLine> {
    let bytes = w.objects.get(uri).await.unwrap();
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

pub async fn events(w: &World, job: JobId) -> Vec<JobEvent> {
    w.store
        .load(job)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect()
}

/// The usage recorded in the job's `JobSucceeded`.
pub async fn succeeded_usage(w: &World, job: JobId) -> Usage {
    events(w, job)
        .await
        .into_iter()
        .find_map(|e| match e {
            JobEvent::JobSucceeded(s) => Some(s.usage),
            _ => None,
        })
        .expect("a JobSucceeded event")
}

/// Checks that the attempt's usage is the sum of its items' plus compute for its duration.
pub fn assert_usage_adds_up(usage: &Usage, lines: &[ResultLine], cfg: &WorkerConfig) {
    let input: u64 = lines.iter().map(|l| l.usage.input_tokens).sum();
    let output: u64 = lines.iter().map(|l| l.usage.output_tokens).sum();
    let model_cost: f64 = lines.iter().map(|l| l.usage.cost_usd).sum();
    assert_eq!(usage.input_tokens, input);
    assert_eq!(usage.output_tokens, output);
    let compute = usage.duration_ms as f64 / 1000.0 * cfg.compute_usd_per_second;
    // The ledger rounds to micro-dollars; duration_ms truncates below a millisecond.
    assert!(
        (usage.cost_usd - (model_cost + compute)).abs() < 2e-6,
        "cost {} != model {model_cost} + compute {compute}",
        usage.cost_usd
    );
    assert_eq!(usage.vcpu, cfg.vcpu);
    assert_eq!(usage.memory_mb, cfg.memory_mb);
    assert_eq!(usage.capacity, cfg.capacity);
}
