//! Every bad request gets its documented status, code and message, and appends nothing to the ledger.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use api_support::{Harness, KEY, Reply, job, request};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use jobledger_events::envelope::RecordedEvent;
use jobledger_events::{AppendBatch, EventStore, IdempotencyRecord, JobId, StoreError};
use jobledger_handlers::api::{self, ApiConfig, ApiState, Authenticator};
use serde_json::{Value, json};

/// Sends a request and checks the answer's status and code, and that the ledger did not change.
async fn refused(
    h: &Harness,
    req: axum::http::Request<Body>,
    status: StatusCode,
    code: &str,
) -> Reply {
    let before = h.ledger().await.len();
    let r = h.send(req).await;
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), code, "{}", r.body);
    assert!(!r.message().is_empty(), "{}", r.body);
    assert_eq!(
        h.ledger().await.len(),
        before,
        "a refused request appended events"
    );
    r
}

fn post_jobs(body: impl Into<Body>) -> axum::http::Request<Body> {
    request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .body(body.into())
        .unwrap()
}

fn get(uri: &str) -> axum::http::Request<Body> {
    request(Method::GET, uri)
        .header("x-api-key", KEY)
        .body(Body::empty())
        .unwrap()
}

fn post(uri: &str) -> axum::http::Request<Body> {
    request(Method::POST, uri)
        .header("x-api-key", KEY)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let h = Harness::new();
    let r = refused(
        &h,
        post_jobs("{\"kind\": \"noop\", "),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert!(r.message().contains("not valid JSON"), "{}", r.message());
    refused(&h, post_jobs(""), StatusCode::BAD_REQUEST, "malformed_json").await;
}

#[tokio::test]
async fn an_unknown_kind_is_422_naming_every_allowed_kind() {
    let h = Harness::new();
    let r = refused(
        &h,
        post_jobs(job("alt_text").to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    for kind in ["image_alt", "meta_description", "content_analysis", "noop"] {
        assert!(r.message().contains(kind), "{}", r.message());
    }
    assert!(r.message().contains("\"alt_text\""), "{}", r.message());
    assert_eq!(r.body["error"]["fields"][0]["field"], "kind");
}

#[tokio::test]
async fn no_key_is_401_and_a_wrong_key_is_403_on_every_authenticated_route() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;
    let routes = [
        (Method::POST, "/jobs".to_string()),
        (Method::GET, "/jobs".to_string()),
        (Method::GET, format!("/jobs/{id}")),
        (Method::GET, format!("/jobs/{id}/events")),
        (Method::GET, format!("/jobs/{id}/result")),
        (Method::POST, format!("/jobs/{id}/cancel")),
        (Method::POST, format!("/jobs/{id}/retry")),
    ];
    for (method, uri) in routes {
        let body = || Body::from(job("noop").to_string());
        let r = refused(
            &h,
            request(method.clone(), &uri).body(body()).unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
        assert!(r.message().contains("x-api-key"), "{}", r.message());
        let wrong = request(method.clone(), &uri)
            .header("x-api-key", "not-a-key-0123456789")
            .body(body())
            .unwrap();
        refused(&h, wrong, StatusCode::FORBIDDEN, "forbidden").await;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_or_without_content_length() {
    let h = Harness::with_config(ApiConfig {
        body_limit: 4096,
        ..ApiConfig::default()
    });
    let big = json!({"kind": "noop", "items": [{"id": "a", "text": "x".repeat(5000)}]}).to_string();
    let declared = request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let r = refused(
        &h,
        declared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(r.message().contains("4096"), "{}", r.message());
    // Without Content-Length (as a chunked upload arrives), the body is cut at the limit while read.
    let undeclared = request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .body(Body::from(big))
        .unwrap();
    refused(
        &h,
        undeclared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn a_256_kib_inline_batch_fits_the_default_limit_and_more_is_sent_to_input_uri() {
    let h = Harness::new();
    // 255 items of 1,000 characters: about 255 KiB of items as JSON, just under the 256 KiB of the spec.
    let items: Vec<Value> = (0..255)
        .map(|i| json!({"id": format!("p{i}"), "text": "y".repeat(1000)}))
        .collect();
    let bytes = serde_json::to_vec(&items).unwrap().len();
    assert!(bytes > 250 * 1024 && bytes <= 256 * 1024, "{bytes}");
    h.submit(json!({"kind": "content_analysis", "items": items}))
        .await;

    // Over 256 KiB of items but under the body limit: the spec's rule answers, with the way out.
    let items: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("p{i}"), "text": "y".repeat(1000)}))
        .collect();
    let r = refused(
        &h,
        post_jobs(json!({"kind": "content_analysis", "items": items}).to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    assert!(r.message().contains("input_uri"), "{}", r.message());
}

#[tokio::test]
async fn cancelling_a_cancelled_job_is_409_and_appends_nothing() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;
    h.call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    let r = refused(
        &h,
        post(&format!("/jobs/{id}/cancel")),
        StatusCode::CONFLICT,
        "already_finished",
    )
    .await;
    assert!(r.message().contains("CANCELLED"), "{}", r.message());
    // Retrying a job that is not finished is an illegal transition.
    let other = h.submit(job("noop")).await;
    let r = refused(
        &h,
        post(&format!("/jobs/{other}/retry")),
        StatusCode::CONFLICT,
        "illegal_transition",
    )
    .await;
    assert!(r.message().contains("SUBMITTED"), "{}", r.message());
}

#[tokio::test]
async fn invalid_fields_are_422_listing_each_field() {
    let h = Harness::new();
    let body = json!({"kind": "noop", "items": [], "max_attempts": 0, "timeout_s": 5});
    let r = refused(
        &h,
        post_jobs(body.to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    let fields: Vec<&str> = r.body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["items", "max_attempts", "timeout_s"], "{}", r.body);
    assert!(
        r.message().contains("max_attempts: must be 1 to 10, got 0"),
        "{}",
        r.message()
    );

    let both =
        json!({"kind": "noop", "items": [{"id": "a", "text": "t"}], "input_uri": "s3://b/k.jsonl"});
    let r = refused(
        &h,
        post_jobs(both.to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    assert!(r.message().contains("not both"), "{}", r.message());
    let neither = json!({"kind": "noop"});
    refused(
        &h,
        post_jobs(neither.to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;

    let typo = json!({"kind": "noop", "items": [{"id": "a", "text": "t"}], "max_attempt": 2});
    let r = refused(
        &h,
        post_jobs(typo.to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert!(r.message().contains("max_attempt"), "{}", r.message());
    let wrong_type =
        json!({"kind": "noop", "items": [{"id": "a", "text": "t"}], "timeout_s": "long"});
    refused(
        &h,
        post_jobs(wrong_type.to_string()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    refused(
        &h,
        post_jobs("[1, 2]"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;

    let long_key = request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .header("idempotency-key", "k".repeat(129))
        .body(Body::from(job("noop").to_string()))
        .unwrap();
    let r = refused(
        &h,
        long_key,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    assert_eq!(r.body["error"]["fields"][0]["field"], "Idempotency-Key");

    let long_reason = request(
        Method::POST,
        &format!("/jobs/{}/cancel", h.submit(job("noop")).await),
    )
    .header("x-api-key", KEY)
    .body(Body::from(json!({"reason": "r".repeat(1001)}).to_string()))
    .unwrap();
    refused(
        &h,
        long_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_job",
    )
    .await;
    let bad_cancel_json = request(
        Method::POST,
        &format!("/jobs/{}/cancel", h.submit(job("noop")).await),
    )
    .header("x-api-key", KEY)
    .body(Body::from("{reason"))
    .unwrap();
    refused(
        &h,
        bad_cancel_json,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
}

#[tokio::test]
async fn unknown_and_malformed_job_ids_are_404_and_400_on_every_job_route() {
    let h = Harness::new();
    let unknown = JobId::new();
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::GET, "/events"),
        (Method::GET, "/result"),
        (Method::POST, "/cancel"),
        (Method::POST, "/retry"),
    ] {
        let req = |id: &str| {
            request(method.clone(), &format!("/jobs/{id}{suffix}"))
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap()
        };
        let r = refused(
            &h,
            req(&unknown.to_string()),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert!(
            r.message().contains(&unknown.to_string()),
            "{suffix}: {}",
            r.message()
        );
        refused(
            &h,
            req("not-a-uuid"),
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_query_strings_are_400_or_422() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;
    let r = refused(
        &h,
        get("/jobs?status=DONE"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
    )
    .await;
    assert!(r.message().contains("RETRY_WAIT"), "{}", r.message());
    let r = refused(
        &h,
        get("/jobs?kind=poem"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
    )
    .await;
    assert!(r.message().contains("content_analysis"), "{}", r.message());
    refused(
        &h,
        get("/jobs?limit=0"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
    )
    .await;
    refused(
        &h,
        get("/jobs?limit=101"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
    )
    .await;
    refused(
        &h,
        get("/jobs?limit=ten"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &h,
        get("/jobs?cursor=not-ours"),
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
    refused(
        &h,
        get(&format!("/jobs/{id}/events?after=-1")),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused(
        &h,
        get(&format!("/jobs/{id}/events?limit=1001")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format() {
    let h = Harness::new();
    refused(&h, get("/nope"), StatusCode::NOT_FOUND, "no_route").await;
    let r = refused(
        &h,
        request(Method::DELETE, "/jobs")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert!(r.message().contains("openapi.json"));
}

/// A ledger that is down, or that reports corruption.
#[derive(Clone)]
struct BrokenStore {
    corrupt: bool,
    calls: Arc<AtomicUsize>,
}

impl BrokenStore {
    fn fail(&self) -> StoreError {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.corrupt {
            StoreError::Corrupt {
                job_id: "j".into(),
                version: Some(1),
                reason: "bad hash".into(),
            }
        } else {
            StoreError::backend(true, "database is locked")
        }
    }
}

impl EventStore for BrokenStore {
    async fn load(&self, _: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        Err(self.fail())
    }
    async fn append(&self, _: AppendBatch) -> Result<(), StoreError> {
        Err(self.fail())
    }
    async fn idempotency(&self, _: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Err(self.fail())
    }
}

fn broken_router(h: &Harness, corrupt: bool) -> (axum::Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let store = BrokenStore {
        corrupt,
        calls: calls.clone(),
    };
    let state = ApiState::new(
        store,
        h.views.clone(),
        h.objects.clone(),
        Authenticator::Keys(api_support::keys()),
    );
    (api::router(state), calls)
}

#[tokio::test]
async fn a_failing_ledger_is_503_with_retry_after_and_a_corrupt_one_500() {
    use tower::ServiceExt;
    let h = Harness::new();
    for (corrupt, status, code) in [
        (false, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, StatusCode::INTERNAL_SERVER_ERROR, "corrupt_data"),
    ] {
        let (router, calls) = broken_router(&h, corrupt);
        let res = router
            .oneshot(post_jobs(job("noop").to_string()))
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(res.headers().get("retry-after").is_some(), !corrupt);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], code);
        // The cause stays in the log; the client gets no internals.
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("locked"),
            "{body}"
        );
        assert!(calls.load(Ordering::SeqCst) > 0);
    }
}
