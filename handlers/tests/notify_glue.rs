//! The `notifier` Lambda's glue (`glue::notify_stream`) with DynamoDB stream batches built from a
//! real ledger (items as `DynamoEventStore` writes them, decoded by `DynamoEventStore` itself),
//! against local Slack and Notion servers: each sink on its own, partial batch failures from the
//! earliest record a sink must see again, dead letters after N tries, and redrive.
#![cfg(feature = "aws")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use chrono::{DateTime, TimeZone, Utc};
use jobledger_events::dynamo::event_item;
use jobledger_events::testing::running_job;
use jobledger_events::{DynamoEventStore, RecordedEvent, SqliteEventStore};
use jobledger_handlers::aws::config::{ConfigError, NotifierLambdaConfig};
use jobledger_handlers::aws::glue::notify_stream;
use jobledger_handlers::notify::clock::Sleep;
use jobledger_handlers::notify::config::{NotionConfig, RetryPolicy, SlackBotConfig};
use jobledger_handlers::notify::{
    DeadLetterStore, HttpRetry, Notifier, NotifierConfig, NotifyClock, NotifyStateStore, Outcome,
    Secret, SqliteNotifyStore,
};
use jobledger_testsupport::moto;
use jobledger_testsupport::streams::item_image;
use jobledger_workers::FsObjectStore;
use serde_json::{Value, json};

const BOT_TOKEN: &str = "xoxb-glue-token";
const NOTION_TOKEN: &str = "ntn_glue_token";
const DB_ID: &str = "5c6d7e8f-0000-4000-8000-00000000d00d";

// ---------------------------------------------------------------- a clock that never waits

/// Sleeping moves "now" forward at once, so backoff and Notion's rate limit cost no real time.
struct FastClock(Mutex<DateTime<Utc>>);

impl NotifyClock for FastClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }

    fn sleep(&self, d: Duration) -> Sleep {
        *self.0.lock().expect("clock") += chrono::Duration::from_std(d).expect("duration");
        Box::pin(std::future::ready(()))
    }
}

// ---------------------------------------------------------------- Slack and Notion stand-ins

#[derive(Default)]
struct Mock {
    /// Accepted calls: `chat.postMessage`, `chat.update`, `query`, `create`, `update`.
    calls: Mutex<Vec<(String, Value)>>,
    /// Requests that broke the documented API (auth, headers, shape).
    violations: Mutex<Vec<String>>,
    /// Slack answers 500 once this many calls have been accepted (`usize::MAX`: never).
    slack_ok_calls: AtomicUsize,
    /// Notion answers 503 while set.
    notion_down: AtomicBool,
    /// Notion refuses every write with a 400 `validation_error` while set.
    notion_invalid: AtomicBool,
    next_id: AtomicU32,
}

impl Mock {
    fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|(w, _)| w == what)
            .count()
    }

    fn total(&self) -> usize {
        self.calls.lock().expect("calls").len()
    }

    fn violation(&self, v: String) {
        self.violations.lock().expect("violations").push(v);
    }

    fn last(&self, what: &str) -> Value {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .rev()
            .find(|(w, _)| w == what)
            .map(|(_, b)| b.clone())
            .unwrap_or(Value::Null)
    }
}

fn bearer(m: &Mock, headers: &HeaderMap, token: &str) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(format!("Bearer {token}").as_str()) {
        m.violation(format!("bad authorization header {auth:?}"));
    }
}

async fn slack(
    State(m): State<Arc<Mock>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    bearer(&m, &headers, BOT_TOKEN);
    if m.total_slack() >= m.slack_ok_calls.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"ok": false, "error": "internal_error"})),
        )
            .into_response();
    }
    if body["channel"].as_str().is_none() || body["text"].as_str().is_none() {
        m.violation(format!("{method} without channel or text: {body}"));
    }
    let ts = match method.as_str() {
        "chat.postMessage" => format!("1700000000.{:06}", m.next_id.fetch_add(1, Ordering::SeqCst)),
        "chat.update" => body["ts"].as_str().unwrap_or_default().to_string(),
        other => {
            m.violation(format!("unexpected Slack method {other}"));
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    m.calls.lock().expect("calls").push((method, body));
    axum::Json(json!({"ok": true, "channel": "C0GLUE", "ts": ts})).into_response()
}

impl Mock {
    fn total_slack(&self) -> usize {
        self.count("chat.postMessage") + self.count("chat.update")
    }
}

fn notion_gate(m: &Mock, headers: &HeaderMap) -> Option<Response> {
    bearer(m, headers, NOTION_TOKEN);
    if headers.get("notion-version").is_none() {
        m.violation("Notion request without Notion-Version".into());
    }
    if m.notion_down.load(Ordering::SeqCst) {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"object": "error", "status": 503,
                    "code": "service_unavailable", "message": "Notion is unavailable"})),
            )
                .into_response(),
        );
    }
    None
}

