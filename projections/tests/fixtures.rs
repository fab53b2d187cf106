//! The job view folded from recorded histories (`tests/fixtures/*.jsonl`, one `RecordedEvent` per line).
//!
//! The fixtures were recorded by `regenerate_fixtures` (ignored; run it with
//! `cargo test -p jobledger-projections --test fixtures -- --ignored` after a change to the event format),
//! which drives `execute` against a `SqliteEventStore` at fixed times and writes each job's stored history.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chrono::{DateTime, Duration, TimeZone, Utc};
use jobledger_events::chain::{compute_hash, verify_chain};
use jobledger_events::command::{Clock, Command};
use jobledger_events::event::{Capacity, Usage};
use jobledger_events::execute::{CommandContext, execute, fold};
use jobledger_events::spec::{Item, JobInput, JobSpec, Notify};
use jobledger_events::store::EventStore;
use jobledger_events::{Hash, JobId, JobKind, RecordedEvent, SqliteEventStore, Status};
use jobledger_projections::{JobView, Progress};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.jsonl"))
}

fn load(name: &str) -> Vec<RecordedEvent> {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 15, 9, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

fn job_id(n: u8) -> JobId {
    format!("01946a5c-3e00-7000-8000-0000000000{n:02x}")
        .parse()
        .unwrap()
}

/// Loads a fixture, checks its chain, folds it, and checks the view agrees with the aggregate.
fn view_of(name: &str) -> (Vec<RecordedEvent>, JobView) {
    let events = load(name);
    assert!(!events.is_empty(), "{name} is empty");
    assert_eq!(verify_chain(&events), vec![], "{name} chain");
    let view = JobView::fold(&events).unwrap().unwrap();
    let (job, _) = fold(events[0].job_id, &events).unwrap();
    assert_eq!(view.status, job.status, "{name} status");
    assert_eq!(view.attempt, job.attempt, "{name} attempt");
    assert_eq!(view.last_version, job.version, "{name} version");
    assert_eq!(view.failures, job.failures, "{name} failures");
    assert_eq!(
        view.interruptions, job.interruptions,
        "{name} interruptions"
    );
    assert_eq!(view.error, job.error, "{name} error");
    assert_eq!(view.updated_at, events[events.len() - 1].at);
    assert_eq!(view.created_at, events[0].at);
    (events, view)
}

#[test]
fn a_job_that_succeeds_on_its_first_attempt() {
    let (events, v) = view_of("succeeded_first_attempt");
    assert_eq!(events.len(), 7);
    assert_eq!(v.job_id, job_id(1));
    assert_eq!(v.kind, JobKind::MetaDescription);
    assert_eq!(v.status, Status::Succeeded);
    assert_eq!(v.attempt, 1);
    assert_eq!(
        v.progress,
        Progress {
            done: 2,
            failed: 1,
            total: 3
        }
    );
    assert_eq!(v.created_at, at(0));
    assert_eq!(v.attempt_started_at, Some(at(40)));
    assert_eq!(v.heartbeat_at, Some(at(70)));
    assert_eq!(v.finished_at, Some(at(90)));
    assert_eq!(v.updated_at, at(90));
    assert_eq!(v.result_uri.as_deref(), Some("file://results/1/1.jsonl"));
    assert_eq!(v.result_sha256.as_deref(), Some(&"ab".repeat(32)[..]));
    assert_eq!(v.usage.as_ref().map(|u| u.cost_usd), Some(0.0123));
    assert_eq!(v.cost_usd, 0.0123);
    assert_eq!(v.task_arn.as_deref(), Some("arn:aws:ecs:task/1-1"));
    assert_eq!(v.capacity, Some(Capacity::FargateSpot));
    assert_eq!(
        v.checkpoint_uri.as_deref(),
        Some("file://checkpoints/1/1-2")
    );
    assert_eq!(
        v.notify,
        Notify {
            slack: true,
            notion: false
        }
    );
    assert_eq!(v.metadata["site"], "blog");
    assert_eq!((v.timeout_s, v.max_attempts, v.priority), (600, 3, 5));
    assert_eq!(v.error, None);
    assert_eq!(v.duration(), Some(Duration::seconds(90)));
}

#[test]
fn a_job_that_fails_once_is_interrupted_once_and_then_succeeds() {
    let (_, v) = view_of("retried_and_interrupted_then_succeeded");
    assert_eq!(v.job_id, job_id(2));
    assert_eq!(v.kind, JobKind::ImageAlt);
    assert_eq!(v.status, Status::Succeeded);
    assert_eq!(v.attempt, 3);
    assert_eq!(v.failures, 1);
    assert_eq!(v.interruptions, 1);
    assert_eq!(v.total_interruptions, 1);
    assert_eq!(v.error.as_deref(), Some("model throttled"));
    assert_eq!(v.capacity, Some(Capacity::Fargate));
    assert_eq!(v.task_arn.as_deref(), Some("arn:aws:ecs:task/2-3"));
    assert_eq!(v.attempt_started_at, Some(at(400)));
    // The not_before of the interruption's retry: interruptions retry at once.
    assert_eq!(v.not_before, Some(at(300)));
    assert_eq!(
        v.progress,
        Progress {
            done: 2,
            failed: 0,
            total: 2
        }
    );
    assert_eq!(v.cost_usd, 0.5);
    assert_eq!(v.finished_at, Some(at(460)));
}

#[test]
fn a_job_that_runs_out_of_attempts_fails() {
    let (_, v) = view_of("failed_after_retries");
    assert_eq!(v.job_id, job_id(3));
    assert_eq!(v.kind, JobKind::ContentAnalysis);
    assert_eq!(v.status, Status::Failed);
    assert_eq!(v.attempt, 2);
    assert_eq!(v.failures, 2);
    assert_eq!(
        v.error.as_deref(),
        Some("gave up after 2 failed attempt(s): attempt 2 timed out")
    );
    // An input_uri job has no known total until the worker reports one.
    assert_eq!(v.progress.total, 0);
    assert_eq!(v.result_uri, None);
    assert_eq!(v.usage, None);
    assert_eq!(v.cost_usd, 0.0);
    assert_eq!(v.finished_at, Some(at(1000)));
    assert_eq!(v.heartbeat_at, Some(at(200)));
}

#[test]
fn a_cancelled_job_retried_by_hand_is_queued_again_with_fresh_budgets() {
    let (events, v) = view_of("cancelled_then_retried");
    assert_eq!(v.job_id, job_id(4));
    assert_eq!(v.kind, JobKind::Noop);
    let statuses: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(statuses.contains(&"CancelRequested") && statuses.contains(&"JobCancelled"));
    assert_eq!(v.status, Status::Queued);
    assert_eq!(v.attempt, 2);
    assert_eq!(v.finished_at, None);
    assert_eq!(v.task_arn, None);
    assert_eq!(v.attempt_started_at, None);
    // Progress reported while cancelling is kept: the next attempt resumes from it.
    assert_eq!(
        v.progress,
        Progress {
            done: 1,
            failed: 0,
            total: 1
        }
    );
    assert_eq!(v.checkpoint_uri.as_deref(), Some("file://checkpoints/4/1"));
    assert_eq!(v.not_before, Some(at(300)));
}

#[test]
fn a_history_with_schema_1_progress_is_upcast_while_folding() {
    let (events, v) = view_of("legacy_progress_schema_1");
    let legacy: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| e.schema == 1 && e.event_type == "ProgressReported")
        .collect();
    assert_eq!(legacy.len(), 2);
    assert!(!legacy[0].data.get().contains("failed"));
    assert_eq!(v.status, Status::Succeeded);
    assert_eq!(
        v.progress,
        Progress {
            done: 4,
            failed: 0,
            total: 4
        }
    );
    assert_eq!(v.heartbeat_at, Some(at(60)));
}

