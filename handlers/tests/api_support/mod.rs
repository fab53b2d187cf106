//! Shared harness of the API tests: real SQLite ledger and view store, a filesystem object store,
//! a fixed clock, and helpers to drive the router with `oneshot`.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt;
use jobledger_events::envelope::RecordedEvent;
use jobledger_events::{ChangeFeed, EventStore, JobId, SqliteEventStore};
use jobledger_handlers::api::{self, ApiKeys, ApiState, Authenticator};
use jobledger_projections::{JobView, SqliteViewStore, ViewStore};
use jobledger_workers::FsObjectStore;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The secret of the `ci` key.
pub const KEY: &str = "ci-secret-0123456789";
/// The secret of the `other` key.
pub const OTHER_KEY: &str = "other-secret-0123456789";

/// The fixed time every command is recorded at.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

/// A router over fresh stores in a temp dir, and handles on those stores to check what it wrote.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub events: SqliteEventStore,
    pub views: SqliteViewStore,
    pub objects: FsObjectStore,
    pub router: Router,
}

/// An answer, with its body parsed as JSON (`Null` when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// `error.message` of an error answer.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `ci` and `other` keys.
pub fn keys() -> ApiKeys {
    ApiKeys::new([("ci", KEY), ("other", OTHER_KEY)]).unwrap()
}

impl Harness {
    /// A harness with default limits.
    pub fn new() -> Self {
        Self::with_config(api::ApiConfig::default())
    }

    /// A harness with the given limits.
    pub fn with_config(config: api::ApiConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
        let views = SqliteViewStore::open(dir.path().join("views.db")).unwrap();
        let objects = FsObjectStore::new(dir.path().join("objects")).unwrap();
        let state = ApiState::new(
            events.clone(),
            views.clone(),
            objects.clone(),
            Authenticator::Keys(keys()),
        )
        .with_clock(now)
        .with_config(config);
        let router = api::router(state);
        Harness {
            dir,
            events,
            views,
            objects,
            router,
        }
    }

    /// Sends a request with the `ci` key.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let req = request(method, uri)
            .header("x-api-key", KEY)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        self.send(req).await
    }

    /// Sends a request as built.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Submits a job with the `ci` key and returns its id.
    pub async fn submit(&self, body: Value) -> JobId {
        let r = self.call(Method::POST, "/jobs", Some(body)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        r.body["job_id"].as_str().unwrap().parse().unwrap()
    }

    /// Every event in the ledger, all jobs.
    pub async fn ledger(&self) -> Vec<RecordedEvent> {
        self.events
            .read_after(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.event)
            .collect()
    }

    /// One job's history.
    pub async fn history(&self, job_id: JobId) -> Vec<RecordedEvent> {
        self.events.load(job_id).await.unwrap()
    }

    /// Does what the projector does for one job: folds its history and stores the view.
    pub async fn project(&self, job_id: JobId) {
        let view = JobView::fold(&self.history(job_id).await).unwrap().unwrap();
        self.views.upsert(&view).await.unwrap();
    }
}

/// A request builder with a JSON content type.
pub fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
}

/// A valid submission of two inline items.
pub fn job(kind: &str) -> Value {
    json!({
        "kind": kind,
        "items": [{"id": "post-1", "text": "Hello"}, {"id": "post-2", "html": "<p>Hi</p>"}],
    })
}
