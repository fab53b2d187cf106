//! The one place where every error the API can meet becomes an HTTP status and a JSON body.
//!
//! Body: `{"error": {"code": "…", "message": "…"}}`, plus `fields` when a request had invalid fields.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobledger_events::spec::FieldError;
use jobledger_events::{ExecuteError, JobId, Rejection, StoreError};
use jobledger_projections::ProjectionError;
use jobledger_projections::store::ViewError;
use jobledger_workers::ObjectError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer of the API: status, stable code and a message a person can act on.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldError>,
    retry_after_s: Option<u64>,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `code`, `message` and, for invalid requests, the fields at fault.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `illegal_transition`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// One entry per invalid field (only on 422 answers about fields).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldErrorDoc>)]
    pub fields: Vec<FieldError>,
}

/// One invalid field (documentation of `jobledger_events::spec::FieldError`).
#[derive(ToSchema)]
#[schema(as = FieldError)]
#[allow(dead_code)] // Only its schema is used.
pub struct FieldErrorDoc {
    /// The field, e.g. `items`.
    field: String,
    /// What is wrong and what is allowed.
    message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 400: the request cannot be read (malformed JSON, bad query string, bad id).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403: credentials that are not valid.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for a job that does not exist.
    pub fn job_not_found(job_id: JobId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {job_id} not found"),
        )
    }

    /// 413: the body is larger than the configured limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request body is larger than {limit} bytes; upload large inputs to the object store and pass input_uri"
            ),
        )
    }

    /// 422: a well-formed request that breaks a rule.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 422 listing every invalid field.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        let message = format!(
            "invalid job: {}",
            fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        ApiError {
            fields,
            ..Self::unprocessable("invalid_job", message)
        }
    }

    /// 429: too many requests; try again after `retry_after_s` seconds (reserved for rate limits).
    pub fn rate_limited(retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; try again in {retry_after_s} s"),
            )
        }
    }

    /// 503: a backend is down or busy; `retryable` adds a `Retry-After` hint.
    pub fn unavailable(what: &str, retryable: bool) -> Self {
        ApiError {
            retry_after_s: retryable.then_some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the {what} is unavailable; try again later"),
            )
        }
    }

    /// 500: stored data that cannot be read. Operators find the details in the log.
    pub fn corrupt(what: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_data",
            format!("the {what} holds data that cannot be read; operators have been told"),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Replaces `NotFound` rejections by a message naming the job.
    pub(crate) fn for_job(self, job_id: JobId) -> Self {
        if self.status == StatusCode::NOT_FOUND {
            Self::job_not_found(job_id)
        } else {
            self
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status =
            StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match r {
            Rejection::Invalid(fields) => ApiError::invalid_fields(fields),
            other => ApiError::new(status, other.code(), other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            // Only reached once `execute` has used up its retries.
            StoreError::Conflict { job_id, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("job {job_id} is being changed by others right now; try again"),
            ),
            StoreError::IdempotencyKeyTaken { existing } => ApiError::unprocessable(
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was already used for job {} with a different request",
                    existing.job_id
                ),
            ),
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt event store item");
                ApiError::corrupt("event store")
            }
            StoreError::Backend { retryable, .. } => {
                tracing::error!(error = %e, "event store failed");
                ApiError::unavailable("event store", *retryable)
            }
        }
    }
}

impl From<ExecuteError> for ApiError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::Rejected(r) => r.into(),
            ExecuteError::Store(s) => s.into(),
            ExecuteError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt job history");
                ApiError::corrupt("event store")
            }
        }
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        tracing::error!(error = %e, "job history cannot be folded into a view");
        ApiError::corrupt("event store")
    }
}

impl From<ViewError> for ApiError {
    fn from(e: ViewError) -> Self {
        match &e {
            ViewError::BadCursor(_) => ApiError::bad_request(
                "invalid_cursor",
                "cursor was not returned by this API; pass next_cursor unchanged",
            ),
            ViewError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt view");
                ApiError::corrupt("view store")
            }
            ViewError::Backend { retryable, .. } => {
                tracing::error!(error = %e, "view store failed");
                ApiError::unavailable("view store", *retryable)
            }
        }
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        match &e {
            ObjectError::NotFound(_) => {
                tracing::error!(error = %e, "result object missing");
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "result_missing",
                    "the job succeeded but its result object is missing from the object store",
                )
            }
            ObjectError::InvalidRef(..) => {
                tracing::error!(error = %e, "result URI not served by this object store");
                ApiError::corrupt("result reference")
            }
            ObjectError::Backend(_) => {
                tracing::error!(error = %e, "object store failed");
                ApiError::unavailable("object store", true)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                fields: self.fields,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