#[test]
fn every_prefix_of_every_fixture_folds_like_the_aggregate() {
    for name in FIXTURES {
        let events = load(name);
        for n in 1..=events.len() {
            let view = JobView::fold(&events[..n]).unwrap().unwrap();
            let (job, _) = fold(events[0].job_id, &events[..n]).unwrap();
            assert_eq!(
                (view.status, view.attempt),
                (job.status, job.attempt),
                "{name} at {n}"
            );
        }
        // Delivering the whole history twice changes nothing.
        let once = JobView::fold(&events).unwrap();
        let twice = events
            .iter()
            .try_fold(once.clone(), JobView::apply)
            .unwrap();
        assert_eq!(once, twice, "{name}");
    }
}

const FIXTURES: [&str; 5] = [
    "succeeded_first_attempt",
    "retried_and_interrupted_then_succeeded",
    "failed_after_retries",
    "cancelled_then_retried",
    "legacy_progress_schema_1",
];

// ---- recording -------------------------------------------------------------------------------

fn items(n: usize) -> JobInput {
    JobInput::Items {
        items: (1..=n)
            .map(|i| Item {
                id: format!("item-{i}"),
                text: Some(format!("Text of item {i}.")),
                ..Item::default()
            })
            .collect(),
    }
}

fn spec(kind: JobKind, input: JobInput, max_attempts: u32) -> JobSpec {
    JobSpec {
        kind,
        input,
        max_attempts,
        timeout_s: 600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    }
}

