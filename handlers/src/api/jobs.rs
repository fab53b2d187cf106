//! The job routes: submit, read, history, result, cancel, retry, list; plus health and the document.
//!
//! Each handler turns the request into a command or a query, and every failure into an [`ApiError`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use jobledger_events::envelope::RecordedEvent;
use jobledger_events::execute::fold;
use jobledger_events::spec::{FieldError, Item, JobInput, Notify, validate_idempotency_key};
use jobledger_events::{
    Command, CommandContext, EventStore, ExecuteError, IdempotencyRecord, JobId, JobKind, JobSpec,
    Status, StoreError, execute,
};
use jobledger_projections::JobView;
use jobledger_projections::store::{ListQuery, ViewStore};
use jobledger_workers::ObjectStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::{ApiState, RequestId};

/// Header of an idempotent submission.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Set to `true` on a submission answered from an earlier one with the same key.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";
/// Tells whether `GET /jobs/{id}` was served by the read model (`view`) or folded from the ledger (`ledger`).
pub const SOURCE_HEADER: &str = "x-jobledger-source";

/// Attempts when a submission does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Attempt timeout when a submission does not say, seconds.
pub const DEFAULT_TIMEOUT_S: u32 = 3600;
/// Longest cancel reason, characters.
pub const MAX_REASON_CHARS: usize = 1000;

type Shared<S, V, O> = State<Arc<ApiState<S, V, O>>>;

/// `POST /jobs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// One of `image_alt`, `meta_description`, `content_analysis`, `noop`.
    #[schema(value_type = super::openapi::schemas::JobKindDoc)]
    pub kind: String,
    /// Inline items (at most 10,000 and 256 KiB as JSON). Give `items` or `input_uri`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::openapi::schemas::ItemDoc>>)]
    pub items: Option<Vec<Item>>,
    /// `s3://bucket/items.jsonl` (one item per line). Give `items` or `input_uri`.
    #[serde(default)]
    pub input_uri: Option<String>,
    /// Attempts that may fail before the job fails, 1–10.
    #[serde(default = "default_max_attempts")]
    #[schema(default = 3, minimum = 1, maximum = 10)]
    pub max_attempts: u32,
    /// Wall-clock limit of one attempt, 60–86,400 seconds.
    #[serde(default = "default_timeout_s")]
    #[schema(default = 3600, minimum = 60, maximum = 86400)]
    pub timeout_s: u32,
    /// Higher runs first where a backend can order work.
    #[serde(default)]
    #[schema(default = 0)]
    pub priority: i32,
    /// Notification sinks (both default to true).
    #[serde(default)]
    #[schema(value_type = super::openapi::schemas::NotifyDoc)]
    pub notify: Notify,
    /// Free-form metadata, at most 2 KiB as JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Most model tokens (input + output) the whole job may use, 1–10,000,000; once spent, the
    /// remaining items fail with that reason. No limit when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000000)]
    pub max_tokens: Option<u64>,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

fn default_timeout_s() -> u32 {
    DEFAULT_TIMEOUT_S
}

/// `POST /jobs/{id}/cancel` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why (recorded in `CancelRequested`; at most 1,000 characters).
    pub reason: Option<String>,
}

/// Links of a job.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Links {
    /// `/jobs/{id}`.
    #[serde(rename = "self")]
    pub self_: String,
    /// `/jobs/{id}/events`.
    pub events: String,
}

/// 202 answer of submit, cancel and retry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its status after the command.
    #[schema(value_type = super::openapi::schemas::StatusDoc)]
    pub status: Status,
    /// Where to read it.
    pub links: Links,
}

impl Accepted {
    fn new(job_id: JobId, status: Status) -> Self {
        Accepted {
            job_id,
            status,
            links: Links {
                self_: format!("/jobs/{job_id}"),
                events: format!("/jobs/{job_id}/events"),
            },
        }
    }

    fn respond(self) -> Response {
        let location = HeaderValue::from_str(&self.links.self_).ok();
        let mut response = (StatusCode::ACCEPTED, Json(self)).into_response();
        if let Some(location) = location {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// A page of a job's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Envelopes in version order.
    #[schema(value_type = Vec<super::openapi::schemas::EventDoc>)]
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of jobs, most recently updated first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsPage {
    /// The jobs.
    #[schema(value_type = Vec<super::openapi::schemas::JobViewDoc>)]
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Where to download a job's results.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultLink {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// A URL to download the results (JSONL) from, until `expires_at`.
    pub url: String,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
    /// The stored result's URI.
    pub result_uri: String,
    /// SHA-256 (hex) of the results, to check the download.
    pub result_sha256: Option<String>,
}

/// `GET /health` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: &'static str,
}

/// Query of `GET /jobs/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only events after this version (the previous page's `next_cursor`); default 0.
    pub after: Option<u64>,
    /// Page size, 1–1000; default 100.
    pub limit: Option<usize>,
}

/// Query of `GET /jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this status, e.g. `RUNNING`.
    pub status: Option<String>,
    /// Only jobs of this kind, e.g. `image_alt`.
    pub kind: Option<String>,
    /// Page size, 1–100; default 50.
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request("invalid_job_id", format!("job id {raw:?} is not a UUID"))
    })
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", e.body_text())
}