fn invalid() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!({"object": "error", "status": 400, "code": "validation_error",
            "message": "Status is not a property that exists."}),
        ),
    )
        .into_response()
}

async fn notion_query(
    State(m): State<Arc<Mock>>,
    Path(db): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    if db != DB_ID {
        m.violation(format!("query of database {db}"));
    }
    m.calls.lock().expect("calls").push(("query".into(), body));
    axum::Json(json!({"object": "list", "results": [], "has_more": false, "next_cursor": null}))
        .into_response()
}

async fn notion_create(
    State(m): State<Arc<Mock>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    if m.notion_invalid.load(Ordering::SeqCst) {
        return invalid();
    }
    if body["parent"]["database_id"] != DB_ID {
        m.violation(format!("page created outside the database: {body}"));
    }
    let id = format!(
        "00000000-0000-4000-8000-{:012}",
        m.next_id.fetch_add(1, Ordering::SeqCst)
    );
    m.calls.lock().expect("calls").push(("create".into(), body));
    axum::Json(json!({"object": "page", "id": id})).into_response()
}

async fn notion_update(
    State(m): State<Arc<Mock>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = notion_gate(&m, &headers) {
        return r;
    }
    if m.notion_invalid.load(Ordering::SeqCst) {
        return invalid();
    }
    m.calls.lock().expect("calls").push(("update".into(), body));
    axum::Json(json!({"object": "page", "id": id})).into_response()
}

async fn serve() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock {
        slack_ok_calls: AtomicUsize::new(usize::MAX),
        ..Mock::default()
    });
    let app = Router::new()
        .route("/slack/{method}", post(slack))
        .route("/notion/v1/databases/{db}/query", post(notion_query))
        .route("/notion/v1/pages", post(notion_create))
        .route("/notion/v1/pages/{id}", patch(notion_update))
        .with_state(Arc::clone(&mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (mock, url)
}

// ---------------------------------------------------------------- stream batches from a ledger

/// The sequence number of the stream record of `event` (stream order = ledger order here).
fn seq(event: &RecordedEvent) -> String {
    format!("{}00", event.version)
}

/// A Lambda stream event with one `INSERT` per event, as the events table's stream delivers it.
fn batch(events: &[&RecordedEvent]) -> StreamEvent {
    let records: Vec<Value> = events
        .iter()
        .map(|e| {
            let item = event_item(e).expect("item");
            json!({
                "eventID": format!("ev-{}", e.version),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1764046800,
                    "Keys": {"job_id": {"S": e.job_id.to_string()}, "version": {"N": e.version.to_string()}},
                    "NewImage": item_image(&item),
                    "SequenceNumber": seq(e),
                    "SizeBytes": 512,
                    "StreamViewType": "NEW_IMAGE",
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2025-01-01T00:00:00.000",
            })
        })
        .collect();
    serde_json::from_value(json!({"Records": records})).expect("stream event")
}

/// `DynamoEventStore` as the Lambda's image decoder. Its clients are never called for inline
/// payloads: they point at a port nothing listens on.
fn decoder() -> DynamoEventStore {
    let nowhere = "http://127.0.0.1:9";
    DynamoEventStore::events_only(
        moto::dynamo_client(nowhere),
        moto::s3_client(nowhere),
        "events",
    )
}

fn failures(response: &DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect()
}

struct Stack {
    _dir: tempfile::TempDir,
    mock: Arc<Mock>,
    store: SqliteEventStore,
    states: SqliteNotifyStore,
    objects: FsObjectStore,
    decoder: DynamoEventStore,
    notifier: Notifier,
    events: Vec<RecordedEvent>,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mock, url) = serve().await;
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).expect("ledger");
    // SUBMITTED → QUEUED → LAUNCHING → RUNNING: four status changes.
    let (_, events) = running_job(&store).await;
    let config = NotifierConfig {
        slack_bot: Some(SlackBotConfig {
            token: Secret::new(BOT_TOKEN),
            channel: "#jobs".into(),
            api_base: format!("{url}/slack"),
        }),
        notion: Some(NotionConfig {
            token: Secret::new(NOTION_TOKEN),
            database_id: DB_ID.into(),
            api_base: format!("{url}/notion"),
        }),
        retry: RetryPolicy {
            max_tries: 3,
            ..RetryPolicy::default()
        },
        http: HttpRetry {
            tries: 2,
            ..HttpRetry::default()
        },
        ..NotifierConfig::default()
    };
    let clock = Arc::new(FastClock(Mutex::new(
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("t0"),
    )));
    Stack {
        mock,
        states: SqliteNotifyStore::open(dir.path().join("notify.sqlite3")).expect("states"),
        objects: FsObjectStore::new(dir.path().join("objects")).expect("objects"),
        decoder: decoder(),
        notifier: Notifier::from_config(&config, clock).expect("notifier"),
        store,
        events,
        _dir: dir,
    }
}

