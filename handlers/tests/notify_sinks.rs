//! The notifier against local Slack and Notion servers that check every request as the APIs
//! document it (auth header, `Notion-Version`, JSON shape, property types) and answer with the real
//! response shapes, including 429 with `Retry-After` and 5xx. Time runs on a manual clock, so a
//! 10-minute outage takes seconds.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use chrono::{DateTime, TimeZone, Utc};
use jobledger_events::command::{Clock, Command};
use jobledger_events::event::{Capacity, Usage};
use jobledger_events::execute::{CommandContext, execute};
use jobledger_events::spec::{Item, JobInput, JobSpec, Notify};
use jobledger_events::store::{ChangeFeed, EventStore};
use jobledger_events::{JobId, JobKind, SqliteEventStore};
use jobledger_handlers::notify::clock::Sleep;
use jobledger_handlers::notify::config::ConfigError;
use jobledger_handlers::notify::sink::Sink;
use jobledger_handlers::notify::{
    DeadLetterStore, Notifier, NotifierConfig, NotifyClock, NotifyEnv, NotifyStateStore, Outcome,
    SinkState, SqliteNotifyStore, ViewCache, consumer_name, notify_one, run_notifier,
};
use jobledger_handlers::project::run_projector;
use jobledger_projections::{SqliteViewStore, ViewStore};
use jobledger_workers::{FsObjectStore, ObjectStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const BOT_TOKEN: &str = "xoxb-test-token";
const NOTION_TOKEN: &str = "secret_notion_test";
const DB_ID: &str = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9";
const CHANNEL_ID: &str = "C0TESTCHAN";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

// ---------------------------------------------------------------- the manual clock

/// A clock that moves only when told: sleeps resolve once `advance` passes their end.
struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    tick: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            now: Mutex::new(t0()),
            tick: watch::channel(t0()).0,
        })
    }

    fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap();
        *now += chrono::Duration::from_std(d).unwrap();
        self.tick.send_replace(*now);
    }
}

impl NotifyClock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let target = self.now() + chrono::Duration::from_std(d).unwrap();
        let mut rx = self.tick.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|t| *t >= target).await;
        })
    }
}

