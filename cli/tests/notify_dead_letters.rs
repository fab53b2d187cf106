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

/// The notifier's variables: a test sets the ones it means, and none leaks in from the caller.
const NOTIFIER_VARS: &[&str] = &[
    "SLACK_WEBHOOK_URL",
    "SLACK_BOT_TOKEN",
    "SLACK_CHANNEL",
    "SLACK_SECRET_ARN",
    "SLACK_API_BASE",
    "NOTION_TOKEN",
    "NOTION_DATABASE_ID",
    "NOTION_SECRET_ARN",
    "NOTION_API_BASE",
    "EVENTS_TABLE",
    "RESULTS_BUCKET",
];

/// Runs `jobledger notify <args>` with only the given notifier variables set; whether it
/// succeeded, and what it printed.
fn notify_command(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobledger"));
    cmd.arg("notify").args(args);
    for var in NOTIFIER_VARS {
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

/// `jobledger notify <args>` on `jobledger dev`'s data folder `dir`.
fn jobledger_notify(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = dir.to_str().unwrap();
    notify_command(&[args, &["--data-dir", dir]].concat(), env)
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

/// On AWS: the `notifier` Lambda's dead letters in its DynamoDB table (moto, under
/// `scripts/with-moto`), listed, and redriven with the Slack bot token read from Secrets Manager
/// as the Lambda reads it.
#[cfg(feature = "dynamodb")]
mod on_aws {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use chrono::Utc;
    use jobledger_events::testing::running_job;
    use jobledger_events::{DynamoEventStore, EventsTables};
    use jobledger_handlers::notify::{DeadLetterStore, DynamoNotifyStore, NewDeadLetter};
    use jobledger_testsupport::http::{FakeServer, Reply};
    use jobledger_testsupport::moto::{self, Moto};
    use serde_json::{Value, json};

    use super::notify_command;

    const RUN_AS: &str = "scripts/with-moto cargo test -p jobledger-cli --features dynamodb --test notify_dead_letters";
    const TOKEN: &str = "xoxb-from-secrets-manager";

    /// Slack's Web API: refuses any token but [`TOKEN`], answers 500 while `down`, and keeps the
    /// messages it accepted.
    async fn slack(down: Arc<AtomicBool>, posted: Arc<Mutex<Vec<Value>>>) -> FakeServer {
        FakeServer::start(move |_, seen| {
            let auth = seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some(format!("Bearer {TOKEN}").as_str()) {
                return Reply::json(200, json!({"ok": false, "error": "invalid_auth"}));
            }
            if down.load(Ordering::SeqCst) {
                return Reply::json(500, json!({"ok": false, "error": "internal_error"}));
            }
            if seen.path != "/api/chat.postMessage" {
                return Reply::json(200, json!({"ok": false, "error": "unknown_method"}));
            }
            posted.lock().unwrap().push(seen.body.clone());
            Reply::json(
                200,
                json!({"ok": true, "channel": "C0JOBS", "ts": "1700000000.000100"}),
            )
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lambdas_dead_letters_are_listed_and_redriven_with_its_secret() {
        // What Terraform deploys: the events table, the results bucket, the notifier's table and
        // the Slack bot token's secret.
        let moto = Moto::connect(RUN_AS);
        let (events, bucket) = (moto::unique("events"), moto::unique("results"));
        let store = DynamoEventStore::new(
            moto.dynamo.clone(),
            moto.s3.clone(),
            EventsTables {
                events: events.clone(),
                idempotency: None,
                payload_bucket: Some(bucket.clone()),
            },
        );
        store.create_tables().await.unwrap();
        let table = moto::unique("notifier-state");
        let states = DynamoNotifyStore::new(moto.dynamo.clone(), &table);
        states.create_table().await.unwrap();
        let sdk = jobledger_workers::aws_clients::sdk_config().await;
        let secret_arn = aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(moto::unique("jobledger-slack"))
            .secret_string(TOKEN)
            .send()
            .await
            .unwrap()
            .arn()
            .unwrap()
            .to_string();

        // A running job whose RUNNING message the Lambda gave up on after a long Slack outage.
        let (job_id, history) = running_job(&store).await;
        let running = history.last().unwrap();
        states
            .add(NewDeadLetter {
                sink: "slack-bot".into(),
                job_id,
                version: running.version,
                event_id: running.event_id,
                seq: 0,
                error: "Slack answered 500 internal_error".into(),
                tries: 3,
                failed_at: Utc::now(),
            })
            .await
            .unwrap();

        let aws = |args: &[&str], env: &[(&str, &str)]| {
            notify_command(&[&["--dynamodb-table", table.as_str()], args].concat(), env)
        };
        let (ok, out) = aws(&["dead-letters", "--json"], &[]);
        assert!(ok, "{out}");
        let listed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        assert_eq!(listed[0]["job_id"], job_id.to_string());
        assert_eq!(listed[0]["sink"], "slack-bot");
        assert_eq!(listed[0]["tries"], 3);
        let (ok, out) = aws(&["dead-letters", "--sink", "slack"], &[]);
        assert!(
            ok && out.contains(&job_id.to_string()) && out.contains("500"),
            "{out}"
        );
        let (ok, out) = aws(&["dead-letters", "--sink", "notion"], &[]);
        assert!(ok && out.contains("no dead letters"), "{out}");

        // Bad input and missing settings: clear errors, the letter kept.
        let (ok, out) = notify_command(&["--dynamodb-table", "no-such-table", "dead-letters"], &[]);
        assert!(!ok && out.contains("no-such-table"), "{out}");
        let (ok, out) = notify_command(&["--events-table", &events, "dead-letters"], &[]);
        assert!(!ok && out.contains("--dynamodb-table"), "{out}");
        let (ok, out) = aws(&["redrive"], &[]);
        assert!(!ok && out.contains("EVENTS_TABLE"), "{out}");
        let tables = ["--events-table", &events, "--results-bucket", &bucket];
        let redrive = [&["redrive"][..], &tables].concat();
        let (ok, out) = aws(&redrive, &[("SLACK_CHANNEL", "C0JOBS")]);
        assert!(!ok && out.contains("SLACK_SECRET_ARN"), "{out}");
        let missing = format!("{secret_arn}-gone");
        let (ok, out) = aws(
            &redrive,
            &[("SLACK_CHANNEL", "C0JOBS"), ("SLACK_SECRET_ARN", &missing)],
        );
        assert!(!ok && out.contains(&missing), "{out}");
        assert!(!out.contains(TOKEN), "{out}");
        let (ok, out) = aws(&redrive, &[]);
        assert!(
            !ok && out.contains("not configured") && out.contains("SLACK_SECRET_ARN"),
            "no sink configured: {out}"
        );

        // Slack still down: the redrive fails and the letter stays, one more try counted.
        let down = Arc::new(AtomicBool::new(true));
        let posted = Arc::new(Mutex::new(Vec::new()));
        let server = slack(down.clone(), posted.clone()).await;
        let api_base = format!("{}/api", server.url());
        let env = [
            ("SLACK_CHANNEL", "C0JOBS"),
            ("SLACK_SECRET_ARN", secret_arn.as_str()),
            ("SLACK_API_BASE", api_base.as_str()),
        ];
        let (ok, out) = aws(&redrive, &env);
        assert!(!ok && out.contains("failed"), "{out}");
        let (_, out) = aws(&["dead-letters", "--json"], &[]);
        let letters: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(letters[0]["tries"], 4, "{letters}");
        assert!(posted.lock().unwrap().is_empty());

        // Slack is back: one message, with the token from Secrets Manager; the list is empty.
        down.store(false, Ordering::SeqCst);
        let job = job_id.to_string();
        let (ok, out) = aws(&[&redrive[..], &["--job", &job]].concat(), &env);
        assert!(ok && out.contains("delivered"), "{out}");
        let posted = posted.lock().unwrap().clone();
        assert_eq!(posted.len(), 1, "{posted:?}");
        assert_eq!(posted[0]["channel"], "C0JOBS");
        assert!(posted[0].to_string().contains("RUNNING"), "{}", posted[0]);
        let (ok, out) = aws(&["dead-letters"], &[]);
        assert!(ok && out.contains("no dead letters"), "{out}");
        let (ok, out) = aws(&redrive, &env);
        assert!(ok && out.contains("no dead letters to redrive"), "{out}");
    }
}