impl Stack {
    async fn deliver(&self, event: &StreamEvent) -> Vec<String> {
        let (response, _) = notify_stream(
            &self.decoder,
            &self.store,
            &self.states,
            &self.objects,
            &self.notifier,
            event,
        )
        .await;
        failures(&response)
    }

    fn all(&self) -> StreamEvent {
        batch(&self.events.iter().collect::<Vec<_>>())
    }

    fn ids(&self, from: usize) -> Vec<String> {
        self.events[from..].iter().map(seq).collect()
    }

    fn assert_clean(&self) {
        let v = self.mock.violations.lock().expect("violations");
        assert!(v.is_empty(), "API violations: {v:?}");
    }
}

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn a_batch_reaches_both_sinks_once_and_redeliveries_in_any_order_change_nothing() {
    let s = stack().await;
    assert!(s.deliver(&s.all()).await.is_empty());
    let m = &s.mock;
    assert_eq!(
        (m.count("chat.postMessage"), m.count("chat.update")),
        (1, 3)
    );
    assert_eq!(
        (m.count("query"), m.count("create"), m.count("update")),
        (1, 1, 3)
    );
    assert_eq!(
        m.last("update")["properties"]["Status"]["select"]["name"],
        "RUNNING"
    );
    let calls = m.total();

    // The stream delivers at least once: the same batch, then the records reversed.
    assert!(s.deliver(&s.all()).await.is_empty());
    let reversed: Vec<&RecordedEvent> = s.events.iter().rev().collect();
    assert!(s.deliver(&batch(&reversed)).await.is_empty());
    assert_eq!(m.total(), calls, "duplicates and old records make no calls");
    assert_eq!(
        s.states
            .get("notion", s.events[0].job_id)
            .await
            .expect("state")
            .last_version,
        4
    );
    s.assert_clean();
}

#[tokio::test]
async fn a_failing_sink_is_reported_from_its_first_failed_record_and_blocks_no_other_sink() {
    let s = stack().await;
    // Slack takes the post and one update, then answers 500.
    s.mock.slack_ok_calls.store(2, Ordering::SeqCst);
    let failed = s.deliver(&s.all()).await;
    assert_eq!(failed, s.ids(2), "from Slack's first failed record on");
    assert_eq!(
        s.mock.count("create") + s.mock.count("update"),
        4,
        "Notion got every record"
    );

    // Slack is back: Lambda delivers the reported records again.
    s.mock.slack_ok_calls.store(usize::MAX, Ordering::SeqCst);
    let again = batch(&s.events[2..].iter().collect::<Vec<_>>());
    assert!(s.deliver(&again).await.is_empty());
    assert_eq!(s.mock.count("chat.postMessage"), 1, "one live message");
    assert_eq!(s.mock.count("chat.update"), 3);
    assert_eq!(
        s.mock.count("create") + s.mock.count("update"),
        4,
        "Notion not called again"
    );
    assert!(s.states.list(None).await.expect("list").is_empty());
    s.assert_clean();
}

