//! The local launchers: concurrency limits, idempotency per attempt, and the child-process contract
//! (`JOB_ID`, `ATTEMPT` and the extra environment).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobledger_events::JobId;
use jobledger_events::event::Capacity;
use jobledger_handlers::local::{ChildProcessLauncher, InProcessLauncher, WorkFn};
use jobledger_handlers::ports::TaskLauncher;
use tokio::sync::Semaphore;

/// Work that holds a gate permit while it runs, counting runs and the most running at once.
struct Probe {
    runs: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
    gate: Semaphore,
}

fn probing_work(probe: &Arc<Probe>) -> WorkFn {
    let probe = Arc::clone(probe);
    Arc::new(move |_, _| {
        let probe = Arc::clone(&probe);
        Box::pin(async move {
            probe.runs.fetch_add(1, Ordering::SeqCst);
            let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
            probe.peak.fetch_max(now, Ordering::SeqCst);
            if let Ok(permit) = probe.gate.acquire().await {
                permit.forget();
            }
            probe.running.fetch_sub(1, Ordering::SeqCst);
        })
    })
}

fn probe() -> Arc<Probe> {
    Arc::new(Probe {
        runs: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_never_exceed_the_limit_and_launches_wait_for_a_slot() {
    let probe = probe();
    let launcher = Arc::new(InProcessLauncher::new(probing_work(&probe), 2));
    let launching = {
        let launcher = Arc::clone(&launcher);
        tokio::spawn(async move {
            for _ in 0..5 {
                launcher.launch(JobId::new(), 1).await.expect("launch");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        2,
        "the third launch waits for a slot"
    );
    assert_eq!(launcher.running(), 2);
    assert!(!launching.is_finished());

    probe.gate.add_permits(5);
    launching.await.expect("all launched");
    launcher.wait_idle().await;
    assert_eq!(probe.runs.load(Ordering::SeqCst), 5);
    assert_eq!(probe.peak.load(Ordering::SeqCst), 2);
    assert_eq!(launcher.running(), 0);
}

#[tokio::test]
async fn launching_the_same_attempt_twice_runs_one_worker_and_answers_the_same_task() {
    let probe = probe();
    probe.gate.add_permits(10);
    let launcher = InProcessLauncher::new(probing_work(&probe), 4);
    let job = JobId::new();
    let first = launcher.launch(job, 1).await.expect("launch");
    let again = launcher.launch(job, 1).await.expect("launch again");
    assert_eq!(first, again);
    assert_eq!(first.capacity, Capacity::Local);
    let next = launcher.launch(job, 2).await.expect("next attempt");
    assert_ne!(next.task_arn, first.task_arn);
    launcher.wait_idle().await;
    assert_eq!(probe.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_child_process_gets_job_id_attempt_and_the_extra_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_string_lossy().to_string();
    let launcher = ChildProcessLauncher::new(
        "/bin/sh",
        vec![
            "-c".into(),
            r#"echo "$JOB_ID $ATTEMPT $JOBLEDGER_DATA_DIR" > "$OUT/$JOB_ID-$ATTEMPT""#.into(),
        ],
        vec![
            ("JOBLEDGER_DATA_DIR".into(), "/data/dev".into()),
            ("OUT".into(), out),
        ],
        2,
    );
    let job = JobId::new();
    let launched = launcher.launch(job, 3).await.expect("launch");
    let pid = launched
        .task_arn
        .strip_prefix("local:")
        .expect("local:<pid>");
    assert!(pid.parse::<u32>().is_ok(), "{}", launched.task_arn);
    assert_eq!(launched.capacity, Capacity::Local);
    assert_eq!(
        launcher.launch(job, 3).await.expect("again"),
        launched,
        "idempotent per attempt"
    );

    launcher.wait_idle().await;
    let written =
        std::fs::read_to_string(dir.path().join(format!("{job}-3"))).expect("child wrote its file");
    assert_eq!(written.trim(), format!("{job} 3 /data/dev"));
}

#[tokio::test]
async fn a_missing_program_is_a_permanent_launch_error() {
    let launcher = ChildProcessLauncher::new("/no/such/worker", vec![], vec![], 1);
    let err = launcher
        .launch(JobId::new(), 1)
        .await
        .expect_err("cannot start");
    assert!(!err.retryable, "{err}");
    assert!(err.reason.contains("/no/such/worker"));
    assert_eq!(launcher.running(), 0, "the slot is given back");
}

#[tokio::test]
async fn child_processes_respect_the_limit() {
    let launcher =
        ChildProcessLauncher::new("/bin/sh", vec!["-c".into(), "sleep 0.5".into()], vec![], 1);
    let started = Instant::now();
    launcher.launch(JobId::new(), 1).await.expect("first");
    launcher
        .launch(JobId::new(), 1)
        .await
        .expect("second waits for the first to exit");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    launcher.wait_idle().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn raising_the_stop_sends_sigterm_to_every_running_child_and_they_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_string_lossy().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // A worker stand-in that only ends on SIGTERM, saying so.
    let script = r#"trap 'echo stopped > "$OUT/$JOB_ID"; exit 0' TERM
        touch "$OUT/$JOB_ID.started"
        while :; do sleep 0.05; done"#;
    let launcher = ChildProcessLauncher::new(
        "/bin/sh",
        vec!["-c".into(), script.into()],
        vec![("OUT".into(), out)],
        2,
    )
    .stopping_on(stop_rx);
    let jobs = [JobId::new(), JobId::new()];
    for job in jobs {
        launcher.launch(job, 1).await.expect("launch");
    }
    let started = Instant::now();
    while !jobs
        .iter()
        .all(|j| dir.path().join(format!("{j}.started")).exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "children did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(launcher.running(), 2);

    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), launcher.wait_idle())
        .await
        .expect("every child ends once asked to stop");
    for job in jobs {
        let said = std::fs::read_to_string(dir.path().join(job.to_string())).expect("trap ran");
        assert_eq!(said.trim(), "stopped");
    }
}
