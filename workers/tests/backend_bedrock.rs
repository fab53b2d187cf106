//! The `bedrock` backend against a local server speaking Converse (REST-JSON
//! `POST /model/{modelId}/converse`): image blocks with their format, max tokens, real response
//! and error shapes, throttling with Retry-After, and usage adding up to `JobSucceeded.usage`.

#![cfg(feature = "bedrock")]
#![allow(clippy::unwrap_used)]

mod backend_support;

use std::time::{Duration, Instant};

use backend_support::*;
use base64::Engine as _;
use image::ImageFormat;
use jobledger_events::JobKind;
use jobledger_workers::backends::ModelBackend;
use jobledger_workers::backends::bedrock::BedrockChat;
use jobledger_workers::backends::pricing::PriceTable;
use jobledger_workers::backends::retry::CallPolicy;
use jobledger_workers::{AttemptOutcome, WorkerConfig, WorkerError};
use serde_json::{Value, json};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// A Converse reply exactly as bedrock-runtime returns it.
fn converse(text: &str, input: u64, output: u64) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output},
        "metrics": {"latencyMs": 412}
    })
}

/// A REST-JSON service error: the code travels in `x-amzn-ErrorType`.
fn aws_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"message": message})).header(
        "x-amzn-errortype",
        &format!("{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    )
}

async fn backend(server: &FakeServer, timeout: Duration) -> ModelBackend<BedrockChat> {
    // Tests cannot set process variables (no unsafe here), so the endpoint is given to the loader;
    // in the worker the same loader reads AWS_ENDPOINT_URL_BEDROCK_RUNTIME.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .test_credentials()
        .endpoint_url(server.url())
        .load()
        .await;
    let policy = CallPolicy {
        base_delay: Duration::from_millis(10),
        ..CallPolicy::new(timeout, 2, 3, Duration::from_secs(10))
    };
    ModelBackend::new(BedrockChat::new(&sdk, MODEL.into()), policy)
}

#[tokio::test]
async fn image_alt_sends_image_blocks_and_usage_adds_up_to_the_jobs_usage() {
    let server = FakeServer::start(|n, _| match n {
        0 => aws_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )
        .header("retry-after", "1"),
        1 => aws_error(
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        2 => Reply::json(
            200,
            converse("Picture of a smooth gradient from navy to pink", 1570, 15),
        ),
        _ => Reply::json(
            200,
            converse("Square gradient in blue and magenta", 1490, 11),
        ),
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
    let started = Instant::now();
    let outcome = run(
        &w,
        &backend(&server, Duration::from_secs(5)).await,
        job,
        &cfg,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let AttemptOutcome::Succeeded {
        result_uri,
        usage,
        items_ok: 2,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };

    let seen = server.seen();
    assert_eq!(
        seen.len(),
        4,
        "throttled once, 503 once, then one call per item"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for (req, (bytes, format)) in seen[2..].iter().zip([(&png, "png"), (&jpg, "jpeg")]) {
        assert_eq!(req.method, "POST");
        // The model id is a path label, so its `:` is percent-encoded on the wire.
        assert_eq!(
            req.path,
            format!("/model/{}/converse", MODEL.replace(':', "%3A"))
        );
        assert!(
            req.headers["authorization"]
                .to_str()
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256 Credential=")
        );
        let content = &req.body["messages"][0]["content"];
        assert_eq!(req.body["messages"][0]["role"], "user");
        assert_eq!(content[0]["image"]["format"], format);
        assert_eq!(content[0]["image"]["source"]["bytes"], b64.encode(bytes));
        assert!(content[1]["text"].as_str().unwrap().contains("alt text"));
        assert!(
            req.body["system"][0]["text"]
                .as_str()
                .unwrap()
                .contains("125 characters")
        );
        assert_eq!(req.body["inferenceConfig"]["maxTokens"], 120);
    }
    let lines = results(&w, &result_uri).await;
    assert_eq!(
        lines[0].output.as_ref().unwrap()["alt_text"],
        "A smooth gradient from navy to pink"
    );
    let price = PriceTable::embedded().model(MODEL).unwrap();
    assert_eq!(lines[0].usage.model.as_deref(), Some(MODEL));
    assert!((lines[0].usage.cost_usd - price.cost(1570, 15)).abs() < 1e-12);
    assert_eq!(usage, succeeded_usage(&w, job).await);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (1570 + 1490, 15 + 11)
    );
    assert_usage_adds_up(&usage, &lines, &cfg);
}

#[tokio::test]
async fn text_kinds_send_text_and_a_malformed_analysis_fails_the_item_after_one_retry() {
    let server = FakeServer::start(|_, _| {
        Reply::json(200, converse("I think the topics are bowls.", 700, 9))
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
        &backend(&server, Duration::from_secs(5)).await,
        job,
        &cfg(),
    )
    .await
    .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        usage,
        items_failed: 1,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let content = &seen[0].body["messages"][0]["content"];
    assert_eq!(content.as_array().unwrap().len(), 1);
    assert!(
        content[0]["text"]
            .as_str()
            .unwrap()
            .contains("handmade bowls in Porto")
    );
    assert_eq!(seen[0].body["inferenceConfig"]["maxTokens"], 900);
    let lines = results(&w, &result_uri).await;
    assert!(
        lines[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not the JSON object")
    );
    assert_eq!(usage.input_tokens, 1400);
    assert_usage_adds_up(&usage, &lines, &cfg());
}

#[tokio::test]
async fn access_denied_fails_the_attempt_and_a_validation_error_fails_the_item() {
    let server = FakeServer::start(|_, _| {
        aws_error(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        )
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            vec![text_item("p", "Page text here.")],
            None,
        ),
    )
    .await;
    let err = run(
        &w,
        &backend(&server, Duration::from_secs(5)).await,
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
    assert!(err.to_string().contains("AccessDeniedException"), "{err}");
    assert_eq!(server.seen().len(), 1);

    let server = FakeServer::start(|_, _| {
        aws_error(
            400,
            "ValidationException",
            "The model returned the following errors: image exceeds 5 MB maximum",
        )
    })
    .await;
    let w = world();
    let png = image_bytes(20, 20, ImageFormat::Png);
    let job = launched(
        &w,
        spec(JobKind::ImageAlt, vec![image_item("big", &png)], None),
    )
    .await;
    let outcome = run(
        &w,
        &backend(&server, Duration::from_secs(5)).await,
        job,
        &cfg(),
    )
    .await
    .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        items_failed: 1,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        results(&w, &result_uri).await[0]
            .error
            .as_deref()
            .unwrap()
            .contains("image exceeds 5 MB")
    );
}

#[tokio::test]
async fn a_slow_converse_call_times_out_and_the_attempt_fails_as_retryable() {
    let server = FakeServer::start(|_, _| {
        Reply::json(200, converse("late", 1, 1)).after(Duration::from_secs(3))
    })
    .await;
    let w = world();
    let job = launched(
        &w,
        spec(
            JobKind::MetaDescription,
            vec![text_item("p", "Page text here.")],
            None,
        ),
    )
    .await;
    let b = backend(&server, Duration::from_millis(300)).await;
    let err = run(&w, &b, job, &cfg()).await.unwrap_err();
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
}
