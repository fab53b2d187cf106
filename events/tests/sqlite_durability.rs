//! Crash durability and cross-process wake-ups of `SqliteEventStore`.
//!
//! The test re-runs its own binary as a child process (selected by an environment variable) that
//! appends through `execute` as fast as it can and prints each acknowledged event. The parent
//! `kill -9`s it mid-run, reopens the file and checks that every acknowledged event is there.
//! While the child writes, the parent waits on its own store's change feed: the child's commits
//! can only reach it through the `PRAGMA data_version` check, so this also tests that path.
//!
//! `kill -9` proves that an acknowledgement is only sent after the commit reached the operating
//! system; that it also survives power loss rests on `synchronous=FULL` (an fsync per commit),
//! which a process-level test cannot observe.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use jobledger_events::chain::verify_chain;
use jobledger_events::ids::JobId;
use jobledger_events::store::{ChangeFeed, EventStore};
use jobledger_events::testing::{commands_to_running, noop_spec, progress_command, test_context};
use jobledger_events::{SqliteEventStore, execute};

const CHILD_DB: &str = "JOBLEDGER_TEST_DURABILITY_CHILD_DB";
const TEST_NAME: &str =
    "every_acknowledged_event_survives_kill_9_and_other_processes_commits_wake_waiters";
/// Acknowledgements to see before pulling the plug.
const ACKS_BEFORE_KILL: usize = 400;

#[test]
fn every_acknowledged_event_survives_kill_9_and_other_processes_commits_wake_waiters() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        append_until_killed(&db);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = SqliteEventStore::open(&db).expect("open");
    let waiter = {
        let store = store.clone();
        rt.spawn(async move {
            store.wait_after(0).await;
            Instant::now()
        })
    };

    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acks: Vec<(JobId, u64, String)> = Vec::new();
    let mut first_ack = None;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let Some(ack) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut parts = ack.split(' ');
        let (Some(job), Some(version), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad ack line {line:?}");
        };
        acks.push((
            job.parse().expect("job id"),
            version.parse().expect("version"),
            hash.to_string(),
        ));
        first_ack.get_or_insert_with(Instant::now);
        if acks.len() == ACKS_BEFORE_KILL && !killed {
            // SIGKILL: no destructors, no clean close of the database.
            child.kill().expect("kill -9");
            killed = true;
        }
    }
    let status = child.wait().expect("wait");
    assert!(
        killed,
        "the child stopped on its own after {} acks: {status}",
        acks.len()
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "the child was not killed by SIGKILL: {status}"
    );

    let woke = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), waiter).await })
        .expect("a waiter in another process was never woken by the child's commits")
        .expect("waiter task");
    let first_ack = first_ack.expect("at least one ack");
    assert!(
        woke.saturating_duration_since(first_ack) < Duration::from_secs(1),
        "the waiter woke {:?} after the child's first commit",
        woke.saturating_duration_since(first_ack)
    );
    drop(store);

    let reopened = SqliteEventStore::open(&db).expect("reopen after the crash");
    let mut by_job: HashMap<JobId, Vec<(u64, String)>> = HashMap::new();
    for (job, version, hash) in acks {
        by_job.entry(job).or_default().push((version, hash));
    }
    rt.block_on(async {
        for (job, acked) in &by_job {
            let history = reopened.load(*job).await.expect("load after the crash");
            assert_eq!(
                verify_chain(&history),
                vec![],
                "job {job}'s chain broke in the crash"
            );
            for (version, hash) in acked {
                let stored = history.get(*version as usize - 1);
                assert_eq!(
                    stored.map(|e| e.hash.to_hex()),
                    Some(hash.clone()),
                    "acknowledged event {version} of job {job} is missing after kill -9"
                );
            }
        }
    });
}

/// The child: 8 clients, each taking jobs to RUNNING and reporting progress, forever.
fn append_until_killed(db: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = SqliteEventStore::open(db).expect("child open");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for client in 0..8 {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let ctx = test_context(&format!("worker:child-{client}"));
                loop {
                    let job = JobId::new();
                    let mut commands = commands_to_running(noop_spec(1));
                    commands.extend((1..=20).map(|done| progress_command(done, 20)));
                    for command in &commands {
                        let done = execute(&store, job, command, &ctx)
                            .await
                            .expect("child execute");
                        for e in done.events {
                            let _ = tx.send(format!(
                                "ACK {} {} {}",
                                e.job_id,
                                e.version,
                                e.hash.to_hex()
                            ));
                        }
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            // Flushed per line, so every printed ack reaches the parent even if we die next.
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .expect("write ack");
        }
    });
}
