//! The API's happy paths, against the real SQLite ledger and view store.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api_support;

use std::collections::BTreeSet;

use api_support::{Harness, KEY, job, now, request};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use jobledger_events::event::{Capacity, Usage};
use jobledger_events::{Command, CommandContext, JobId, JobSpec, execute};
use jobledger_workers::ObjectStore;
use serde_json::json;

#[tokio::test]
async fn a_submission_is_accepted_and_recorded_with_the_api_defaults() {
    let h = Harness::new();
    let req = request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .header("x-request-id", "req-123")
        .body(Body::from(
            json!({"kind": "meta_description", "items": [{"id": "p1", "text": "Hello"}], "metadata": {"site": "blog"}})
                .to_string(),
        ))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["job_id"].as_str().unwrap();
    assert_eq!(
        r.body,
        json!({"job_id": id, "status": "SUBMITTED", "links": {"self": format!("/jobs/{id}"), "events": format!("/jobs/{id}/events")}})
    );
    assert_eq!(r.header("location"), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(r.header("x-request-id"), Some("req-123"));

    let ledger = h.ledger().await;
    assert_eq!(ledger.len(), 1);
    let e = &ledger[0];
    assert_eq!(e.job_id.to_string(), id);
    assert_eq!(e.event_type, "JobSubmitted");
    assert_eq!(e.actor, "api-key:ci");
    assert_eq!(e.correlation_id, "req-123");
    assert_eq!(e.at, now());
    let spec: JobSpec = serde_json::from_str(e.data.get()).unwrap();
    assert_eq!(spec.max_attempts, 3);
    assert_eq!(spec.timeout_s, 3600);
    assert_eq!(spec.priority, 0);
    assert!(spec.notify.slack && spec.notify.notion);
    assert_eq!(spec.metadata["site"], "blog");
    assert_eq!(spec.idempotency_key, None);
}

#[tokio::test]
async fn a_request_without_a_request_id_gets_a_fresh_one_used_as_correlation_id() {
    let h = Harness::new();
    let r = h.call(Method::POST, "/jobs", Some(job("noop"))).await;
    let rid = r.header("x-request-id").unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&rid).is_ok(), "{rid}");
    assert_eq!(h.ledger().await[0].correlation_id, rid);
}

#[tokio::test]
async fn a_client_reads_its_own_writes_before_and_after_the_projector_catches_up() {
    let h = Harness::new();
    let id = h.submit(job("image_alt")).await;

    // Nothing projected yet: folded from the ledger.
    let r = h.call(Method::GET, &format!("/jobs/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-jobledger-source"), Some("ledger"));
    assert_eq!(r.body["status"], "SUBMITTED");
    assert_eq!(r.body["kind"], "image_alt");
    assert_eq!(
        r.body["progress"],
        json!({"done": 0, "failed": 0, "total": 2})
    );
    assert_eq!(r.body["last_version"], 1);

    // Projected: served by the view.
    h.project(id).await;
    let r = h.call(Method::GET, &format!("/jobs/{id}"), None).await;
    assert_eq!(r.header("x-jobledger-source"), Some("view"));
    assert_eq!(r.body["status"], "SUBMITTED");

    // A cancel the projector has not seen: the stale view is not served.
    let r = h
        .call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = h.call(Method::GET, &format!("/jobs/{id}"), None).await;
    assert_eq!(r.header("x-jobledger-source"), Some("ledger"));
    assert_eq!(r.body["status"], "CANCELLED");
    assert_eq!(r.body["last_version"], 3);
}

#[tokio::test]
async fn cancel_then_retry_moves_the_job_and_records_who_asked() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;

    let r = h
        .call(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(json!({"reason": "wrong input"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "CANCELLED");
    assert_eq!(r.body["links"]["self"], format!("/jobs/{id}"));

    let r = h
        .call(Method::POST, &format!("/jobs/{id}/retry"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "RETRY_WAIT");

    let history = h.history(id).await;
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "JobSubmitted",
            "CancelRequested",
            "JobCancelled",
            "RetryScheduled"
        ]
    );
    assert!(history.iter().all(|e| e.actor == "api-key:ci"));
    assert!(
        history[1].data.get().contains("wrong input"),
        "{}",
        history[1].data.get()
    );
    // The retry runs now, by the API's clock.
    assert!(
        history[3].data.get().contains("2025-03-01T12:00:00"),
        "{}",
        history[3].data.get()
    );

    // A cancel without a body records who asked.
    let r = h
        .call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let history = h.history(id).await;
    assert!(
        history[4].data.get().contains("cancelled by api-key:ci"),
        "{}",
        history[4].data.get()
    );
}

#[tokio::test]
async fn the_history_is_paged_with_after_and_next_cursor() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;
    h.call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    h.call(Method::POST, &format!("/jobs/{id}/retry"), None)
        .await;

    let r = h
        .call(Method::GET, &format!("/jobs/{id}/events?limit=3"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let versions: Vec<u64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(r.body["next_cursor"], "3");
    let first = &r.body["events"][0];
    assert_eq!(first["type"], "JobSubmitted");
    assert_eq!(first["actor"], "api-key:ci");
    assert_eq!(first["prev_hash"], "0".repeat(64));

    let r = h
        .call(
            Method::GET,
            &format!("/jobs/{id}/events?after=3&limit=3"),
            None,
        )
        .await;
    let versions: Vec<u64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4]);
    assert_eq!(r.body["next_cursor"], serde_json::Value::Null);

    // The whole history in one page (default limit), exactly as stored.
    let r = h
        .call(Method::GET, &format!("/jobs/{id}/events"), None)
        .await;
    let stored = serde_json::to_value(h.history(id).await).unwrap();
    assert_eq!(r.body["events"], stored);
    assert_eq!(r.body["next_cursor"], serde_json::Value::Null);
}

