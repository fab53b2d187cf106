//! The `worker` binary: the environment contract, exit codes and SIGTERM.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use jobledger_events::event::{Capacity, JobEvent};
use jobledger_events::spec::{Item, JobInput, Notify};
use jobledger_events::{
    Command, CommandContext, EventStore, JobId, JobKind, JobSpec, SqliteEventStore, execute,
};

const WORKER: &str = env!("CARGO_BIN_EXE_worker");

/// A ledger in `dir` holding one noop job of `n` items, launched for attempt 1.
async fn launched_job(dir: &std::path::Path, n: usize) -> (SqliteEventStore, JobId) {
    let store = SqliteEventStore::open(dir.join("ledger.sqlite3")).unwrap();
    let job = JobId::new();
    let items = (0..n)
        .map(|i| Item {
            id: format!("n{i}"),
            ..Item::default()
        })
        .collect();
    let spec = JobSpec {
        kind: JobKind::Noop,
        input: JobInput::Items { items },
        max_attempts: 3,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata: serde_json::Map::new(),
        idempotency_key: None,
        max_tokens: None,
    };
    let ctx = CommandContext::new("api-key:test", Utc::now());
    for cmd in [
        Command::Submit(spec),
        Command::MarkQueued {
            attempt: 1,
            message_id: "m".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "local-1".into(),
            capacity: Capacity::Local,
        },
    ] {
        execute(&store, job, &cmd, &ctx).await.unwrap();
    }
    (store, job)
}

async fn types(store: &SqliteEventStore, job: JobId) -> Vec<&'static str> {
    store
        .load(job)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap().event_type())
        .collect()
}

#[test]
fn a_missing_variable_is_a_clear_error_and_exit_code_2() {
    let out = Process::new(WORKER)
        .env_clear()
        .env("ATTEMPT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JOB_ID is not set"), "{stderr}");
}

#[tokio::test]
async fn the_binary_runs_a_job_to_success_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (store, job) = launched_job(dir.path(), 3).await;
    let out = Process::new(WORKER)
        .env("JOB_ID", job.to_string())
        .env("ATTEMPT", "1")
        .env("JOBLEDGER_DATA_DIR", dir.path())
        .env("WORKER_ID", "bin-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("succeeded: 3 ok, 0 failed"));
    assert_eq!(types(&store, job).await.last(), Some(&"JobSucceeded"));
    assert!(
        dir.path()
            .join(format!("objects/results/{job}~1.jsonl"))
            .exists()
    );

    // Running the same attempt again is refused cleanly (exit 0, nothing appended).
    let before = types(&store, job).await.len();
    let again = Process::new(WORKER)
        .env("JOB_ID", job.to_string())
        .env("ATTEMPT", "1")
        .env("JOBLEDGER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("attempt refused"));
    assert_eq!(types(&store, job).await.len(), before);
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_checkpoints_and_interrupts_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (store, job) = launched_job(dir.path(), 5000).await;
    let mut child = Process::new(WORKER)
        .env("JOB_ID", job.to_string())
        .env("ATTEMPT", "1")
        .env("JOBLEDGER_DATA_DIR", dir.path())
        .env("WORKER_PROGRESS_EVERY_ITEMS", "1")
        .env("WORKER_CONCURRENCY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !types(&store, job).await.contains(&"ProgressReported") {
        assert!(Instant::now() < deadline, "no progress within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");

    let events: Vec<JobEvent> = store
        .load(job)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    let interrupted = events.iter().find_map(|e| match e {
        JobEvent::WorkerInterrupted(i) => Some(i.reason.clone()),
        _ => None,
    });
    assert_eq!(interrupted.as_deref(), Some("SIGTERM"));
    let last_progress = events.iter().rev().find_map(|e| match e {
        JobEvent::ProgressReported(p) => Some(p.clone()),
        _ => None,
    });
    let p = last_progress.unwrap();
    assert!(p.done > 0 && p.done < 5000, "{p:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, JobEvent::ProgressReported(p) if p.checkpoint_uri.is_some()))
    );
}