/// Reads the body up to `limit` bytes; over it is 413 (checked on `Content-Length` before reading).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::payload_too_large(limit);
            }
            source = err.source();
        }
        ApiError::bad_request(
            "unreadable_body",
            format!("could not read the request body: {e}"),
        )
    })
}

fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })
}

/// SHA-256 (hex) of the body's canonical (RFC 8785) JSON: key order and spacing do not matter.
pub fn fingerprint(body: &serde_json::Value) -> String {
    let canonical = jobledger_events::chain::canonical_json(body);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn allowed_kinds() -> String {
    JobKind::ALL
        .iter()
        .map(JobKind::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spec of a submission, with the API's defaults; every invalid field at once.
fn build_spec(
    req: SubmitRequest,
    idempotency_key: Option<String>,
    mut errors: Vec<FieldError>,
) -> Result<JobSpec, ApiError> {
    let kind = JobKind::parse(&req.kind);
    if kind.is_none() {
        errors.push(field(
            "kind",
            format!(
                "unknown kind {:?} (allowed kinds: {})",
                req.kind,
                allowed_kinds()
            ),
        ));
    }
    let input = match (req.items, req.input_uri) {
        (Some(items), None) => Some(JobInput::Items { items }),
        (None, Some(input_uri)) => Some(JobInput::Uri { input_uri }),
        (Some(_), Some(_)) => {
            errors.push(field(
                "input_uri",
                "give either items or input_uri, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(field(
                "items",
                "give the items inline, or their location as input_uri",
            ));
            None
        }
    };
    let Some(input) = input else {
        return Err(ApiError::invalid_fields(errors));
    };
    let spec = JobSpec {
        // A stand-in while other fields are checked; never used when the kind is unknown.
        kind: kind.unwrap_or(JobKind::Noop),
        input,
        max_attempts: req.max_attempts,
        timeout_s: req.timeout_s,
        priority: req.priority,
        notify: req.notify,
        metadata: req.metadata,
        idempotency_key,
        max_tokens: req.max_tokens,
    };
    if let Err(mut more) = spec.validate() {
        errors.append(&mut more);
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, FieldError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| field("Idempotency-Key", "must be printable ASCII (0x20 to 0x7e)"))?;
    validate_idempotency_key(key).map_err(|m| field("Idempotency-Key", m))?;
    Ok(Some(key.to_string()))
}

fn context(caller: &Caller, request_id: &RequestId, now: DateTime<Utc>) -> CommandContext {
    CommandContext {
        actor: caller.actor(),
        correlation_id: request_id.0.clone(),
        // An API command is caused by the request itself.
        causation_id: request_id.0.clone(),
        now,
        idempotency: None,
    }
}

/// Submit a job.
#[utoipa::path(
    post, path = "/jobs",
    request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1–128 printable ASCII characters. The same key with the same body returns the original job; with another body, 422.")),
    responses(
        (status = 202, description = "Accepted (or replayed, with `Idempotent-Replayed: true`)", body = Accepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "Invalid fields, unknown kind, or an Idempotency-Key reused with another body", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn submit_job<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.config.body_limit).await?;
    let value = parse_json(&bytes)?;
    let fingerprint = fingerprint(&value);
    let req: SubmitRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(
            "invalid_request",
            format!("request body does not fit the job schema: {e}"),
        )
    })?;
    let (key, header_errors) = match idempotency_key(&headers) {
        Ok(key) => (key, Vec::new()),
        Err(e) => (None, vec![e]),
    };
    let spec = build_spec(req, key.clone(), header_errors)?;
    let scope = key.map(|k| format!("{}#{k}", caller.key_id));
    if let Some(scope) = &scope
        && let Some(existing) = state.events.idempotency(scope).await?
    {
        return replay(&state.events, existing, &fingerprint).await;
    }
    let now = (state.now)();
    let job_id = JobId::new();
    let mut ctx = context(&caller, &request_id, now);
    ctx.idempotency = scope.map(|key| IdempotencyRecord {
        key,
        job_id,
        fingerprint: fingerprint.clone(),
        created_at: now,
    });
    match execute(&state.events, job_id, &Command::Submit(spec), &ctx).await {
        Ok(done) => {
            tracing::info!(%job_id, actor = %ctx.actor, "job submitted");
            Ok(Accepted::new(job_id, done.job.status).respond())
        }
        // Another request with the same key won the race: answer as its replay.
        Err(ExecuteError::Store(StoreError::IdempotencyKeyTaken { existing })) => {
            replay(&state.events, existing, &fingerprint).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The answer to a submission whose key was already claimed.
async fn replay<S: EventStore>(
    events: &S,
    existing: IdempotencyRecord,
    fingerprint: &str,
) -> Result<Response, ApiError> {
    if existing.fingerprint != fingerprint {
        return Err(StoreError::IdempotencyKeyTaken { existing }.into());
    }
    let job_id = existing.job_id;
    let history = events.load(job_id).await?;
    if history.is_empty() {
        // The key and the job's first event are written in one transaction: one without the other is corrupt.
        tracing::error!(%job_id, key = %existing.key, "idempotency key names a job with no events");
        return Err(ApiError::corrupt("event store"));
    }
    let (job, _) = fold(job_id, &history)?;
    let mut response = Accepted::new(job_id, job.status).respond();
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(response)
}

/// The job as of at least the ledger's head when asked: the view if it has caught up, else a fold of the ledger.
async fn fresh_view<S: EventStore, V: ViewStore, O: ObjectStore>(
    state: &ApiState<S, V, O>,
    job_id: JobId,
) -> Result<(JobView, &'static str), ApiError> {
    let (view, history) = tokio::join!(state.views.get(job_id), state.events.load(job_id));
    let history = history?;
    let Some(head) = history.last().map(|e| e.version) else {
        return Err(ApiError::job_not_found(job_id));
    };
    match view {
        Ok(Some(view)) if view.last_version >= head => return Ok((view, "view")),
        Ok(_) => {}
        // The ledger is the truth and is at hand: a failing read model does not fail the read.
        Err(e) => tracing::warn!(%job_id, error = %e, "view store failed; folding the ledger"),
    }
    match JobView::fold(&history)? {
        Some(view) => Ok((view, "ledger")),
        None => Err(ApiError::job_not_found(job_id)),
    }
}

/// Read a job.
#[utoipa::path(
    get, path = "/jobs/{id}",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job, including every write acknowledged before the request",
            body = super::openapi::schemas::JobViewDoc,
            headers(("x-jobledger-source" = String, description = "`view` or `ledger`"))),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn get_job<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let (view, source) = fresh_view(&state, job_id).await?;
    let mut response = Json(view).into_response();
    response
        .headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static(source));
    Ok(response)
}

/// Read a job's history, a page at a time.
#[utoipa::path(
    get, path = "/jobs/{id}/events",
    params(("id" = String, Path, description = "The job id"), EventsParams),
    responses(
        (status = 200, description = "Events after `after`, in version order", body = EventsPage),
        (status = 400, description = "Bad id or query", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn job_events<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Path(id): Path<String>,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let job_id = parse_job_id(&id)?;
    let Query(params) = query.map_err(query_error)?;
    let config = &state.config;
    let limit = params.limit.unwrap_or(config.events_page_default);
    if !(1..=config.events_page_max).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("limit must be 1 to {}, got {limit}", config.events_page_max),
        ));
    }
    let after = params.after.unwrap_or(0);
    let history = state.events.load(job_id).await?;
    if history.is_empty() {
        return Err(ApiError::job_not_found(job_id));
    }
    let mut events: Vec<RecordedEvent> = history
        .into_iter()
        .filter(|e| e.version > after)
        .take(limit + 1)
        .collect();
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| e.version.to_string())
    } else {
        None
    };
    Ok(Json(EventsPage {
        events,
        next_cursor,
    }))
}