fn usage(cost_usd: f64, capacity: Capacity) -> Usage {
    Usage {
        duration_ms: 30_000,
        vcpu: 0.25,
        memory_mb: 512,
        capacity: Some(capacity),
        input_tokens: 1200,
        output_tokens: 300,
        model: Some("builtin".into()),
        cost_usd,
    }
}

struct Recorder {
    store: SqliteEventStore,
    job_id: JobId,
}

impl Recorder {
    async fn run(&self, secs: i64, actor: &str, cmd: Command) {
        let ctx = CommandContext::new(actor, at(secs));
        execute(&self.store, self.job_id, &cmd, &ctx)
            .await
            .unwrap_or_else(|e| panic!("{} at {secs}: {e}", cmd.name()));
    }

    fn clock(secs: i64) -> Clock {
        Clock {
            now: at(secs),
            jitter: 0.5,
        }
    }

    async fn launch(&self, secs: i64, attempt: u32, n: u8, capacity: Capacity) {
        self.run(
            secs,
            "system:dispatcher",
            Command::MarkQueued {
                attempt,
                message_id: format!("msg-{n}-{attempt}"),
            },
        )
        .await;
        self.run(
            secs + 10,
            "system:launcher",
            Command::RecordLaunch {
                attempt,
                task_arn: format!("arn:aws:ecs:task/{n}-{attempt}"),
                capacity,
            },
        )
        .await;
        self.run(
            secs + 20,
            &format!("worker:{n}-{attempt}"),
            Command::StartAttempt {
                attempt,
                worker: format!("task-{n}-{attempt}"),
            },
        )
        .await;
    }

    async fn progress(
        &self,
        secs: i64,
        attempt: u32,
        done: u64,
        failed: u64,
        total: u64,
        cp: &str,
    ) {
        self.run(
            secs,
            "worker:w",
            Command::ReportProgress {
                attempt,
                done,
                failed,
                total,
                checkpoint_uri: Some(cp.to_string()),
            },
        )
        .await;
    }

    async fn succeed(&self, secs: i64, attempt: u32, ok: u64, failed: u64, usage: Usage) {
        let n = self.job_id.to_string();
        let n = &n[n.len() - 1..];
        self.run(
            secs,
            "worker:w",
            Command::Succeed {
                attempt,
                result_uri: format!("file://results/{n}/{attempt}.jsonl"),
                result_sha256: "ab".repeat(32),
                items_ok: ok,
                items_failed: failed,
                usage,
            },
        )
        .await;
    }
}

/// Rewrites `ProgressReported` events to schema 1 (no `failed`) and re-chains the hashes.
fn as_schema_1(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    let mut prev = Hash::ZERO;
    events
        .into_iter()
        .map(|mut e| {
            if e.event_type == "ProgressReported" {
                let mut data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
                let failed = data.as_object_mut().unwrap().remove("failed");
                assert_eq!(failed, Some(0.into()), "schema 1 cannot say an item failed");
                e.schema = 1;
                e.data = serde_json::value::RawValue::from_string(
                    jobledger_events::chain::canonical_json(&data),
                )
                .unwrap();
            }
            e.prev_hash = prev;
            e.hash = compute_hash(&e);
            prev = e.hash;
            e
        })
        .collect()
}

