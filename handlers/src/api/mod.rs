//! The HTTP API: one axum [`Router`] serving every route of DESIGN.md, the same on Lambda and locally.
//!
//! ```text
//! POST /jobs                  submit (Idempotency-Key)      GET /jobs/{id}          read (own writes included)
//! GET  /jobs/{id}/events      history, ?after=&limit=       GET /jobs/{id}/result   presigned URL
//! POST /jobs/{id}/cancel      cancel                        POST /jobs/{id}/retry   manual retry
//! GET  /jobs?status=&kind=&limit=&cursor=                   GET /health, GET /openapi.json (no key)
//! ```
//!
//! Locally: `axum::serve(listener, api::router(state))`. On Lambda: `lambda_http::run(api::router(state))`
//! with [`Authenticator::Gateway`], the binary copying the gateway's `apiKeyId` into a [`GatewayKeyId`]
//! request extension. Every error goes through [`ApiError`] (see `error.rs`), the one mapping to HTTP.

mod auth;
mod error;
mod jobs;
mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use jobledger_events::EventStore;
use jobledger_projections::store::ViewStore;
use jobledger_workers::ObjectStore;

pub use auth::{
    API_KEY_HEADER, ApiKeys, Authenticator, Caller, GatewayKeyId, KeyConfigError, MIN_SECRET_LEN,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use jobs::{
    Accepted, CancelRequest, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, EventsPage,
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER, JobsPage, Links, ResultLink, SOURCE_HEADER,
    SubmitRequest, fingerprint,
};
pub use openapi::{API_KEY_SCHEME, ApiDoc, JOB_KIND_SCHEMA, STATUS_SCHEMA};

/// The header carrying the request (correlation) id, read from the request or generated, and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The largest body accepted by default: a 256 KiB inline batch with room for JSON escaping and
/// metadata fits; anything larger belongs in the object store (`input_uri`).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The clock at the edge: every command's `now` comes from it (tests pass a fixed one).
pub type NowFn = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Limits and defaults of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest request body, bytes; larger is 413.
    pub body_limit: usize,
    /// How long a result URL works.
    pub result_url_ttl: Duration,
    /// Events per page when `limit` is not given.
    pub events_page_default: usize,
    /// Largest `limit` of `GET /jobs/{id}/events`.
    pub events_page_max: usize,
    /// Jobs per page when `limit` is not given.
    pub jobs_page_default: usize,
    /// Largest `limit` of `GET /jobs`.
    pub jobs_page_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            body_limit: DEFAULT_BODY_LIMIT,
            result_url_ttl: Duration::from_secs(15 * 60),
            events_page_default: 100,
            events_page_max: 1000,
            jobs_page_default: 50,
            jobs_page_max: 100,
        }
    }
}

/// Everything the API needs: the ledger, the read model, the object store, auth, a clock and limits.
pub struct ApiState<S, V, O> {
    /// The ledger (commands append here; reads of one job check it).
    pub events: S,
    /// The read model (`GET /jobs`, and `GET /jobs/{id}` once caught up).
    pub views: V,
    /// Where results are, for presigned URLs.
    pub objects: O,
    /// Who is calling.
    pub auth: Authenticator,
    /// The clock.
    pub now: NowFn,
    /// Limits and defaults.
    pub config: ApiConfig,
}

impl<S, V, O> ApiState<S, V, O> {
    /// A state with the system clock and default limits.
    pub fn new(events: S, views: V, objects: O, auth: Authenticator) -> Self {
        ApiState {
            events,
            views,
            objects,
            auth,
            now: Arc::new(Utc::now),
            config: ApiConfig::default(),
        }
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.now = Arc::new(now);
        self
    }

    /// Replaces the limits.
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.config = config;
        self
    }
}

/// The request's correlation id (from `x-request-id` if usable, else a fresh UUID v7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A client's request id is used if it is 1–128 visible ASCII characters: it goes into the ledger.
fn usable_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(usable_request_id)
        .unwrap_or_else(|| jobledger_events::ids::new_event_id().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn require_caller<S, V, O>(
    State(state): State<Arc<ApiState<S, V, O>>>,
    req: Request,
    next: Next,
) -> Response
where
    S: Send + Sync + 'static,
    V: Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    let (mut parts, body) = req.into_parts();
    match state.auth.authenticate(&parts) {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /openapi.json",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// The router and its OpenAPI document, built from the same route table.
pub fn router_and_openapi<S, V, O>(state: ApiState<S, V, O>) -> (Router, utoipa::openapi::OpenApi)
where
    S: EventStore + 'static,
    V: ViewStore + 'static,
    O: ObjectStore + 'static,
{
    let state = Arc::new(state);
    let authenticated = openapi::DocumentedRouter::new("jobs")
        .route::<jobs::__path_submit_job, _, _>(jobs::submit_job::<S, V, O>)
        .route::<jobs::__path_list_jobs, _, _>(jobs::list_jobs::<S, V, O>)
        .route::<jobs::__path_get_job, _, _>(jobs::get_job::<S, V, O>)
        .route::<jobs::__path_job_events, _, _>(jobs::job_events::<S, V, O>)
        .route::<jobs::__path_job_result, _, _>(jobs::job_result::<S, V, O>)
        .route::<jobs::__path_cancel_job, _, _>(jobs::cancel_job::<S, V, O>)
        .route::<jobs::__path_retry_job, _, _>(jobs::retry_job::<S, V, O>)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_caller::<S, V, O>,
        ));
    let open = openapi::DocumentedRouter::new("service")
        .route::<jobs::__path_health, _, _>(jobs::health)
        .route::<jobs::__path_openapi_json, _, _>(jobs::openapi_json);
    let (router, doc) = authenticated.merge(open).into_parts();
    // Serializing a document of plain strings and maps cannot fail; an empty body would show if it did.
    let json = doc.to_json().unwrap_or_default();
    let router = router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
        .layer(axum::Extension(jobs::OpenApiJson(json.into())))
        .layer(middleware::from_fn(request_id))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    (router, doc)
}

/// The API's router: serve it with `axum::serve` or `lambda_http::run`.
pub fn router<S, V, O>(state: ApiState<S, V, O>) -> Router
where
    S: EventStore + 'static,
    V: ViewStore + 'static,
    O: ObjectStore + 'static,
{
    router_and_openapi(state).0
}