/// Get a download URL for a succeeded job's results.
#[utoipa::path(
    get, path = "/jobs/{id}/result",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "A presigned URL", body = ResultLink),
        (status = 404, description = "No such job, or its result object is missing", body = ErrorBody),
        (status = 409, description = "The job has not succeeded", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn job_result<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Path(id): Path<String>,
) -> Result<Json<ResultLink>, ApiError> {
    let job_id = parse_job_id(&id)?;
    let (view, _) = fresh_view(&state, job_id).await?;
    if view.status != Status::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_succeeded",
            format!(
                "job {job_id} is {}; results exist once it has SUCCEEDED",
                view.status
            ),
        ));
    }
    let Some(result_uri) = view.result_uri else {
        tracing::error!(%job_id, "succeeded job without a result_uri");
        return Err(ApiError::corrupt("job view"));
    };
    let ttl = state.config.result_url_ttl;
    let now = (state.now)();
    let url = state.objects.presign_get(&result_uri, ttl).await?;
    let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero());
    Ok(Json(ResultLink {
        job_id,
        url,
        expires_at,
        result_uri,
        result_sha256: view.result_sha256,
    }))
}

/// Cancel a job.
#[utoipa::path(
    post, path = "/jobs/{id}/cancel",
    params(("id" = String, Path, description = "The job id")),
    request_body(content = Option<CancelRequest>, description = "Optional reason"),
    responses(
        (status = 202, description = "CANCELLED, or CANCELLING while the worker stops", body = Accepted),
        (status = 400, description = "Bad id or malformed JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Finished or already cancelling", body = ErrorBody),
        (status = 422, description = "Invalid reason", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn cancel_job<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let bytes = read_body(&headers, body, state.config.body_limit).await?;
    let req: CancelRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_value(parse_json(&bytes)?).map_err(|e| {
            ApiError::unprocessable(
                "invalid_request",
                format!("request body does not fit the cancel schema: {e}"),
            )
        })?
    };
    let reason = match req.reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            return Err(ApiError::invalid_fields(vec![field(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters"),
            )]));
        }
        Some(r) if !r.trim().is_empty() => r,
        _ => format!("cancelled by {}", caller.actor()),
    };
    let ctx = context(&caller, &request_id, (state.now)());
    let done = execute(&state.events, job_id, &Command::Cancel { reason }, &ctx)
        .await
        .map_err(|e| ApiError::from(e).for_job(job_id))?;
    tracing::info!(%job_id, actor = %ctx.actor, status = %done.job.status, "cancel requested");
    Ok(Accepted::new(job_id, done.job.status).respond())
}

