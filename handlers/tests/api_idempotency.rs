//! `Idempotency-Key`: the same key and body replay the original job; another body is refused.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api_support;

use api_support::{Harness, KEY, OTHER_KEY, request};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use jobledger_events::EventStore;
use jobledger_handlers::api::fingerprint;
use serde_json::json;

fn submit_with_key(api_key: &str, idempotency_key: &str, body: &str) -> axum::http::Request<Body> {
    request(Method::POST, "/jobs")
        .header("x-api-key", api_key)
        .header("idempotency-key", idempotency_key)
        .body(Body::from(body.to_string()))
        .unwrap()
}

const BODY: &str =
    r#"{"kind": "noop", "items": [{"id": "a", "text": "t"}], "metadata": {"x": 1, "y": 2}}"#;
/// The same request, keys in another order and spaced differently.
const SAME_BODY: &str =
    r#"{"metadata":{"y":2,"x":1},"items":[{"text":"t","id":"a"}],"kind":"noop"}"#;

#[tokio::test]
async fn the_same_key_and_body_replay_the_original_job() {
    let h = Harness::new();
    let first = h.send(submit_with_key(KEY, "order-42", BODY)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let job_id: jobledger_events::JobId = first.body["job_id"].as_str().unwrap().parse().unwrap();

    let again = h.send(submit_with_key(KEY, "order-42", SAME_BODY)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.ledger().await.len(), 1, "a replay appended events");

    // The key is recorded scoped by the API key, with the body's fingerprint.
    let record = h
        .events
        .idempotency("ci#order-42")
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(record.job_id, job_id);
    assert_eq!(
        record.fingerprint,
        fingerprint(&serde_json::from_str(BODY).unwrap())
    );
    assert_eq!(record.created_at, api_support::now());
    let spec = &h.history(job_id).await[0];
    assert!(
        spec.data.get().contains("\"idempotency_key\":\"order-42\""),
        "{}",
        spec.data.get()
    );

    // A replay answers with the job's current status.
    h.call(Method::POST, &format!("/jobs/{job_id}/cancel"), None)
        .await;
    let later = h.send(submit_with_key(KEY, "order-42", BODY)).await;
    assert_eq!(later.status, StatusCode::ACCEPTED);
    assert_eq!(later.body["status"], "CANCELLED");
    assert_eq!(later.body["job_id"], first.body["job_id"]);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_appends_nothing() {
    let h = Harness::new();
    let first = h.send(submit_with_key(KEY, "order-42", BODY)).await;
    let before = h.ledger().await.len();
    let other = json!({"kind": "noop", "items": [{"id": "a", "text": "changed"}]}).to_string();
    let r = h.send(submit_with_key(KEY, "order-42", &other)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.code(), "idempotency_key_reused");
    assert!(
        r.message().contains(first.body["job_id"].as_str().unwrap()),
        "{}",
        r.message()
    );
    assert_eq!(h.ledger().await.len(), before);
}

#[tokio::test]
async fn keys_are_scoped_by_api_key() {
    let h = Harness::new();
    let a = h.send(submit_with_key(KEY, "same", BODY)).await;
    let b = h.send(submit_with_key(OTHER_KEY, "same", BODY)).await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_ne!(a.body["job_id"], b.body["job_id"]);
    assert_eq!(b.header("idempotent-replayed"), None);
    let ledger = h.ledger().await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[1].actor, "api-key:other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_with_one_key_create_one_job() {
    let h = Harness::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let router = h.router.clone();
            tokio::spawn(async move {
                use tower::ServiceExt;
                let res = router
                    .oneshot(submit_with_key(KEY, "race", BODY))
                    .await
                    .unwrap();
                let status = res.status();
                let body = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                )
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.insert(body["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(h.ledger().await.len(), 1);
}

#[tokio::test]
async fn without_a_key_every_submission_is_a_new_job() {
    let h = Harness::new();
    let body = || {
        request(Method::POST, "/jobs")
            .header("x-api-key", KEY)
            .body(Body::from(BODY))
            .unwrap()
    };
    let a = h.send(body()).await;
    let b = h.send(body()).await;
    assert_ne!(a.body["job_id"], b.body["job_id"]);
    assert_eq!(h.ledger().await.len(), 2);
}
