//! The `openai` backend against a local OpenAI-compatible server: request shape, real response
//! shapes, throttling, server errors, malformed replies, timeouts, the token budget, and usage and
//! cost adding up to the job's `JobSucceeded.usage` (whole attempts on the embedded ledger).

#![allow(clippy::unwrap_used)]

mod backend_support;

use std::time::{Duration, Instant};

use backend_support::*;
use base64::Engine as _;
use image::ImageFormat;
use jobledger_events::JobKind;
use jobledger_events::event::JobEvent;
use jobledger_testsupport::http::Seen;
use jobledger_workers::backends::openai::OpenAiChat;
use jobledger_workers::backends::pricing::PriceTable;
use jobledger_workers::backends::retry::CallPolicy;
use jobledger_workers::backends::{KindBackends, ModelBackend};
use jobledger_workers::config::{AiConfig, BackendKind, OpenAiConfig, Secret};
use jobledger_workers::{AttemptOutcome, WorkerConfig, WorkerError};
use serde_json::{Value, json};

const KEY: &str = "sk-test-0123456789";

/// A chat completion exactly as api.openai.com returns it.
fn completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306"
    })
}

fn rate_limited() -> Reply {
    Reply::json(
        429,
        json!({"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
    )
}

fn backend(server: &FakeServer, timeout: Duration, retries: u32) -> ModelBackend<OpenAiChat> {
    let chat = OpenAiChat::new(&OpenAiConfig {
        base_url: format!("{}/v1", server.url()),
        model: "gpt-4o-mini".into(),
        api_key: Some(Secret::new(KEY)),
    })
    .unwrap();
    let policy = CallPolicy {
        base_delay: Duration::from_millis(10),
        ..CallPolicy::new(timeout, 4, retries, Duration::from_secs(10))
    };
    ModelBackend::new(chat, policy)
}

fn user_text(seen: &Seen) -> String {
    let content = &seen.body["messages"][1]["content"];
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

const ANALYSIS: &str = r#"{"topics":["ceramics","small business"],"keywords":["handmade bowls","glaze","Porto"],"summary":"A small studio in Porto makes and sells handmade ceramic bowls.","sentiment":"positive","readability_notes":["Short sentences","No jargon"]}"#;

#[tokio::test]
async fn image_alt_sends_data_urls_and_usage_and_cost_add_up_to_the_jobs_usage() {
    let server = FakeServer::start(|n, _| {
        let alt = if n == 0 {
            "\"Image of a colour gradient from dark blue to pink, used as a page background\""
        } else {
            "Colour gradient in blue and pink"
        };
        Reply::json(200, completion(alt, 1200 + n as u64, 14))
    })
    .await;
    let w = world();
    let png = image_bytes(40, 30, ImageFormat::Png);
    let jpg = image_bytes(32, 32, ImageFormat::Jpeg);
    let job = launched(
        &w,
        spec(
            JobKind::ImageAlt,
            vec![image_item("hero", &png), image_item("thumb", &jpg)],
            None,
        ),
    )
    .await;
    let cfg = WorkerConfig {
        concurrency: 1,
        ..cfg()
    };
    let outcome = run(&w, &backend(&server, Duration::from_secs(5), 2), job, &cfg)
        .await
        .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        usage,
        items_ok,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(items_ok, 2);

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let b64 = base64::engine::general_purpose::STANDARD;
    for (req, (bytes, mime)) in seen.iter().zip([(&png, "image/png"), (&jpg, "image/jpeg")]) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/chat/completions");
        assert_eq!(req.headers["authorization"], format!("Bearer {KEY}"));
        assert_eq!(req.body["model"], "gpt-4o-mini");
        assert_eq!(req.body["max_tokens"], 120);
        assert_eq!(req.body["messages"][0]["role"], "system");
        assert!(
            req.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("125 characters")
        );
        let parts = &req.body["messages"][1]["content"];
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(parts[1]["type"], "image_url");
        assert_eq!(
            parts[1]["image_url"]["url"],
            format!("data:{mime};base64,{}", b64.encode(bytes))
        );
    }

    let lines = results(&w, &result_uri).await;
    let alt = lines[0].output.as_ref().unwrap()["alt_text"]
        .as_str()
        .unwrap();
    assert_eq!(
        alt,
        "A colour gradient from dark blue to pink, used as a page background"
    );
    assert_eq!(
        lines[1].output.as_ref().unwrap()["alt_text"],
        "Colour gradient in blue and pink"
    );
    let price = PriceTable::embedded().model("gpt-4o-mini").unwrap();
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line.usage.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(line.usage.input_tokens, 1200 + n as u64);
        assert_eq!(line.usage.output_tokens, 14);
        assert!((line.usage.cost_usd - price.cost(1200 + n as u64, 14)).abs() < 1e-12);
    }
    assert_eq!(usage, succeeded_usage(&w, job).await);
    assert_eq!(usage.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_usage_adds_up(&usage, &lines, &cfg);
    assert!(usage.cost_usd > 0.0);
}

#[tokio::test]
async fn throttling_waits_for_retry_after_then_succeeds() {
    let server = FakeServer::start(|n, _| match n {
        0 => rate_limited().header("retry-after", "1"),
        _ => Reply::json(
            200,
            completion(
                "Handmade ceramic bowls from a studio in Porto, glazed and fired by hand.",
                300,
                20,
            ),
        ),
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(JobKind::MetaDescription, vec![text_item("p", "We make handmade ceramic bowls in our studio in Porto and sell them online to customers across Europe.")], None),
    )
    .await;
    let started = Instant::now();
    let outcome = run(
        &w,
        &backend(&server, Duration::from_secs(5), 2),
        job,
        &cfg(),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert!(
        matches!(outcome, AttemptOutcome::Succeeded { items_ok: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let server = FakeServer::start(|n, _| match n {
        0 => Reply::json(
            503,
            json!({"error": {"message": "The server is overloaded", "type": "server_error"}}),
        ),
        1 => Reply::json(
            500,
            json!({"error": {"message": "internal", "type": "server_error"}}),
        ),
        _ => Reply::json(200, completion(ANALYSIS, 800, 90)),
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::ContentAnalysis,
            vec![text_item("a", "We make handmade bowls in Porto.")],
            None,
        ),
    )
    .await;
    let outcome = run(
        &w,
        &backend(&server, Duration::from_secs(5), 3),
        job,
        &cfg(),
    )
    .await
    .unwrap();
    let AttemptOutcome::Succeeded { result_uri, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(server.seen().len(), 3);
    let out = results(&w, &result_uri).await[0].output.clone().unwrap();
    assert_eq!(out["sentiment"], "positive");
    assert_eq!(out["topics"][0], "ceramics");
    assert!(out["measured"]["words"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(
        server.seen()[0].body["response_format"]["type"],
        "json_object"
    );
}

#[tokio::test]
async fn a_malformed_analysis_is_retried_once_then_the_item_fails_with_the_reason() {
    // Item "good" is malformed once, then right; item "bad" is malformed twice.
    let server = FakeServer::start(|_, seen| {
        let text = user_text(seen);
        let retry = text.contains("previous reply was rejected");
        if text.contains("GOOD") && retry {
            Reply::json(200, completion(ANALYSIS, 500, 80))
        } else if text.contains("GOOD") {
            Reply::json(200, completion("Here is the analysis: topics are ceramics", 500, 12))
        } else {
            Reply::json(200, completion(r#"{"topics": ["x"], "keywords": ["y"], "summary": "s", "sentiment": "great", "readability_notes": []}"#, 400, 30))
        }
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::ContentAnalysis,
            vec![
                text_item("good", "GOOD text about handmade bowls."),
                text_item("bad", "BAD text about anything."),
            ],
            None,
        ),
    )
    .await;
    let cfg = WorkerConfig {
        concurrency: 1,
        ..cfg()
    };
    let outcome = run(&w, &backend(&server, Duration::from_secs(5), 2), job, &cfg)
        .await
        .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        items_ok,
        items_failed,
        usage,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((items_ok, items_failed), (1, 1));
    assert_eq!(
        server.seen().len(),
        4,
        "one retry per malformed reply, no more"
    );
    let lines = results(&w, &result_uri).await;
    assert_eq!(lines[0].usage.input_tokens, 1000);
    assert!(!lines[1].ok);
    let reason = lines[1].error.as_deref().unwrap();
    assert!(
        reason.contains("unusable after 2 tries") && reason.contains("unknown variant `great`"),
        "{reason}"
    );
    // The failed item's tokens were billed, so they are in the usage too.
    assert_eq!(lines[1].usage.input_tokens, 800);
    assert_eq!(lines[1].usage.output_tokens, 60);
    assert_usage_adds_up(&usage, &lines, &cfg);
}

#[tokio::test]
async fn a_call_that_times_out_is_retried_then_fails_the_attempt_as_retryable() {
    let server = FakeServer::start(|_, _| {
        Reply::json(200, completion("late", 1, 1)).after(Duration::from_secs(3))
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            vec![text_item("p", "Some page text that is long enough.")],
            None,
        ),
    )
    .await;
    let started = Instant::now();
    let err = run(
        &w,
        &backend(&server, Duration::from_millis(300), 1),
        job,
        &cfg(),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            err,
            WorkerError::Backend {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(server.seen().len(), 2);
    let failed = events(&w, job)
        .await
        .into_iter()
        .any(|e| matches!(e, JobEvent::AttemptFailed(f) if f.retryable));
    assert!(failed, "AttemptFailed(retryable) recorded");
}

#[tokio::test]
async fn a_bad_key_fails_the_attempt_without_retrying_and_a_refused_item_fails_alone() {
    let server = FakeServer::start(|_, _| Reply::json(401, json!({"error": {"message": "Incorrect API key provided: sk-test-***6789.", "type": "invalid_request_error", "code": "invalid_api_key"}}))).await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            vec![text_item("p", "Page text.")],
            None,
        ),
    )
    .await;
    let err = run(
        &w,
        &backend(&server, Duration::from_secs(5), 3),
        job,
        &cfg(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::Backend {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.seen().len(), 1);

    let server = FakeServer::start(|n, _| match n {
        0 => Reply::json(400, json!({"error": {"message": "Invalid image.", "type": "invalid_request_error", "param": null, "code": "invalid_image"}})),
        _ => Reply::json(200, completion("Blue gradient", 900, 5)),
    })
    .await;
    let w = world();
    let png = image_bytes(20, 20, ImageFormat::Png);
    let job = launched(
        &w,
        spec(
            JobKind::ImageAlt,
            vec![image_item("a", &png), image_item("b", &png)],
            None,
        ),
    )
    .await;
    let cfg = WorkerConfig {
        concurrency: 1,
        ..cfg()
    };
    let outcome = run(&w, &backend(&server, Duration::from_secs(5), 3), job, &cfg)
        .await
        .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        items_failed: 1,
        items_ok: 1,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let lines = results(&w, &result_uri).await;
    assert!(lines[0].error.as_deref().unwrap().contains("Invalid image"));
}

#[tokio::test]
async fn once_the_token_budget_is_spent_the_remaining_items_fail_with_a_clear_reason() {
    let server = FakeServer::start(|_, _| {
        Reply::json(
            200,
            completion(
                "A short and specific description of the page for search results.",
                100,
                50,
            ),
        )
    })
    .await;
    let w = world();
    let items = (0..4)
        .map(|i| text_item(&format!("p{i}"), "We make handmade ceramic bowls in Porto."))
        .collect();
    let job = launched(&w, spec(JobKind::MetaDescription, items, Some(250))).await;
    let cfg = WorkerConfig {
        concurrency: 1,
        ..cfg()
    };
    let outcome = run(&w, &backend(&server, Duration::from_secs(5), 1), job, &cfg)
        .await
        .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        items_ok,
        items_failed,
        usage,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((items_ok, items_failed), (2, 2));
    assert_eq!(
        server.seen().len(),
        2,
        "no model call once the budget is spent"
    );
    let lines = results(&w, &result_uri).await;
    for line in &lines[2..] {
        let reason = line.error.as_deref().unwrap();
        assert!(
            reason.contains("token budget spent") && reason.contains("max_tokens is 250"),
            "{reason}"
        );
    }
    assert_eq!(usage.input_tokens + usage.output_tokens, 300);
    assert_usage_adds_up(&usage, &lines, &cfg);
}

#[tokio::test]
async fn meta_descriptions_ask_for_the_pages_language_and_are_cut_to_155_characters() {
    let long = "Nous fabriquons à la main des bols et des tasses en céramique dans notre atelier de Porto, avec des émaux préparés sur place et cuits au four à bois chaque semaine.";
    assert!(long.chars().count() > 155);
    let server = FakeServer::start(move |_, _| Reply::json(200, completion(long, 400, 60))).await;
    let w = world();
    let page = "<html><head><title>Atelier</title></head><body><p>Nous fabriquons à la main des bols et des tasses en céramique dans notre atelier, avec des émaux que nous préparons nous-mêmes.</p></body></html>";
    let item = jobledger_events::spec::Item {
        id: "fr".into(),
        html: Some(page.into()),
        ..Default::default()
    };
    let job = launched(&w, spec(JobKind::MetaDescription, vec![item], None)).await;
    let outcome = run(
        &w,
        &backend(&server, Duration::from_secs(5), 1),
        job,
        &cfg(),
    )
    .await
    .unwrap();
    let AttemptOutcome::Succeeded { result_uri, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let out = results(&w, &result_uri).await[0].output.clone().unwrap();
    let d = out["description"].as_str().unwrap();
    assert!(d.chars().count() <= 155, "{d}");
    assert!(long.starts_with(d.trim_end_matches('…')), "{d}");
    assert_eq!(out["language"], "fr");
    let seen = server.seen();
    assert!(user_text(&seen[0]).contains("\"fr\""));
    assert_eq!(seen[0].body["max_tokens"], 160);
}

#[tokio::test]
async fn backends_come_from_config_per_kind_and_never_show_the_key() {
    let server = FakeServer::start(|_, _| Reply::json(200, completion(ANALYSIS, 10, 10))).await;
    let ai = AiConfig {
        backend: BackendKind::Builtin,
        per_kind: vec![(JobKind::ContentAnalysis, BackendKind::OpenAi)],
        openai: Some(OpenAiConfig {
            base_url: format!("{}/v1", server.url()),
            model: "gpt-4o-mini".into(),
            api_key: Some(Secret::new(KEY)),
        }),
        ..AiConfig::default()
    };
    let backends = KindBackends::from_config(&ai).await.unwrap();
    assert_eq!(
        jobledger_workers::Backend::name(&backends),
        "builtin+openai"
    );
    assert!(!format!("{backends:?}").contains(KEY));
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::ContentAnalysis,
            vec![text_item("a", "Words about bowls.")],
            None,
        ),
    )
    .await;
    let cfg = WorkerConfig { ai, ..cfg() };
    // run_attempt builds the same backends from cfg.ai.
    let outcome = jobledger_workers::run_attempt(
        &w.store,
        &w.objects,
        job,
        1,
        &cfg,
        tokio::sync::watch::channel(false).1,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, AttemptOutcome::Succeeded { items_ok: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(server.seen().len(), 1);
}