/// Run a failed or cancelled job again.
#[utoipa::path(
    post, path = "/jobs/{id}/retry",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 202, description = "RETRY_WAIT: the next attempt is scheduled now, with fresh budgets", body = Accepted),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not FAILED or CANCELLED", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn retry_job<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let now = (state.now)();
    let ctx = context(&caller, &request_id, now);
    let done = execute(&state.events, job_id, &Command::Retry { now }, &ctx)
        .await
        .map_err(|e| ApiError::from(e).for_job(job_id))?;
    tracing::info!(%job_id, actor = %ctx.actor, attempt = done.job.attempt, "retry scheduled");
    Ok(Accepted::new(job_id, done.job.status).respond())
}

/// List jobs, most recently updated first.
#[utoipa::path(
    get, path = "/jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobsPage),
        (status = 400, description = "Bad query or cursor", body = ErrorBody),
        (status = 422, description = "Unknown status or kind, or limit out of range", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn list_jobs<S: EventStore, V: ViewStore, O: ObjectStore>(
    State(state): Shared<S, V, O>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobsPage>, ApiError> {
    let Query(params) = query.map_err(query_error)?;
    let config = &state.config;
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            Status::parse(s)
                .filter(|st| *st != Status::New)
                .ok_or_else(|| {
                    let allowed: Vec<&str> = Status::ALL
                        .iter()
                        .filter(|st| **st != Status::New)
                        .map(Status::as_str)
                        .collect();
                    ApiError::unprocessable(
                        "invalid_query",
                        format!("unknown status {s:?} (allowed: {})", allowed.join(", ")),
                    )
                })?,
        ),
    };
    let kind = match params.kind.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(k) => Some(JobKind::parse(k).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_query",
                format!("unknown kind {k:?} (allowed kinds: {})", allowed_kinds()),
            )
        })?),
    };
    let limit = params.limit.unwrap_or(config.jobs_page_default);
    if !(1..=config.jobs_page_max).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("limit must be 1 to {}, got {limit}", config.jobs_page_max),
        ));
    }
    let page = state
        .views
        .list(&ListQuery {
            status,
            kind,
            limit,
            cursor: params.cursor.filter(|c| !c.is_empty()),
        })
        .await?;
    Ok(Json(JobsPage {
        jobs: page.jobs,
        next_cursor: page.next_cursor,
    }))
}

/// Liveness: answers while the process runs. No API key needed.
#[utoipa::path(
    get, path = "/health",
    responses((status = 200, description = "Up", body = Health)),
    security(())
)]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// This document. No API key needed.
#[utoipa::path(
    get, path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
    security(())
)]
pub(crate) async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.0,
    )
        .into_response()
}

/// The serialized document, built once with the router.
#[derive(Clone)]
pub(crate) struct OpenApiJson(pub(crate) Bytes);