#[tokio::test]
#[ignore = "rewrites tests/fixtures; run by hand after a change to the event format"]
async fn regenerate_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.sqlite")).unwrap();
    let api = "api-key:fixtures";

    // 1: meta_description, three items, succeeds on the first attempt with one failed item.
    let r = Recorder {
        store: store.clone(),
        job_id: job_id(1),
    };
    let mut s = spec(JobKind::MetaDescription, items(3), 3);
    s.priority = 5;
    s.notify = Notify {
        slack: true,
        notion: false,
    };
    s.metadata.insert("site".into(), "blog".into());
    r.run(0, api, Command::Submit(s)).await;
    r.launch(20, 1, 1, Capacity::FargateSpot).await;
    r.progress(55, 1, 1, 0, 3, "file://checkpoints/1/1-1").await;
    r.progress(70, 1, 2, 1, 3, "file://checkpoints/1/1-2").await;
    r.succeed(90, 1, 2, 1, usage(0.0123, Capacity::FargateSpot))
        .await;

    // 2: image_alt; attempt 1 fails (retryable), attempt 2 is reclaimed by Spot, attempt 3 succeeds.
    let r = Recorder {
        store: store.clone(),
        job_id: job_id(2),
    };
    r.run(
        0,
        api,
        Command::Submit(spec(JobKind::ImageAlt, items(2), 3)),
    )
    .await;
    r.launch(10, 1, 2, Capacity::FargateSpot).await;
    let fail = Command::FailAttempt {
        attempt: 1,
        error: "model throttled".into(),
        retryable: true,
        clock: Recorder::clock(60),
    };
    r.run(60, "worker:w", fail).await;
    r.launch(200, 2, 2, Capacity::FargateSpot).await;
    r.progress(250, 2, 1, 0, 2, "file://checkpoints/2/2").await;
    let interrupt = Command::Interrupt {
        attempt: 2,
        reason: "SpotInterruption".into(),
        clock: Recorder::clock(300),
    };
    r.run(300, "worker:w", interrupt).await;
    r.launch(380, 3, 2, Capacity::Fargate).await;
    r.progress(430, 3, 2, 0, 2, "file://checkpoints/2/3").await;
    r.succeed(460, 3, 2, 0, usage(0.5, Capacity::Fargate)).await;

    // 3: content_analysis from a URI, two attempts allowed: a failed launch, then a timeout.
    let r = Recorder {
        store: store.clone(),
        job_id: job_id(3),
    };
    let input = JobInput::Uri {
        input_uri: "s3://bucket/items.jsonl".into(),
    };
    r.run(
        0,
        api,
        Command::Submit(spec(JobKind::ContentAnalysis, input, 2)),
    )
    .await;
    r.run(
        10,
        "system:dispatcher",
        Command::MarkQueued {
            attempt: 1,
            message_id: "msg-3-1".into(),
        },
    )
    .await;
    let launch_failed = Command::RecordLaunchFailure {
        attempt: 1,
        reason: "no Spot capacity".into(),
        retryable: true,
        clock: Recorder::clock(20),
    };
    r.run(20, "system:launcher", launch_failed).await;
    r.launch(180, 2, 3, Capacity::FargateSpot).await;
    let time_out = Command::TimeOut {
        attempt: 2,
        clock: Recorder::clock(1000),
    };
    r.run(1000, "system:sweeper", time_out).await;

    // 4: noop; cancelled while running (the worker reports once more, then confirms), retried by hand.
    let r = Recorder {
        store: store.clone(),
        job_id: job_id(4),
    };
    r.run(0, api, Command::Submit(spec(JobKind::Noop, items(1), 1)))
        .await;
    r.launch(10, 1, 4, Capacity::Local).await;
    let cancel = Command::Cancel {
        reason: "wrong input".into(),
    };
    r.run(60, api, cancel).await;
    r.progress(70, 1, 1, 0, 1, "file://checkpoints/4/1").await;
    r.run(80, "worker:w", Command::ConfirmCancel { attempt: 1 })
        .await;
    r.run(300, api, Command::Retry { now: at(300) }).await;
    r.run(
        310,
        "system:dispatcher",
        Command::MarkQueued {
            attempt: 2,
            message_id: "msg-4-2".into(),
        },
    )
    .await;

    // 5: recorded by an older build whose ProgressReported had no `failed` (schema 1).
    let r = Recorder {
        store: store.clone(),
        job_id: job_id(5),
    };
    r.run(
        0,
        api,
        Command::Submit(spec(JobKind::MetaDescription, items(4), 1)),
    )
    .await;
    r.launch(10, 1, 5, Capacity::Local).await;
    r.progress(45, 1, 2, 0, 4, "file://checkpoints/5/1-1").await;
    r.progress(60, 1, 4, 0, 4, "file://checkpoints/5/1-2").await;
    r.succeed(75, 1, 4, 0, usage(0.0, Capacity::Local)).await;

    for (n, name) in FIXTURES.iter().enumerate() {
        let mut events = store.load(job_id(n as u8 + 1)).await.unwrap();
        if *name == "legacy_progress_schema_1" {
            events = as_schema_1(events);
        }
        assert_eq!(verify_chain(&events), vec![]);
        let mut text = String::new();
        for e in &events {
            text.push_str(&serde_json::to_string(e).unwrap());
            text.push('\n');
        }
        let path = fixture_path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}
