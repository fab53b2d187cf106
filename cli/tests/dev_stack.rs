//! End to end: `jobledger dev` started as a real process on an ephemeral port, driven over HTTP.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = "e2e-secret-key-0123456789";

struct DevServer {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl DevServer {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> DevServer {
        DevServer::start_in(tempfile::tempdir().unwrap(), extra, env)
    }

    /// A server on an existing data folder (a restart).
    fn start_in(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> DevServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobledger"));
        cmd.args(["dev", "--port", "0", "--api-key", KEY, "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(endpoint) = line.strip_prefix("jobledger dev: listening on ") {
                    let _ = tx.send(endpoint.to_string());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dev server did not start");
        DevServer {
            child,
            endpoint,
            dir,
            http: reqwest::Client::new(),
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A command on one job (`cancel`, `retry`) with the key; the status and the answer.
    async fn command(&self, id: &str, command: &str, body: Option<&[u8]>) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/jobs/{id}/{command}"),
            Some(KEY),
            body.map(<[u8]>::to_vec),
        )
        .await
    }

    async fn submit(&self, body: &Value) -> String {
        let (status, resp) = self
            .call(
                reqwest::Method::POST,
                "/jobs",
                Some(KEY),
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, 202, "{resp}");
        resp["job_id"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        let (status, view) = self
            .call(
                reqwest::Method::GET,
                &format!("/jobs/{id}"),
                Some(KEY),
                None,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        view
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                reqwest::Method::GET,
                &format!("/jobs/{id}/events?limit=1000"),
                Some(KEY),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"].as_array().unwrap().clone()
    }

    /// Polls until `done` holds for the job's view, or panics after `limit`.
    async fn wait_until(&self, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let view = self.job(id).await;
            if done(&view) {
                return view;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} did not get there in {limit:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        self.wait_until(id, limit, |v| {
            matches!(
                v["status"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            )
        })
        .await
    }

    fn replay(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_jobledger"))
            .args(["replay", "--data-dir"])
            .arg(self.data_dir())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DevServer {
    /// Stops the server as an operator would (SIGTERM), killing it if it does not stop in 10 s.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// A JSONL input file in the dev object store, big enough that a worker is still busy when the test acts.
fn big_input(server: &DevServer, items: usize) -> String {
    let dir = server.data_dir().join("objects/inputs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.jsonl");
    let paragraph = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(40);
    let mut text = String::new();
    for i in 0..items {
        text.push_str(
            &json!({"id": format!("doc-{i:05}"), "text": format!("# Title {i}\n\n{paragraph}")})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// Worker settings that checkpoint often, so a stopped attempt has progress to resume from.
const CHECKPOINT_OFTEN: [(&str, &str); 2] = [
    ("WORKER_PROGRESS_EVERY_ITEMS", "100"),
    ("WORKER_PROGRESS_EVERY_S", "1"),
];

/// Submits a 3,000-item job (with `max_attempts` when given) and waits until its worker has
/// done 200 items; returns the job id and its view then.
async fn big_job_under_way(server: &DevServer, max_attempts: Option<u32>) -> (String, Value) {
    let uri = big_input(server, 3000);
    let mut body = json!({"kind": "content_analysis", "input_uri": uri});
    if let Some(n) = max_attempts {
        body["max_attempts"] = json!(n);
    }
    let id = server.submit(&body).await;
    let running = server
        .wait_until(&id, Duration::from_secs(60), |v| {
            v["status"] == "RUNNING" && v["progress"]["done"].as_u64().unwrap_or(0) >= 200
        })
        .await;
    (id, running)
}

/// Attempt 2 resumed: its first progress report already counts the items attempt 1 checkpointed.
fn assert_resumed_past_the_checkpoint(events: &[Value]) {
    let done = |attempt: u64| {
        move |e: &&Value| e["type"] == "ProgressReported" && e["data"]["attempt"] == attempt
    };
    let checkpointed = events
        .iter()
        .filter(done(1))
        .filter_map(|e| e["data"]["done"].as_u64())
        .max()
        .unwrap_or(0);
    let first_of_second = events
        .iter()
        .find(done(2))
        .and_then(|e| e["data"]["done"].as_u64())
        // No report before it finished: it had nothing left to redo.
        .unwrap_or(u64::MAX);
    assert!(checkpointed >= 200, "{checkpointed}");
    assert!(
        first_of_second > checkpointed,
        "attempt 2 started at {first_of_second}, checkpoint {checkpointed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_every_kind_run_to_success_with_results_and_a_verifiable_history() {
    let server = DevServer::start(&[], &[]);
    let mut ids = Vec::new();
    for name in [
        "demo-image-alt.json",
        "demo-meta-description.json",
        "demo-content-analysis.json",
        "demo-noop.json",
    ] {
        ids.push((name, server.submit(&sample(name)).await));
    }
    for (name, id) in &ids {
        let view = server.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(view["status"], "SUCCEEDED", "{name}: {view}");
        let uri = view["result_uri"].as_str().unwrap();
        let bytes = std::fs::read(uri.strip_prefix("file://").unwrap()).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            view["result_sha256"].as_str().unwrap(),
            "{name}"
        );
        let lines: Vec<Value> = String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let total = view["progress"]["total"].as_u64().unwrap();
        assert_eq!(
            lines.len() as u64,
            total,
            "{name}: one result line per item"
        );
        let failed = lines.iter().filter(|l| l["ok"] == false).count() as u64;
        assert_eq!(
            failed,
            view["progress"]["failed"].as_u64().unwrap(),
            "{name}"
        );
        let events = server.events(id).await;
        let t = types(&events);
        assert_eq!(
            t.first().map(String::as_str),
            Some("JobSubmitted"),
            "{name}: {t:?}"
        );
        assert_eq!(
            t.last().map(String::as_str),
            Some("JobSucceeded"),
            "{name}: {t:?}"
        );
        for needed in ["JobQueued", "TaskLaunched", "AttemptStarted"] {
            assert!(
                t.iter().any(|x| x == needed),
                "{name}: {needed} missing from {t:?}"
            );
        }
        let versions: Vec<u64> = events
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            view["last_version"].as_u64(),
            versions.last().copied(),
            "{name}: read model caught up"
        );
    }
    // The image batch ships one broken image: it fails alone.
    let image = server.job(&ids[0].1).await;
    assert_eq!(image["progress"]["failed"], 1, "{image}");
    let (ok, out) = server.replay(&["verify", "--all"]);
    assert!(ok, "replay verify failed: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_their_status_and_append_nothing() {
    let server = DevServer::start(&[], &[]);
    let good = sample("demo-noop.json");
    let post = |key: Option<&'static str>, body: Vec<u8>| {
        let server = &server;
        async move {
            server
                .call(reqwest::Method::POST, "/jobs", key, Some(body))
                .await
        }
    };
    let (s, body) = post(Some(KEY), b"{not json".to_vec()).await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let mut unknown = good.clone();
    unknown["kind"] = json!("poetry");
    let (s, body) = post(Some(KEY), unknown.to_string().into_bytes()).await;
    assert_eq!(s, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image_alt"),
        "{body}"
    );
    let (s, _) = post(None, good.to_string().into_bytes()).await;
    assert_eq!(s, 401);
    let (s, _) = post(
        Some("wrong-key-0123456789abcdef"),
        good.to_string().into_bytes(),
    )
    .await;
    assert_eq!(s, 403);
    let huge = json!({"kind": "noop", "items": [{"id": "x", "text": "a".repeat(2 * 1024 * 1024)}]});
    // The server may answer 413 and close before the whole body is sent; the client then sees a
    // broken pipe instead of the answer. Either way the body was refused (the exact 413 is
    // checked in handlers/tests/api_errors.rs).
    let sent = server
        .http
        .post(format!("{}/jobs", server.endpoint))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(huge.to_string())
        .send()
        .await;
    if let Ok(resp) = sent {
        assert_eq!(resp.status().as_u16(), 413);
    }
    let mut invalid = good.clone();
    invalid["max_attempts"] = json!(0);
    invalid["timeout_s"] = json!(5);
    let (s, body) = post(Some(KEY), invalid.to_string().into_bytes()).await;
    assert_eq!(s, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_attempts") && message.contains("timeout_s"),
        "{body}"
    );

    // Nothing of the above reached the ledger.
    let (s, page) = server
        .call(reqwest::Method::GET, "/jobs", Some(KEY), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");
    let (_, out) = server.replay(&["stats", "--json"]);
    assert!(
        out.contains("\"jobs\": 0") || out.contains("\"jobs\":0"),
        "{out}"
    );

    // An illegal transition: cancelling a finished job.
    let id = server.submit(&good).await;
    server.wait_finished(&id, Duration::from_secs(30)).await;
    let before = server.events(&id).await.len();
    let (s, body) = server.command(&id, "cancel", Some(b"{}")).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(server.events(&id).await.len(), before);
    let (s, _) = server
        .call(
            reqwest::Method::GET,
            "/jobs/01a210f9-da58-70c2-88da-bdcecd517a2e",
            Some(KEY),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_is_cancelled_when_its_worker_next_reports() {
    let server = DevServer::start(&[], &[]);
    let uri = big_input(&server, 3000);
    let id = server
        .submit(&json!({"kind": "content_analysis", "input_uri": uri}))
        .await;
    server
        .wait_until(&id, Duration::from_secs(60), |v| {
            v["status"] == "RUNNING" && v["progress"]["done"].as_u64().unwrap_or(0) > 0
        })
        .await;
    let (s, body) = server
        .command(&id, "cancel", Some(br#"{"reason":"e2e"}"#))
        .await;
    assert_eq!(s, 202, "{body}");
    let view = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(view["status"], "CANCELLED", "{view}");
    assert!(
        view["progress"]["done"].as_u64().unwrap() < 3000,
        "the worker stopped early: {view}"
    );
    let t = types(&server.events(&id).await);
    let requested = t.iter().position(|x| x == "CancelRequested").unwrap();
    assert_eq!(t.last().map(String::as_str), Some("JobCancelled"), "{t:?}");
    assert!(requested < t.len() - 1, "{t:?}");
    assert!(!t.iter().any(|x| x == "JobSucceeded"), "{t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_job_is_timed_out_retried_and_resumes_from_its_checkpoint() {
    let server = DevServer::start(
        &[
            "--child-process-workers",
            "--heartbeat-limit-s",
            "4",
            "--sweep-every-s",
            "1",
        ],
        &CHECKPOINT_OFTEN,
    );
    let (id, running) = big_job_under_way(&server, Some(3)).await;
    let task = running["task_arn"]
        .as_str()
        .expect("the launch is recorded");
    let pid = task.strip_prefix("local:").expect("a local child process");
    assert!(
        Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .unwrap()
            .success()
    );

    let view = server.wait_finished(&id, Duration::from_secs(120)).await;
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
    assert_eq!(view["attempt"], 2, "{view}");
    let events = server.events(&id).await;
    let t = types(&events);
    assert!(t.iter().any(|x| x == "AttemptTimedOut"), "{t:?}");
    assert_resumed_past_the_checkpoint(&events);
    let lines = std::fs::read_to_string(
        view["result_uri"]
            .as_str()
            .unwrap()
            .strip_prefix("file://")
            .unwrap(),
    )
    .unwrap();
    let mut ids: Vec<&str> = lines
        .lines()
        .map(|l| l.split('"').nth(3).unwrap_or(""))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3000, "every item exactly once in the results");
}

#[tokio::test]
async fn sigterm_stops_the_server_and_its_child_worker_hands_the_attempt_back() {
    sigterm_stops_the_server_and_the_worker_hands_the_attempt_back(true).await;
}

#[tokio::test]
async fn sigterm_stops_the_server_and_its_in_process_worker_hands_the_attempt_back() {
    sigterm_stops_the_server_and_the_worker_hands_the_attempt_back(false).await;
}

async fn sigterm_stops_the_server_and_the_worker_hands_the_attempt_back(child_workers: bool) {
    let extra: &[&str] = if child_workers {
        &["--child-process-workers"]
    } else {
        &[]
    };
    let mut server = DevServer::start(extra, &CHECKPOINT_OFTEN);
    let (id, running) = big_job_under_way(&server, None).await;
    let task = running["task_arn"]
        .as_str()
        .expect("the launch is recorded");
    let pid = task.strip_prefix("local:").filter(|_| child_workers);
    let pid = pid.map(str::to_string);

    // As a service manager or `docker stop` asks: the server stops by itself, in its grace period.
    let server_pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &server_pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    if let Some(pid) = pid {
        let worker_alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!worker_alive, "the worker {pid} outlived the server");
    }

    // The worker checkpointed and handed its attempt back, as on a Spot reclaim.
    let (ok, history) = server.replay(&["history", &id, "--json"]);
    assert!(ok, "{history}");
    assert!(history.contains("WorkerInterrupted"), "{history}");
    assert!(!history.contains("AttemptTimedOut"), "{history}");

    // The next start resumes the job and finishes it.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = DevServer::start_in(dir, extra, &CHECKPOINT_OFTEN);
    let view = server.wait_finished(&id, Duration::from_secs(120)).await;
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
    assert_eq!(view["attempt"], 2, "{view}");
    assert_resumed_past_the_checkpoint(&server.events(&id).await);
}

/// A small deterministic generator (splitmix64), so a failing run can be repeated with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every stored view row of the read model, in job id order, as stored.
fn stored_views(data_dir: &Path) -> Vec<(String, i64, String)> {
    let conn = rusqlite::Connection::open(data_dir.join("views.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT job_id, last_version, view FROM jobs ORDER BY job_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Events in the ledger, and how many of each type.
fn ledger_types(data_dir: &Path) -> std::collections::BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open(data_dir.join("ledger.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT type, COUNT(*) FROM events GROUP BY type")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Sends `signal` to the job's worker if the job is running in a child process right now.
async fn signal_worker(server: &DevServer, id: &str, signal: &str) -> bool {
    let view = server.job(id).await;
    let Some(pid) = view["task_arn"]
        .as_str()
        .and_then(|t| t.strip_prefix("local:"))
    else {
        return false;
    };
    // Only a live `jobledger worker`: a finished worker's pid may belong to another process now.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if view["status"] != "RUNNING" || !String::from_utf8_lossy(&cmdline).contains("worker") {
        return false;
    }
    Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_long_random_run_of_the_dev_stack_rebuild_gives_back_the_live_read_model() {
    let seed = std::env::var("DEV_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_206_u64);
    eprintln!("DEV_RANDOM_SEED={seed}");
    let mut rng = Rng(seed);
    let mut server = DevServer::start(
        &[
            "--child-process-workers",
            "--heartbeat-limit-s",
            "3",
            "--sweep-every-s",
            "1",
        ],
        &[
            ("WORKER_PROGRESS_EVERY_ITEMS", "50"),
            ("WORKER_PROGRESS_EVERY_S", "1"),
        ],
    );
    let long_input = big_input(&server, 1500);
    let missing = format!(
        "file://{}",
        server
            .data_dir()
            .canonicalize()
            .unwrap()
            .join("objects/inputs/missing.jsonl")
            .display()
    );
    let noop = |items: u64| json!({"kind": "noop", "items": (0..items).map(|i| json!({"id": format!("n{i}")})).collect::<Vec<_>>()});

    // Scripted first, so every way a job can end is in the log whatever the seed does: a worker
    // stopped by SIGTERM (interrupted, then retried), one killed outright (timed out), a cancel
    // and an input that cannot be read.
    let mut ids = Vec::new();
    for signal in ["TERM", "KILL"] {
        let id = server
            .submit(
                &json!({"kind": "content_analysis", "input_uri": long_input, "max_attempts": 3}),
            )
            .await;
        server
            .wait_until(&id, Duration::from_secs(60), |v| {
                v["status"] == "RUNNING" && v["progress"]["done"].as_u64().unwrap_or(0) > 0
            })
            .await;
        assert!(signal_worker(&server, &id, signal).await, "SIG{signal}");
        ids.push(id);
    }
    let cancelled = server.submit(&noop(5)).await;
    let (s, body) = server.command(&cancelled, "cancel", None).await;
    assert!(s == 202 || s == 409, "{s} {body}");
    ids.push(cancelled);
    ids.push(
        server
            .submit(&json!({"kind": "content_analysis", "input_uri": missing, "max_attempts": 1}))
            .await,
    );

    for _ in 0..300 {
        match rng.below(20) {
            0..=8 => ids.push(server.submit(&noop(1 + rng.below(30))).await),
            9..=10 => {
                let input = if rng.below(3) == 0 {
                    &missing
                } else {
                    &long_input
                };
                let attempts = 1 + rng.below(3);
                ids.push(
                    server
                        .submit(&json!({"kind": "content_analysis", "input_uri": input, "max_attempts": attempts}))
                        .await,
                );
            }
            11..=16 => {
                let id = &ids[rng.below(ids.len() as u64) as usize];
                let (command, body) = if rng.below(2) == 0 {
                    ("cancel", Some(&br#"{"reason":"random"}"#[..]))
                } else {
                    ("retry", None)
                };
                let (s, answer) = server.command(id, command, body).await;
                // 409: the job is not in a state that takes the command (finished, or not failed).
                assert!(s == 202 || s == 409, "{command} {id}: {s} {answer}");
            }
            _ => {
                let id = ids[rng.below(ids.len() as u64) as usize].clone();
                let signal = if rng.below(2) == 0 { "TERM" } else { "KILL" };
                signal_worker(&server, &id, signal).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
    }

    // Quiet: every job finished and the stored read model caught up with the ledger. (The API
    // folds the ledger when a view lags, so only the stored rows tell.)
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let views = stored_views(server.data_dir());
        let open = views
            .iter()
            .filter(|(_, _, v)| {
                let status = serde_json::from_str::<Value>(v).unwrap()["status"].clone();
                !matches!(status.as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELLED"))
            })
            .count();
        let projected: i64 = views.iter().map(|(_, v, _)| v).sum();
        let logged: i64 = ledger_types(server.data_dir()).values().sum();
        if views.len() == ids.len() && open == 0 && projected == logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not quiet: {} of {} views, {open} open, {projected} of {logged} events projected",
            views.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let types = ledger_types(server.data_dir());
    eprintln!("{} jobs, events by type: {types:?}", ids.len());
    for needed in [
        "JobSucceeded",
        "JobFailed",
        "JobCancelled",
        "WorkerInterrupted",
        "AttemptTimedOut",
        "RetryScheduled",
    ] {
        assert!(types.contains_key(needed), "no {needed} in {types:?}");
    }

    let (ok, out) = server.replay(&["rebuild", "--dry-run"]);
    assert!(ok, "the live read model differs from the ledger: {out}");
    assert!(out.contains(" 0 difference(s)"), "{out}");
    let live = stored_views(server.data_dir());

    // Stopped, the read model rebuilt from the ledger is the live one, row for row, byte for byte.
    server.stop();
    let (ok, out) = server.replay(&["rebuild"]);
    assert!(ok, "{out}");
    assert_eq!(stored_views(server.data_dir()), live);
    for args in [&["verify", "--all"][..], &["rebuild", "--dry-run"]] {
        let (ok, out) = server.replay(args);
        assert!(ok, "replay {args:?}: {out}");
    }
    let (ok, out) = server.replay(&["stats", "--json"]);
    assert!(ok, "{out}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["jobs"].as_u64(), Some(live.len() as u64), "{stats}");
}