/// Moves the clock 500 ms per real millisecond until aborted.
fn drive(clock: &Arc<ManualClock>) -> tokio::task::JoinHandle<()> {
    let clock = Arc::clone(clock);
    tokio::spawn(async move {
        loop {
            clock.advance(Duration::from_millis(500));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

// ---------------------------------------------------------------- the mock services

/// A failure the mock answers the next request with.
#[derive(Clone, Copy, Debug)]
enum Fail {
    RateLimited(u64),
    ServerError,
}

/// One accepted API call.
#[derive(Clone, Debug)]
struct Call {
    /// `chat.postMessage`, `chat.update`, `webhook`, `POST /v1/pages`, `PATCH /v1/pages`, `query`.
    what: String,
    body: Value,
}

struct Mock {
    clock: Arc<ManualClock>,
    calls: Mutex<Vec<Call>>,
    /// Every request, failures included: (virtual time, service).
    attempts: Mutex<Vec<(DateTime<Utc>, &'static str)>>,
    violations: Mutex<Vec<String>>,
    slack_messages: Mutex<HashMap<String, Value>>,
    next_ts: AtomicU32,
    slack_fail: Mutex<VecDeque<Fail>>,
    channel_missing: AtomicBool,
    notion_pages: Mutex<HashMap<String, Value>>,
    notion_fail: Mutex<VecDeque<Fail>>,
    notion_down_until: Mutex<Option<DateTime<Utc>>>,
    notion_last: Mutex<Option<DateTime<Utc>>>,
    notion_too_fast: AtomicU32,
}

impl Mock {
    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }

    fn record(&self, what: &str, body: &Value) {
        self.calls.lock().unwrap().push(Call {
            what: what.to_string(),
            body: body.clone(),
        });
    }

    fn calls(&self, what: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.what == what)
            .cloned()
            .collect()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn attempts_of(&self, service: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == service)
            .count()
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn injected(fail: Fail, service: &str) -> Response {
    match fail {
        Fail::RateLimited(secs) => {
            let body = if service == "notion" {
                json!({"object": "error", "status": 429, "code": "rate_limited",
                       "message": "You have been rate limited. Please try again in a few minutes."})
            } else {
                json!({"ok": false, "error": "ratelimited"})
            };
            let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body);
            r.headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
            r
        }
        Fail::ServerError => {
            let body = if service == "notion" {
                json!({"object": "error", "status": 500, "code": "internal_server_error",
                       "message": "Unexpected error occurred."})
            } else {
                json!({"ok": false, "error": "internal_error"})
            };
            json_response(StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    }
}

/// Checks the JSON content type and parses the body.
fn parse_json(m: &Mock, service: &str, headers: &HeaderMap, body: &Bytes) -> Option<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        m.violation(format!("{service}: content-type {ct:?}"));
    }
    match serde_json::from_slice(body) {
        Ok(v) => Some(v),
        Err(e) => {
            m.violation(format!("{service}: body is not JSON: {e}"));
            None
        }
    }
}

fn check_blocks(m: &Mock, what: &str, body: &Value) {
    match body["blocks"].as_array() {
        Some(blocks) if !blocks.is_empty() && blocks.len() <= 50 => {
            for b in blocks {
                if !b["type"].is_string() {
                    m.violation(format!("{what}: block without a type: {b}"));
                }
                if let Some(t) = b["text"]["text"].as_str()
                    && t.chars().count() > 3000
                {
                    m.violation(format!("{what}: section text over 3000 characters"));
                }
            }
        }
        _ => m.violation(format!("{what}: blocks must be 1 to 50 blocks: {body}")),
    }
    if !body["text"].is_string() {
        m.violation(format!(
            "{what}: text (the notification fallback) is missing"
        ));
    }
}

async fn slack_api(
    State(m): State<Arc<Mock>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    m.attempts.lock().unwrap().push((m.clock.now(), "slack"));
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {BOT_TOKEN}")) {
        m.violation(format!("slack {method}: authorization {auth:?}"));
        return json_response(StatusCode::OK, json!({"ok": false, "error": "not_authed"}));
    }
    let Some(body) = parse_json(&m, "slack", &headers, &body) else {
        return json_response(
            StatusCode::OK,
            json!({"ok": false, "error": "invalid_json"}),
        );
    };
    if let Some(fail) = m.slack_fail.lock().unwrap().pop_front() {
        return injected(fail, "slack");
    }
    if m.channel_missing.load(Ordering::SeqCst) {
        return json_response(
            StatusCode::OK,
            json!({"ok": false, "error": "channel_not_found"}),
        );
    }
    if !body["channel"].is_string() {
        m.violation(format!("slack {method}: channel missing"));
    }
    match method.as_str() {
        "chat.postMessage" if body["thread_ts"].is_string() => {
            let parent = body["thread_ts"].as_str().unwrap_or_default().to_string();
            if !m.slack_messages.lock().unwrap().contains_key(&parent) {
                return json_response(
                    StatusCode::OK,
                    json!({"ok": false, "error": "thread_not_found"}),
                );
            }
            if body["text"].as_str().is_none_or(str::is_empty) {
                m.violation("slack reply: empty text".into());
            }
            m.record("reply", &body);
            let ts = format!(
                "1740830400.{:06}",
                m.next_ts.fetch_add(1, Ordering::SeqCst) + 1
            );
            json_response(
                StatusCode::OK,
                json!({"ok": true, "channel": CHANNEL_ID, "ts": ts,
                       "message": {"type": "message", "text": body["text"], "ts": ts, "thread_ts": parent}}),
            )
        }
        "chat.postMessage" => {
            check_blocks(&m, "chat.postMessage", &body);
            m.record("chat.postMessage", &body);
            let ts = format!(
                "1740830400.{:06}",
                m.next_ts.fetch_add(1, Ordering::SeqCst) + 1
            );
            m.slack_messages
                .lock()
                .unwrap()
                .insert(ts.clone(), body.clone());
            json_response(
                StatusCode::OK,
                json!({"ok": true, "channel": CHANNEL_ID, "ts": ts,
                       "message": {"type": "message", "text": body["text"], "blocks": body["blocks"], "ts": ts}}),
            )
        }
        "chat.update" => {
            check_blocks(&m, "chat.update", &body);
            // chat.update needs the channel id, not a #name.
            if body["channel"] != CHANNEL_ID {
                m.violation(format!(
                    "chat.update: channel {} is not an id",
                    body["channel"]
                ));
                return json_response(
                    StatusCode::OK,
                    json!({"ok": false, "error": "channel_not_found"}),
                );
            }
            let ts = body["ts"].as_str().unwrap_or_default().to_string();
            let mut messages = m.slack_messages.lock().unwrap();
            let Some(message) = messages.get_mut(&ts) else {
                return json_response(
                    StatusCode::OK,
                    json!({"ok": false, "error": "message_not_found"}),
                );
            };
            *message = body.clone();
            drop(messages);
            m.record("chat.update", &body);
            json_response(
                StatusCode::OK,
                json!({"ok": true, "channel": CHANNEL_ID, "ts": ts, "text": body["text"]}),
            )
        }
        other => {
            m.violation(format!("slack: unexpected method {other}"));
            json_response(
                StatusCode::NOT_FOUND,
                json!({"ok": false, "error": "unknown_method"}),
            )
        }
    }
}

async fn slack_webhook(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    m.attempts.lock().unwrap().push((m.clock.now(), "slack"));
    let Some(body) = parse_json(&m, "webhook", &headers, &body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    check_blocks(&m, "webhook", &body);
    m.record("webhook", &body);
    (StatusCode::OK, "ok").into_response()
}

/// Notion's checks common to every request; `Some` is the answer to send instead.
fn notion_gate(m: &Mock, headers: &HeaderMap) -> Option<Response> {
    let now = m.clock.now();
    m.attempts.lock().unwrap().push((now, "notion"));
    {
        let mut last = m.notion_last.lock().unwrap();
        // The client must keep to ~3 requests a second.
        if let Some(prev) = *last
            && now - prev < chrono::Duration::milliseconds(300)
        {
            m.notion_too_fast.fetch_add(1, Ordering::SeqCst);
        }
        *last = Some(now);
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {NOTION_TOKEN}")) {
        m.violation(format!("notion: authorization {auth:?}"));
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"object": "error", "status": 401, "code": "unauthorized", "message": "API token is invalid."}),
        ));
    }
    let version = headers.get("notion-version").and_then(|v| v.to_str().ok());
    if version != Some("2022-06-28") {
        m.violation(format!("notion: Notion-Version {version:?}"));
        return Some(json_response(
            StatusCode::BAD_REQUEST,
            json!({"object": "error", "status": 400, "code": "missing_version",
                   "message": "Notion-Version header failed validation."}),
        ));
    }
    if let Some(until) = *m.notion_down_until.lock().unwrap()
        && now < until
    {
        return Some(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"object": "error", "status": 503, "code": "service_unavailable",
                   "message": "Notion is unavailable, try again later."}),
        ));
    }
    m.notion_fail
        .lock()
        .unwrap()
        .pop_front()
        .map(|f| injected(f, "notion"))
}