#[tokio::test]
async fn jobs_are_listed_page_by_page_and_filtered() {
    let h = Harness::new();
    let a = h.submit(job("noop")).await;
    let b = h.submit(job("image_alt")).await;
    let c = h.submit(job("noop")).await;
    h.call(Method::POST, &format!("/jobs/{c}/cancel"), None)
        .await;
    for id in [a, b, c] {
        h.project(id).await;
    }

    let mut seen = BTreeSet::new();
    let r = h.call(Method::GET, "/jobs?limit=2", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 2);
    let cursor = r.body["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    seen.extend(
        r.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string()),
    );
    let r = h
        .call(Method::GET, &format!("/jobs?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["next_cursor"], serde_json::Value::Null);
    seen.extend(
        r.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string()),
    );
    let all: BTreeSet<String> = [a, b, c].iter().map(JobId::to_string).collect();
    assert_eq!(seen, all);

    let r = h.call(Method::GET, "/jobs?status=CANCELLED", None).await;
    let ids: Vec<&str> = r.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [c.to_string()]);
    let r = h.call(Method::GET, "/jobs?kind=image_alt", None).await;
    let ids: Vec<&str> = r.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.to_string()]);
    let r = h
        .call(Method::GET, "/jobs?kind=noop&status=SUBMITTED", None)
        .await;
    let ids: Vec<&str> = r.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.to_string()]);
}

/// Drives a job to SUCCEEDED the way the dispatcher, launcher and worker would.
async fn succeed(h: &Harness, id: JobId) -> String {
    let uri = h
        .objects
        .put(
            &format!("results/{id}/1.jsonl"),
            b"{\"id\":\"post-1\"}\n".to_vec(),
        )
        .await
        .unwrap();
    let ctx = CommandContext::new("worker:test", now());
    let commands = [
        Command::MarkQueued {
            attempt: 1,
            message_id: "m-1".into(),
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "w".into(),
        },
        Command::Succeed {
            attempt: 1,
            result_uri: uri.clone(),
            result_sha256: "ab".repeat(32),
            items_ok: 2,
            items_failed: 0,
            usage: Usage {
                duration_ms: 10,
                vcpu: 0.25,
                memory_mb: 512,
                capacity: Some(Capacity::Local),
                ..Usage::default()
            },
        },
    ];
    for c in &commands {
        execute(&h.events, id, c, &ctx).await.unwrap();
    }
    uri
}

#[tokio::test]
async fn a_succeeded_job_gives_a_download_url_and_other_jobs_a_409() {
    let h = Harness::new();
    let id = h.submit(job("meta_description")).await;

    let r = h
        .call(Method::GET, &format!("/jobs/{id}/result"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "not_succeeded");
    assert!(r.message().contains("SUBMITTED"), "{}", r.message());

    let uri = succeed(&h, id).await;
    let r = h
        .call(Method::GET, &format!("/jobs/{id}/result"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The filesystem store's presigned URL is the file itself.
    assert_eq!(r.body["url"], uri.as_str());
    assert_eq!(r.body["result_uri"], uri.as_str());
    assert_eq!(r.body["result_sha256"], "ab".repeat(32));
    assert_eq!(r.body["expires_at"], "2025-03-01T12:15:00Z");

    // A succeeded job cannot be retried or cancelled.
    let r = h
        .call(Method::POST, &format!("/jobs/{id}/retry"), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_finished")
    );
}

#[tokio::test]
async fn health_and_the_document_need_no_key() {
    let h = Harness::new();
    let r = h
        .send(request(Method::GET, "/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"status": "ok"}))
    );
    let r = h
        .send(
            request(Method::GET, "/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
}

#[tokio::test]
async fn behind_api_gateway_the_key_id_comes_from_the_request_context() {
    use jobledger_handlers::api::{self, ApiState, Authenticator, GatewayKeyId};
    use tower::ServiceExt;
    let h = Harness::new();
    let state = ApiState::new(
        h.events.clone(),
        h.views.clone(),
        h.objects.clone(),
        Authenticator::Gateway,
    )
    .with_clock(now);
    let router = api::router(state);

    let mut req = request(Method::POST, "/jobs")
        .body(Body::from(job("noop").to_string()))
        .unwrap();
    req.extensions_mut().insert(GatewayKeyId("gw-key-7".into()));
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(h.ledger().await[0].actor, "api-key:gw-key-7");

    // A header is not the gateway's word: without the context, the request is unauthenticated.
    let req = request(Method::POST, "/jobs")
        .header("x-api-key", KEY)
        .body(Body::from(job("noop").to_string()))
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(h.ledger().await.len(), 1);
}