#[tokio::test]
async fn a_record_failing_max_tries_times_is_dead_lettered_not_reported_and_can_be_redriven() {
    let s = stack().await;
    s.mock.notion_down.store(true, Ordering::SeqCst);
    // Each record gets three tries (one per delivery), then goes to the dead-letter list and
    // Lambda is told to move on past it: it delivers again from the first reported record.
    let mut pending: Vec<&RecordedEvent> = s.events.iter().collect();
    let mut reported = Vec::new();
    for _ in 0..20 {
        let failed = s.deliver(&batch(&pending)).await;
        reported.push(failed.len());
        if failed.is_empty() {
            break;
        }
        pending.retain(|e| failed.contains(&seq(e)));
    }
    assert_eq!(reported, [4, 4, 3, 3, 2, 2, 1, 1, 0]);
    assert_eq!(
        s.mock.total_slack(),
        4,
        "Slack delivered everything on the first try"
    );
    let letters = s.states.list(Some("notion")).await.expect("list");
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.version, l.tries))
            .collect::<Vec<_>>(),
        [(1, 3), (2, 3), (3, 3), (4, 3)]
    );
    assert!(letters[0].error.contains("503"), "{}", letters[0].error);
    assert!(
        s.states
            .list(Some("slack-bot"))
            .await
            .expect("list")
            .is_empty()
    );

    // Notion is back: the operator redrives, oldest first; the page is made once, then updated.
    s.mock.notion_down.store(false, Ordering::SeqCst);
    for letter in &letters {
        let outcome = s
            .notifier
            .redrive(&s.store, &s.states, &s.objects, letter.id)
            .await
            .expect("redrive");
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    }
    assert_eq!((s.mock.count("create"), s.mock.count("update")), (1, 3));
    assert!(s.states.list(None).await.expect("list").is_empty());
    s.assert_clean();
}

#[tokio::test]
async fn a_refused_request_is_dead_lettered_at_once() {
    let s = stack().await;
    s.mock.notion_invalid.store(true, Ordering::SeqCst);
    let first = batch(&[&s.events[0]]);
    assert!(
        s.deliver(&first).await.is_empty(),
        "retrying cannot fix a 400: not reported"
    );
    let letters = s.states.list(Some("notion")).await.expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].version, letters[0].tries), (1, 1));
    assert!(letters[0].error.contains("validation_error"));
    assert_eq!(s.mock.count("chat.postMessage"), 1);
    s.assert_clean();
}

#[test]
fn the_lambda_reads_its_settings_from_the_contract_variables() {
    let base = [
        ("EVENTS_TABLE", "events"),
        ("NOTIFIER_STATE_TABLE", "notifier-state"),
        ("RESULTS_BUCKET", "results"),
        // Terraform always sets both ARNs; a sink is on only when its target is set.
        ("SLACK_SECRET_ARN", "arn:slack"),
        ("NOTION_SECRET_ARN", "arn:notion"),
        ("SLACK_CHANNEL", ""),
        ("NOTION_DATABASE_ID", ""),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let env: HashMap<&str, &str> = base.iter().chain(extra).copied().collect();
        NotifierLambdaConfig::from_lookup(|k| env.get(k).map(|v| v.to_string()))
    };
    let off = with(&[]).expect("config");
    assert!(off.slack.is_none() && off.notion.is_none());
    assert_eq!(
        off.notify.retry.max_tries, 3,
        "below the stream's 5 retries"
    );
    assert_eq!(off.notifier_state_table, "notifier-state");

    let on = with(&[
        ("SLACK_CHANNEL", "C0JOBS"),
        ("NOTION_DATABASE_ID", DB_ID),
        ("NOTIFY_MAX_TRIES", "4"),
    ])
    .expect("config");
    assert_eq!(on.slack.expect("slack").secret_arn, "arn:slack");
    assert_eq!(on.notion.expect("notion").database_id, DB_ID);
    assert_eq!(on.notify.retry.max_tries, 4);
    assert!(
        on.notify.is_empty(),
        "tokens only come from Secrets Manager"
    );

    let env: HashMap<&str, &str> = HashMap::from([
        ("EVENTS_TABLE", "events"),
        ("NOTIFIER_STATE_TABLE", "state"),
        ("RESULTS_BUCKET", "results"),
        ("SLACK_CHANNEL", "C0JOBS"),
    ]);
    assert_eq!(
        NotifierLambdaConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())),
        Err(ConfigError::Missing("SLACK_SECRET_ARN"))
    );
    assert!(matches!(
        with(&[("NOTIFY_NOTION_ON", "sometimes")]),
        Err(ConfigError::Invalid {
            name: "NOTIFY_NOTION_ON",
            ..
        })
    ));
    let no_table: HashMap<&str, &str> = HashMap::from([("EVENTS_TABLE", "events")]);
    assert_eq!(
        NotifierLambdaConfig::from_lookup(|k| no_table.get(k).map(|v| v.to_string())),
        Err(ConfigError::Missing("NOTIFIER_STATE_TABLE"))
    );
}