/// Checks page properties against the database schema and Notion's property value shapes.
fn check_properties(m: &Mock, props: &Value) {
    let schema = [
        ("Job ID", "title"),
        ("Status", "select"),
        ("Kind", "select"),
        ("Items", "number"),
        ("Failed items", "number"),
        ("Attempts", "number"),
        ("Duration s", "number"),
        ("Cost USD", "number"),
        ("Submitted", "date"),
        ("Completed", "date"),
        ("Result", "url"),
        ("Error", "rich_text"),
    ];
    let Some(map) = props.as_object() else {
        return m.violation(format!("notion: properties is not an object: {props}"));
    };
    for name in map.keys() {
        if !schema.iter().any(|(n, _)| n == name) {
            m.violation(format!("notion: no property {name:?} in the database"));
        }
    }
    let rich = |v: &Value| {
        v.as_array().is_some_and(|a| {
            a.len() <= 100
                && a.iter().all(|t| {
                    t["type"] == "text"
                        && t["text"]["content"]
                            .as_str()
                            .is_some_and(|c| c.chars().count() <= 2000)
                })
        })
    };
    for (name, kind) in schema {
        let Some(value) = map.get(name) else { continue };
        let inner = &value[kind];
        let ok = match kind {
            "title" => rich(inner) && !inner.as_array().unwrap().is_empty(),
            "rich_text" => rich(inner),
            "select" => inner["name"].as_str().is_some_and(|n| !n.contains(',')),
            "number" => inner.is_number() || inner.is_null(),
            "date" => {
                inner.is_null()
                    || inner["start"]
                        .as_str()
                        .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
            }
            "url" => inner.is_null() || inner.as_str().is_some_and(|u| u.len() <= 2000),
            _ => false,
        };
        if !ok || value.as_object().map(|o| o.len()) != Some(1) {
            m.violation(format!(
                "notion: property {name:?} is not a valid {kind}: {value}"
            ));
        }
    }
}

fn page(id: &str, props: &Value, now: DateTime<Utc>) -> Value {
    json!({
        "object": "page", "id": id,
        "created_time": now.to_rfc3339(), "last_edited_time": now.to_rfc3339(),
        "parent": {"type": "database_id", "database_id": DB_ID},
        "archived": false, "in_trash": false,
        "properties": props,
        "url": format!("https://www.notion.so/{}", id.replace('-', "")),
    })
}

async fn notion_create(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    let Some(body) = parse_json(&m, "notion", &headers, &body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"object": "error", "status": 400, "code": "invalid_json", "message": "bad"}),
        );
    };
    if body["parent"]["database_id"] != DB_ID {
        m.violation(format!("notion create: parent {}", body["parent"]));
    }
    check_properties(&m, &body["properties"]);
    m.record("POST /v1/pages", &body);
    let id = uuid::Uuid::now_v7().to_string();
    let p = page(&id, &body["properties"], m.clock.now());
    m.notion_pages.lock().unwrap().insert(id, p.clone());
    json_response(StatusCode::OK, p)
}

async fn notion_update(
    State(m): State<Arc<Mock>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    let Some(body) = parse_json(&m, "notion", &headers, &body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"object": "error", "status": 400, "code": "invalid_json", "message": "bad"}),
        );
    };
    check_properties(&m, &body["properties"]);
    let mut pages = m.notion_pages.lock().unwrap();
    let Some(p) = pages.get_mut(&id) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"object": "error", "status": 404, "code": "object_not_found",
                   "message": format!("Could not find page with ID: {id}.")}),
        );
    };
    for (k, v) in body["properties"].as_object().cloned().unwrap_or_default() {
        p["properties"][k] = v;
    }
    let answer = p.clone();
    drop(pages);
    m.record(
        "PATCH /v1/pages",
        &json!({"id": id, "properties": body["properties"]}),
    );
    json_response(StatusCode::OK, answer)
}

