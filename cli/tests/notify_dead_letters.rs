//! `jobledger notify dead-letters` and `jobledger notify redrive`, end to end: `jobledger dev`
//! runs a job while its Slack webhook answers 500s, the notification is dead-lettered; the list
//! shows it; a redrive without the sink configured keeps it; once the webhook works, a redrive
//! delivers it exactly once and empties the list.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

const KEY: &str = "notify-test-key-0123456789";

/// A Slack incoming webhook: 500s while broken, else records the message.
#[derive(Default)]
struct Webhook {
    broken: AtomicBool,
    attempts: Mutex<u32>,
    delivered: Mutex<Vec<Value>>,
}

async fn hook(State(w): State<Arc<Webhook>>, body: String) -> (StatusCode, &'static str) {
    *w.attempts.lock().unwrap() += 1;
    if w.broken.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) if v["text"].is_string() => {
            w.delivered.lock().unwrap().push(v);
            (StatusCode::OK, "ok")
        }
        _ => (StatusCode::BAD_REQUEST, "invalid_payload"),
    }
}

async fn serve_webhook() -> (Arc<Webhook>, String) {
    let w = Arc::new(Webhook::default());
    let app = Router::new()
        .route("/services/T000/B000/hooksecret", post(hook))
        .with_state(Arc::clone(&w));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/services/T000/B000/hooksecret",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (w, url)
}

/// Runs `jobledger notify <args>` on `dir` with only the given notifier variables set.
fn jobledger_notify(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobledger"));
    cmd.arg("notify").args(args).arg("--data-dir").arg(dir);
    for var in [
        "SLACK_WEBHOOK_URL",
        "SLACK_BOT_TOKEN",
        "SLACK_CHANNEL",
        "NOTION_TOKEN",
        "NOTION_DATABASE_ID",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `jobledger dev` on a free port; returns it and its API base URL.
fn start_dev(dir: &Path, webhook: &str) -> (Dev, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobledger"))
        .args([
            "dev",
            "--port",
            "0",
            "--workers",
            "1",
            "--api-key",
            KEY,
            "--data-dir",
        ])
        .arg(dir)
        .env("SLACK_WEBHOOK_URL", webhook)
        .env("NOTIFY_MAX_TRIES", "1")
        .env_remove("SLACK_BOT_TOKEN")
        .env_remove("NOTION_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
        .recv_timeout(Duration::from_secs(60))
        .expect("dev server did not start");
    (Dev(child), endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_notification_is_listed_kept_and_redriven_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, url) = serve_webhook().await;
    webhook.broken.store(true, Ordering::SeqCst);

    // A job runs to SUCCEEDED while the webhook is down: its one message is dead-lettered.
    let (dev, endpoint) = start_dev(dir.path(), &url);
    let http = reqwest::Client::new();
    let accepted: Value = http
        .post(format!("{endpoint}/jobs"))
        .header("x-api-key", KEY)
        .json(&json!({"kind": "noop", "items": [{"id": "a", "text": "hello"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let listed = loop {
        let (ok, out) = jobledger_notify(dir.path(), &["dead-letters", "--json"], &[]);
        if ok
            && let Ok(Value::Array(letters)) = serde_json::from_str::<Value>(&out)
            && !letters.is_empty()
        {
            break letters;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing dead-lettered: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(dev);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["job_id"], job_id.as_str());
    assert_eq!(listed[0]["sink"], "slack-webhook");
    assert!(webhook.delivered.lock().unwrap().is_empty());
    let attempts = *webhook.attempts.lock().unwrap();
    assert!(attempts >= 1);

    // The table an operator reads: job, sink, version, tries, when, the error (never the URL).
    let (ok, table) = jobledger_notify(dir.path(), &["dead-letters"], &[]);
    assert!(ok, "{table}");
    assert!(
        table.contains("LAST ERROR") && table.contains(&job_id),
        "{table}"
    );
    assert!(
        table.contains("slack-webhook") && table.contains("500"),
        "{table}"
    );
    assert!(
        !table.contains("hooksecret"),
        "the webhook URL is a secret: {table}"
    );
    let (ok, none) = jobledger_notify(dir.path(), &["dead-letters", "--sink", "notion"], &[]);
    assert!(ok && none.contains("no dead letters"), "{none}");

    // Bad input: a clear error, nothing lost.
    let (ok, out) = jobledger_notify(dir.path(), &["redrive", "--job", "not-a-job"], &[]);
    assert!(!ok && out.contains("is not a job id"), "{out}");
    let (ok, out) = jobledger_notify(dir.path(), &["redrive"], &[]);
    assert!(
        !ok && out.contains("not configured"),
        "without SLACK_WEBHOOK_URL: {out}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = jobledger_notify(empty.path(), &["dead-letters"], &[]);
    assert!(!ok && out.contains("no notifier state"), "{out}");
    // Still down: the redrive fails and the letter stays, with the try counted.
    let env = [("SLACK_WEBHOOK_URL", url.as_str())];
    let (ok, out) = jobledger_notify(dir.path(), &["redrive", "--sink", "slack"], &env);
    assert!(!ok && out.contains("failed"), "{out}");
    let (_, out) = jobledger_notify(dir.path(), &["dead-letters", "--json"], &[]);
    let letters: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1);
    assert_eq!(
        letters[0]["tries"].as_u64(),
        listed[0]["tries"].as_u64().map(|t| t + 1)
    );

    // The webhook works again: one redrive delivers the message once and empties the list.
    webhook.broken.store(false, Ordering::SeqCst);
    let args = ["redrive", "--job", job_id.as_str(), "--sink", "slack"];
    let (ok, out) = jobledger_notify(dir.path(), &args, &env);
    assert!(ok && out.contains("delivered"), "{out}");
    let (ok, out) = jobledger_notify(dir.path(), &["dead-letters"], &[]);
    assert!(ok && out.contains("no dead letters"), "{out}");
    let (ok, out) = jobledger_notify(dir.path(), &["redrive"], &env);
    assert!(ok && out.contains("no dead letters to redrive"), "{out}");
    let delivered = webhook.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "delivered exactly once: {delivered:?}");
    assert!(
        delivered[0].to_string().contains("SUCCEEDED")
            || delivered[0].to_string().contains("succeeded"),
        "{}",
        delivered[0]
    );
}