async fn notion_query(
    State(m): State<Arc<Mock>>,
    Path(db): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    let Some(body) = parse_json(&m, "notion", &headers, &body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"object": "error", "status": 400, "code": "invalid_json", "message": "bad"}),
        );
    };
    if db != DB_ID
        || body["filter"]["property"] != "Job ID"
        || !body["filter"]["title"]["equals"].is_string()
    {
        m.violation(format!("notion query: {db} {body}"));
    }
    m.record("query", &body);
    let wanted = body["filter"]["title"]["equals"].clone();
    let results: Vec<Value> = m
        .notion_pages
        .lock()
        .unwrap()
        .values()
        .filter(|p| p["properties"]["Job ID"]["title"][0]["text"]["content"] == wanted)
        .cloned()
        .collect();
    json_response(
        StatusCode::OK,
        json!({"object": "list", "results": results, "next_cursor": null, "has_more": false,
               "type": "page_or_database", "page_or_database": {}}),
    )
}

/// Starts the mock services; returns them and their base URL.
async fn serve(clock: &Arc<ManualClock>) -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock {
        clock: Arc::clone(clock),
        calls: Mutex::default(),
        attempts: Mutex::default(),
        violations: Mutex::default(),
        slack_messages: Mutex::default(),
        next_ts: AtomicU32::new(0),
        slack_fail: Mutex::default(),
        channel_missing: AtomicBool::new(false),
        notion_pages: Mutex::default(),
        notion_fail: Mutex::default(),
        notion_down_until: Mutex::default(),
        notion_last: Mutex::default(),
        notion_too_fast: AtomicU32::new(0),
    });
    let app = Router::new()
        .route("/slack/api/{method}", post(slack_api))
        .route("/slack/hooks/{*rest}", post(slack_webhook))
        .route("/notion/v1/pages", post(notion_create))
        .route("/notion/v1/pages/{id}", patch(notion_update))
        .route("/notion/v1/databases/{db}/query", post(notion_query))
        .with_state(Arc::clone(&mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

// ---------------------------------------------------------------- the stack under test

struct Stack {
    _dir: tempfile::TempDir,
    store: SqliteEventStore,
    objects: FsObjectStore,
    states: SqliteNotifyStore,
    clock: Arc<ManualClock>,
    mock: Arc<Mock>,
    base: String,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let objects = FsObjectStore::new(dir.path().join("objects")).unwrap();
    let states = SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).unwrap();
    let clock = ManualClock::new();
    let (mock, base) = serve(&clock).await;
    Stack {
        _dir: dir,
        store,
        objects,
        states,
        clock,
        mock,
        base,
    }
}

impl Stack {
    /// The notifier with the named sinks, configured the way the environment would.
    fn notifier(&self, webhook: bool, bot: bool, notion: bool) -> Notifier {
        let mut env: HashMap<&str, String> = HashMap::new();
        if webhook {
            env.insert(
                "SLACK_WEBHOOK_URL",
                format!("{}/slack/hooks/T000/B000/XXXXSECRET", self.base),
            );
        }
        if bot {
            env.insert("SLACK_BOT_TOKEN", BOT_TOKEN.into());
            env.insert("SLACK_CHANNEL", "#jobs".into());
            env.insert("SLACK_API_BASE", format!("{}/slack/api", self.base));
        }
        if notion {
            env.insert("NOTION_TOKEN", NOTION_TOKEN.into());
            env.insert("NOTION_DATABASE_ID", DB_ID.into());
            env.insert("NOTION_API_BASE", format!("{}/notion", self.base));
        }
        let config = NotifierConfig::from_lookup(|k| env.get(k).cloned()).unwrap();
        let clock: Arc<dyn NotifyClock> = self.clock.clone();
        Notifier::from_config(&config, clock).unwrap()
    }

    fn start(&self, notifier: Notifier) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run_notifier(
            self.store.clone(),
            self.objects.clone(),
            self.states.clone(),
            notifier,
            rx,
        ));
        (tx, task)
    }

    async fn head(&self) -> u64 {
        let feed = self.store.read_after(0, 100_000).await.unwrap();
        feed.last().map_or(0, |f| f.seq)
    }

    async fn caught_up(&self, sinks: &[&str]) -> bool {
        let head = self.head().await;
        for sink in sinks {
            if self.store.checkpoint(&consumer_name(sink)).await.unwrap() < head {
                return false;
            }
        }
        true
    }

    /// Waits (up to 60 s of real time) until every named sink's checkpoint is at the feed's head.
    async fn wait_caught_up(&self, sinks: &[&str]) {
        for _ in 0..6000 {
            if self.caught_up(sinks).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sinks {sinks:?} never caught up");
    }

    async fn run(&self, job_id: JobId, secs: i64, cmd: Command) {
        let ctx = CommandContext::new("test", t0() + chrono::Duration::seconds(secs));
        execute(&self.store, job_id, &cmd, &ctx).await.unwrap();
    }

    /// A whole life: submitted, queued, launched, running, one progress report, then succeeded
    /// (with a results file) or failed for good. Six events.
    async fn life(&self, notify: Notify, succeed: bool) -> JobId {
        let job_id = JobId::new();
        let spec = JobSpec {
            kind: JobKind::MetaDescription,
            input: JobInput::Items {
                items: (0..3)
                    .map(|i| Item {
                        id: format!("p{i}"),
                        text: Some("text".into()),
                        ..Item::default()
                    })
                    .collect(),
            },
            max_attempts: 1,
            timeout_s: 600,
            priority: 0,
            notify,
            metadata: serde_json::Map::new(),
            idempotency_key: None,
            max_tokens: None,
        };
        self.run(job_id, 0, Command::Submit(spec)).await;
        self.run(
            job_id,
            5,
            Command::MarkQueued {
                attempt: 1,
                message_id: "m1".into(),
            },
        )
        .await;
        self.run(
            job_id,
            10,
            Command::RecordLaunch {
                attempt: 1,
                task_arn: "local-1".into(),
                capacity: Capacity::Local,
            },
        )
        .await;
        self.run(
            job_id,
            15,
            Command::StartAttempt {
                attempt: 1,
                worker: "w".into(),
            },
        )
        .await;
        self.run(
            job_id,
            30,
            Command::ReportProgress {
                attempt: 1,
                done: 1,
                failed: 0,
                total: 3,
                checkpoint_uri: None,
            },
        )
        .await;
        if succeed {
            let uri = self
                .objects
                .put(&format!("results/{job_id}/1.jsonl"), b"{}\n".to_vec())
                .await
                .unwrap();
            let usage = Usage {
                duration_ms: 45_000,
                vcpu: 0.25,
                memory_mb: 512,
                capacity: Some(Capacity::Local),
                input_tokens: 100,
                output_tokens: 50,
                model: None,
                cost_usd: 0.0042,
            };
            self.run(
                job_id,
                60,
                Command::Succeed {
                    attempt: 1,
                    result_uri: uri,
                    result_sha256: "ab".into(),
                    items_ok: 2,
                    items_failed: 1,
                    usage,
                },
            )
            .await;
        } else {
            let clock = Clock {
                now: t0() + chrono::Duration::seconds(60),
                jitter: 0.5,
            };
            self.run(
                job_id,
                60,
                Command::FailAttempt {
                    attempt: 1,
                    error: "model refused: content policy".into(),
                    retryable: false,
                    clock,
                },
            )
            .await;
        }
        job_id
    }

    fn assert_clean(&self) {
        assert_eq!(
            *self.mock.violations.lock().unwrap(),
            Vec::<String>::new(),
            "requests broke the documented API"
        );
        assert_eq!(
            self.mock.notion_too_fast.load(Ordering::SeqCst),
            0,
            "Notion requests closer than 300 ms"
        );
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_jobs_whole_life_is_one_slack_message_and_one_notion_page_updated_in_place() {
    let s = stack().await;
    // One 5xx from Slack and one 429 with Retry-After from Notion along the way.
    s.mock
        .slack_fail
        .lock()
        .unwrap()
        .push_back(Fail::ServerError);
    s.mock
        .notion_fail
        .lock()
        .unwrap()
        .push_back(Fail::RateLimited(2));
    let driver = drive(&s.clock);
    let (stop, task) = s.start(s.notifier(true, true, true));
    let job_id = s.life(Notify::default(), true).await;
    s.wait_caught_up(&["slack-webhook", "slack-bot", "notion"])
        .await;
    s.assert_clean();

    // Slack bot: one message, updated on each of the four later status changes.
    let posts = s.mock.calls("chat.postMessage");
    let updates = s.mock.calls("chat.update");
    assert_eq!(posts.len(), 1, "one message per job");
    assert_eq!(updates.len(), 4, "QUEUED, LAUNCHING, RUNNING, SUCCEEDED");
    assert_eq!(s.mock.slack_messages.lock().unwrap().len(), 1);
    let ts = s
        .mock
        .slack_messages
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    assert!(
        updates.iter().all(|u| u.body["ts"] == ts.as_str()),
        "every update edits the same message"
    );
    assert!(
        posts[0].body["text"]
            .as_str()
            .unwrap()
            .contains("SUBMITTED")
    );
    let last = &updates[3].body;
    assert!(last["text"].as_str().unwrap().contains("SUCCEEDED"));
    let button = last["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap();
    let url = button["elements"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("file://") && url.ends_with(&format!("results/{job_id}~1.jsonl")),
        "{url}"
    );
    assert!(last.to_string().contains("Download link expires in 1d 0h"));
    assert!(
        s.mock.calls("reply").is_empty(),
        "no threaded reply for a success"
    );

    // Slack webhook: one message, when the job ended.
    let hooks = s.mock.calls("webhook");
    assert_eq!(hooks.len(), 1);
    assert!(
        hooks[0].body["text"]
            .as_str()
            .unwrap()
            .contains("SUCCEEDED")
    );

    // Notion: looked up once, created once, updated in place.
    assert_eq!(s.mock.calls("query").len(), 1);
    assert_eq!(s.mock.calls("POST /v1/pages").len(), 1);
    let patches = s.mock.calls("PATCH /v1/pages");
    assert_eq!(patches.len(), 4);
    let pages = s.mock.notion_pages.lock().unwrap().clone();
    assert_eq!(pages.len(), 1);
    let (page_id, page) = pages.into_iter().next().unwrap();
    assert!(patches.iter().all(|p| p.body["id"] == page_id.as_str()));
    let props = &page["properties"];
    assert_eq!(props["Status"]["select"]["name"], "SUCCEEDED");
    assert_eq!(
        props["Job ID"]["title"][0]["text"]["content"],
        job_id.to_string()
    );
    assert_eq!(props["Items"]["number"], 3);
    assert_eq!(props["Failed items"]["number"], 1);
    assert_eq!(props["Duration s"]["number"], 60.0);
    assert_eq!(props["Cost USD"]["number"], 0.0042);

    // The 429 was waited out for its Retry-After before the request went again.
    let notion_attempts: Vec<DateTime<Utc>> = s
        .mock
        .attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, svc)| *svc == "notion")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        notion_attempts[1] - notion_attempts[0] >= chrono::Duration::seconds(2),
        "retried {:?} after the 429",
        notion_attempts[1] - notion_attempts[0]
    );
    assert!(s.states.list(None).await.unwrap().is_empty());

    // Replaying the whole log posts nothing new.
    stop.send_replace(true);
    task.await.unwrap();
    let (calls, attempts) = (s.mock.call_count(), s.mock.attempts.lock().unwrap().len());
    for sink in ["slack-webhook", "slack-bot", "notion"] {
        s.store
            .save_checkpoint(&consumer_name(sink), 0)
            .await
            .unwrap();
    }
    let (stop, task) = s.start(s.notifier(true, true, true));
    s.wait_caught_up(&["slack-webhook", "slack-bot", "notion"])
        .await;
    stop.send_replace(true);
    task.await.unwrap();
    driver.abort();
    assert_eq!(s.mock.call_count(), calls, "a replay made calls");
    assert_eq!(
        s.mock.attempts.lock().unwrap().len(),
        attempts,
        "a replay sent requests"
    );
}

#[tokio::test]
async fn duplicated_and_reordered_deliveries_make_no_extra_calls() {
    let s = stack().await;
    let driver = drive(&s.clock);
    let notifier = s.notifier(true, true, true);
    let env = NotifyEnv {
        store: &s.store,
        states: &s.states,
        objects: &s.objects,
        clock: s.clock.as_ref(),
        link_ttl: Duration::from_secs(3600),
    };

    // In order, then every record again in a scrambled order with duplicates: nothing more.
    let job = s.life(Notify::default(), true).await;
    let events = s.store.load(job).await.unwrap();
    let mut cache = ViewCache::default();
    for sink in &notifier.sinks {
        for e in &events {
            notify_one(&env, sink, &mut cache, e).await.unwrap();
        }
    }
    let calls = s.mock.call_count();
    assert_eq!(
        calls,
        1 + (1 + 4) + (1 + 1 + 4),
        "webhook, bot, notion (query + create + 4 updates)"
    );
    for sink in &notifier.sinks {
        let mut cache = ViewCache::default();
        for i in [5, 0, 2, 2, 4, 1, 3, 5, 0] {
            let outcome = notify_one(&env, sink, &mut cache, &events[i])
                .await
                .unwrap();
            assert_eq!(
                outcome,
                Outcome::AlreadyDelivered,
                "{} v{}",
                sink.name(),
                i + 1
            );
        }
    }
    assert_eq!(s.mock.call_count(), calls, "duplicates made calls");

    // Out of order: a record older than the last one rendered is skipped, the page shows the latest.
    let job = s.life(Notify::default(), true).await;
    let events = s.store.load(job).await.unwrap();
    let bot = notifier
        .sinks
        .iter()
        .find(|k| k.name() == "slack-bot")
        .unwrap();
    let notion = notifier
        .sinks
        .iter()
        .find(|k| k.name() == "notion")
        .unwrap();
    for sink in [bot, notion] {
        let mut cache = ViewCache::default();
        let mut outcomes = Vec::new();
        for i in [0, 2, 1, 3, 5, 4] {
            outcomes.push(
                notify_one(&env, sink, &mut cache, &events[i])
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            outcomes[2],
            Outcome::AlreadyDelivered,
            "{}: v2 after v3",
            sink.name()
        );
        assert_eq!(
            outcomes[5],
            Outcome::AlreadyDelivered,
            "{}: v5 after v6",
            sink.name()
        );
        assert!(matches!(outcomes[4], Outcome::Delivered { .. }));
        let state: SinkState = s.states.get(sink.name(), job).await.unwrap();
        assert_eq!((state.last_version, state.message_version), (6, 6));
    }
    driver.abort();
    assert_eq!(s.mock.calls("chat.postMessage").len(), 2);
    assert_eq!(
        s.mock.calls("chat.update").len(),
        4 + 3,
        "second job: v3, v4, v6"
    );
    assert_eq!(s.mock.calls("POST /v1/pages").len(), 2);
    let pages = s.mock.notion_pages.lock().unwrap().clone();
    let page = pages
        .values()
        .find(|p| p["properties"]["Job ID"]["title"][0]["text"]["content"] == job.to_string())
        .unwrap();
    assert_eq!(page["properties"]["Status"]["select"]["name"], "SUCCEEDED");
    s.assert_clean();
}

#[tokio::test]
async fn a_failure_gets_one_threaded_reply_and_opted_out_jobs_get_no_slack() {
    let s = stack().await;
    let driver = drive(&s.clock);
    let (stop, task) = s.start(s.notifier(true, true, true));
    let failed = s.life(Notify::default(), false).await;
    let quiet = s
        .life(
            Notify {
                slack: false,
                notion: true,
            },
            true,
        )
        .await;
    s.wait_caught_up(&["slack-webhook", "slack-bot", "notion"])
        .await;
    // Deliver everything again: still one reply.
    for sink in ["slack-webhook", "slack-bot", "notion"] {
        s.store
            .save_checkpoint(&consumer_name(sink), 0)
            .await
            .unwrap();
    }
    stop.send_replace(true);
    task.await.unwrap();
    let (stop, task) = s.start(s.notifier(true, true, true));
    s.wait_caught_up(&["slack-webhook", "slack-bot", "notion"])
        .await;
    stop.send_replace(true);
    task.await.unwrap();
    driver.abort();
    s.assert_clean();

    let replies = s.mock.calls("reply");
    assert_eq!(replies.len(), 1);
    let ts = s
        .mock
        .slack_messages
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(replies[0].body["thread_ts"], ts.as_str());
    assert!(
        replies[0].body["text"]
            .as_str()
            .unwrap()
            .contains("model refused: content policy")
    );
    let hooks = s.mock.calls("webhook");
    assert_eq!(hooks.len(), 1, "only the failed job posts to the webhook");
    assert!(hooks[0].body.to_string().contains("*Reason*"));
    assert!(
        !s.mock
            .calls("chat.postMessage")
            .iter()
            .any(|c| c.body.to_string().contains(&quiet.to_string()))
    );
    assert_eq!(
        s.mock.calls("POST /v1/pages").len(),
        2,
        "Notion still logs the opted-out-of-Slack job"
    );
    let failed_page = s
        .mock
        .notion_pages
        .lock()
        .unwrap()
        .values()
        .find(|p| p["properties"]["Job ID"]["title"][0]["text"]["content"] == failed.to_string())
        .cloned()
        .unwrap();
    assert_eq!(
        failed_page["properties"]["Error"]["rich_text"][0]["text"]["content"],
        "model refused: content policy"
    );
}

#[tokio::test]
async fn an_ok_false_answer_is_dead_lettered_and_can_be_redriven() {
    let s = stack().await;
    s.mock.channel_missing.store(true, Ordering::SeqCst);
    let notifier = s.notifier(false, true, false);
    let (stop, task) = s.start(notifier.clone());
    let job = s.life(Notify::default(), true).await;
    s.wait_caught_up(&["slack-bot"]).await;
    stop.send_replace(true);
    task.await.unwrap();
    assert!(s.mock.calls.lock().unwrap().is_empty());

    // Slack answered HTTP 200 with ok:false: not retryable, so each notified record is listed at once.
    let letters = s.states.list(Some("slack-bot")).await.unwrap();
    assert_eq!(letters.len(), 5, "five status changes");
    assert!(
        letters
            .iter()
            .all(|l| l.job_id == job && l.tries == 1 && l.error.contains("channel_not_found"))
    );

    // Once the channel exists, a redrive of the last one posts the current state; older ones then
    // find the job already shown at a later version and leave the list without a call.
    s.mock.channel_missing.store(false, Ordering::SeqCst);
    let last = letters.last().unwrap();
    let outcome = notifier
        .redrive(&s.store, &s.states, &s.objects, last.id)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Delivered { calls: 1 });
    for l in &letters[..4] {
        let outcome = notifier
            .redrive(&s.store, &s.states, &s.objects, l.id)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::AlreadyDelivered);
    }
    assert!(s.states.list(None).await.unwrap().is_empty());
    let posts = s.mock.calls("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0].body["text"]
            .as_str()
            .unwrap()
            .contains("SUCCEEDED")
    );
    assert!(matches!(
        notifier.redrive(&s.store, &s.states, &s.objects, 999).await,
        Err(jobledger_handlers::notify::RedriveError::NotFound(999))
    ));
    s.assert_clean();
}

#[tokio::test]
async fn a_ten_minute_notion_outage_delays_notion_but_loses_nothing_and_blocks_no_one() {
    let s = stack().await;
    *s.mock.notion_down_until.lock().unwrap() = Some(t0() + chrono::Duration::minutes(10));
    let views = SqliteViewStore::open(s._dir.path().join("views.sqlite3")).unwrap();
    let (stop_projector, rx) = watch::channel(false);
    let projector = {
        let (store, views) = (s.store.clone(), views.clone());
        tokio::spawn(async move { run_projector(&store, &views, rx).await.unwrap() })
    };
    let (stop, task) = s.start(s.notifier(false, true, true));
    let job = s.life(Notify::default(), true).await;

    // The clock stands still: Notion is stuck on its first record while Slack and the projector finish.
    s.wait_caught_up(&["slack-bot"]).await;
    for _ in 0..1000 {
        if views
            .get(job)
            .await
            .unwrap()
            .is_some_and(|v| v.last_version == 6)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(views.get(job).await.unwrap().unwrap().last_version, 6);
    assert_eq!(s.mock.calls("chat.update").len(), 4);
    for _ in 0..1000 {
        if s.mock.attempts_of("notion") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.mock.attempts_of("notion") >= 1);
    assert!(!s.caught_up(&["notion"]).await);
    assert!(s.mock.notion_pages.lock().unwrap().is_empty());

    // Time runs: Notion comes back after ten minutes and gets everything, once.
    let driver = drive(&s.clock);
    s.wait_caught_up(&["notion"]).await;
    driver.abort();
    stop.send_replace(true);
    task.await.unwrap();
    stop_projector.send_replace(true);
    projector.await.unwrap();
    assert!(s.clock.now() >= t0() + chrono::Duration::minutes(10));
    assert!(
        s.states.list(None).await.unwrap().is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(s.mock.calls("POST /v1/pages").len(), 1);
    let pages = s.mock.notion_pages.lock().unwrap().clone();
    assert_eq!(pages.len(), 1);
    let page = pages.values().next().unwrap();
    assert_eq!(page["properties"]["Status"]["select"]["name"], "SUCCEEDED");
    assert!(
        s.mock.attempts_of("notion") > 10,
        "retried through the outage"
    );
    s.assert_clean();
}

#[tokio::test]
async fn the_state_store_never_goes_back_and_counts_dead_letter_tries() {
    let s = stack().await;
    let job = JobId::new();
    let newer = SinkState {
        last_version: 5,
        external_id: Some("ts".into()),
        message_version: 5,
        ..SinkState::default()
    };
    assert!(s.states.put("notion", job, &newer).await.unwrap());
    let older = SinkState {
        last_version: 3,
        ..newer.clone()
    };
    assert!(
        !s.states.put("notion", job, &older).await.unwrap(),
        "a late write must not win"
    );
    assert_eq!(s.states.get("notion", job).await.unwrap(), newer);
    assert_eq!(
        s.states.get("slack-bot", job).await.unwrap(),
        SinkState::default(),
        "state is per sink"
    );

    let letter = jobledger_handlers::notify::NewDeadLetter {
        sink: "notion".into(),
        job_id: job,
        version: 2,
        event_id: uuid::Uuid::now_v7(),
        seq: 7,
        error: "boom".into(),
        tries: 12,
        failed_at: t0(),
    };
    s.states.add(letter.clone()).await.unwrap();
    s.states
        .add(jobledger_handlers::notify::NewDeadLetter {
            error: "again".into(),
            tries: 1,
            ..letter
        })
        .await
        .unwrap();
    let listed = s.states.list(Some("notion")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].tries, listed[0].error.as_str()), (13, "again"));
    assert!(s.states.list(Some("slack-bot")).await.unwrap().is_empty());
    assert!(s.states.remove(listed[0].id).await.unwrap());
    assert!(!s.states.remove(listed[0].id).await.unwrap());
}

#[test]
fn configuration_comes_from_the_environment_and_never_prints_a_token() {
    let env: HashMap<&str, &str> = HashMap::from([
        (
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0/B0/webhooksecret",
        ),
        ("SLACK_BOT_TOKEN", "xoxb-supersecret"),
        ("SLACK_CHANNEL", "#jobs"),
        ("NOTION_TOKEN", "secret_notionsecret"),
        ("NOTION_DATABASE_ID", DB_ID),
        ("NOTIFY_SLACK_WEBHOOK_ON", "status"),
        ("NOTIFY_LINK_TTL_S", "3600"),
    ]);
    let config = NotifierConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    let printed = format!(
        "{config:?} {:?}",
        Notifier::from_config(&config, ManualClock::new()).unwrap()
    );
    for secret in ["webhooksecret", "supersecret", "notionsecret"] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    assert_eq!(
        config.webhook_on,
        jobledger_handlers::notify::NotifyOn::StatusChange
    );
    assert_eq!(config.link_ttl, Duration::from_secs(3600));
    assert_eq!(config.slack_bot.unwrap().api_base, "https://slack.com/api");

    let missing =
        NotifierConfig::from_lookup(|k| (k == "SLACK_BOT_TOKEN").then(|| "xoxb-x".to_string()));
    assert!(matches!(
        missing,
        Err(ConfigError::Missing {
            var: "SLACK_CHANNEL",
            ..
        })
    ));
    let bad =
        NotifierConfig::from_lookup(|k| (k == "NOTIFY_NOTION_ON").then(|| "sometimes".to_string()));
    assert!(matches!(
        bad,
        Err(ConfigError::Invalid {
            var: "NOTIFY_NOTION_ON",
            ..
        })
    ));
    let nothing = NotifierConfig::from_lookup(|_| None).unwrap();
    assert!(nothing.is_empty());
    let console = Notifier::from_config(&nothing, ManualClock::new()).unwrap();
    assert_eq!(
        console.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
        vec!["console"]
    );
}
