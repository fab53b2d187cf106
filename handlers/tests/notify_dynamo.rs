//! `DynamoNotifyStore` and the Secrets Manager tokens of the `notifier` Lambda, on moto (run under
//! `scripts/with-moto`): the same state-store cases as `SqliteNotifyStore`, conditional writes,
//! corrupt items, and cold-start secrets that fail naming the ARN, never the value.
#![cfg(feature = "aws")]

mod notify_support;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jobledger_events::JobId;
use jobledger_handlers::aws::config::NotifierLambdaConfig;
use jobledger_handlers::aws::sdk_config;
use jobledger_handlers::notify::secrets::{fetch_secret, lambda_notifier_config};
use jobledger_handlers::notify::{DynamoNotifyStore, NotifyStateStore, SinkState, StateError};
use jobledger_testsupport::moto;

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str =
    "scripts/with-moto cargo test -p jobledger-handlers --features aws --test notify_dynamo";

fn require_moto() {
    moto::endpoint(RUN_AS);
}

async fn store() -> DynamoNotifyStore {
    require_moto();
    let sdk = sdk_config().await;
    let table = moto::unique("notifier-state");
    let store = DynamoNotifyStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    store.create_table().await.expect("create table");
    store
}

#[tokio::test]
async fn the_dynamo_store_keeps_the_notifier_state_promises() {
    let store = store().await;
    notify_support::conformance(&store).await;
    // Creating the table again (a second cold start of a test stack) is fine.
    store.create_table().await.expect("create again");
}

#[tokio::test]
async fn a_stale_invocation_cannot_overwrite_a_newer_state_it_never_read() {
    let store = store().await;
    let job = JobId::new();
    // Invocation A read the default state and is slow; B delivered versions 1..=4 meanwhile.
    let b = SinkState {
        last_version: 4,
        external_id: Some("page-b".into()),
        message_version: 4,
        ..SinkState::default()
    };
    assert!(store.put("notion", job, &b).await.expect("put"));
    let a = SinkState {
        last_version: 2,
        external_id: Some("page-a".into()),
        message_version: 2,
        ..SinkState::default()
    };
    assert!(!store.put("notion", job, &a).await.expect("conditional put"));
    assert_eq!(store.get("notion", job).await.expect("get"), b);
}

#[tokio::test]
async fn a_corrupt_item_is_reported_not_read_as_a_default() {
    let store = store().await;
    let job = JobId::new();
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    client
        .put_item()
        .table_name(store.table())
        .item("job_id", AttributeValue::S(job.to_string()))
        .item("sink", AttributeValue::S("notion".into()))
        .item("last_version", AttributeValue::S("five".into()))
        .send()
        .await
        .expect("raw put");
    let err = store.get("notion", job).await.expect_err("corrupt");
    assert!(
        matches!(&err, StateError::Corrupt(m) if m.contains("last_version")),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_table_is_a_clear_backend_error() {
    require_moto();
    let sdk = sdk_config().await;
    let store = DynamoNotifyStore::new(aws_sdk_dynamodb::Client::new(&sdk), "no-such-table");
    let err = store
        .get("notion", JobId::new())
        .await
        .expect_err("no table");
    let text = err.to_string();
    assert!(
        text.contains("GetItem") && text.contains("ResourceNotFound"),
        "{text}"
    );
    assert!(!err.is_retryable());
}

async fn secrets_client() -> aws_sdk_secretsmanager::Client {
    require_moto();
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
}

async fn create_secret(client: &aws_sdk_secretsmanager::Client, value: &str) -> String {
    client
        .create_secret()
        .name(format!("jobledger/{}", uuid::Uuid::now_v7().simple()))
        .secret_string(value)
        .send()
        .await
        .expect("create secret")
        .arn()
        .expect("arn")
        .to_string()
}

fn lambda_env(pairs: &[(&str, &str)]) -> NotifierLambdaConfig {
    let mut env: HashMap<String, String> = HashMap::from([
        ("EVENTS_TABLE".into(), "events".into()),
        ("NOTIFIER_STATE_TABLE".into(), "notifier-state".into()),
        ("RESULTS_BUCKET".into(), "results".into()),
    ]);
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    NotifierLambdaConfig::from_lookup(|k| env.get(k).cloned()).expect("config")
}

#[tokio::test]
async fn tokens_are_read_from_secrets_manager_once_and_never_printed() {
    let client = secrets_client().await;
    let slack = create_secret(&client, "xoxb-moto-slack-token\n").await;
    let notion = create_secret(&client, "ntn_moto_notion_token").await;
    assert_eq!(
        fetch_secret(&client, &slack).await.expect("slack").expose(),
        "xoxb-moto-slack-token",
        "surrounding whitespace is dropped"
    );
    let config = lambda_env(&[
        ("SLACK_CHANNEL", "C0JOBS"),
        ("SLACK_SECRET_ARN", &slack),
        ("NOTION_DATABASE_ID", "db-1"),
        ("NOTION_SECRET_ARN", &notion),
    ]);
    let notify = lambda_notifier_config(&config, &client)
        .await
        .expect("resolved");
    let bot = notify.slack_bot.clone().expect("slack bot configured");
    assert_eq!(
        (bot.token.expose(), bot.channel.as_str()),
        ("xoxb-moto-slack-token", "C0JOBS")
    );
    let notion_config = notify.notion.clone().expect("notion configured");
    assert_eq!(notion_config.token.expose(), "ntn_moto_notion_token");
    assert_eq!(notion_config.database_id, "db-1");
    let printed = format!("{notify:?} {config:?}");
    assert!(!printed.contains("moto-slack-token") && !printed.contains("moto_notion_token"));

    // Only the configured sinks' secrets are read: Notion off, its ARN may point anywhere.
    let slack_only = lambda_env(&[
        ("SLACK_CHANNEL", "C0JOBS"),
        ("SLACK_SECRET_ARN", &slack),
        (
            "NOTION_SECRET_ARN",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:gone-AbCdEf",
        ),
    ]);
    let notify = lambda_notifier_config(&slack_only, &client)
        .await
        .expect("resolved");
    assert!(notify.notion.is_none() && notify.slack_bot.is_some());
}

#[tokio::test]
async fn a_missing_or_empty_secret_fails_the_cold_start_naming_the_arn_only() {
    let client = secrets_client().await;
    let slack = create_secret(&client, "xoxb-present-token").await;
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:jobledger/notion-AbCdEf";
    let config = lambda_env(&[
        ("SLACK_CHANNEL", "C0JOBS"),
        ("SLACK_SECRET_ARN", &slack),
        ("NOTION_DATABASE_ID", "db-1"),
        ("NOTION_SECRET_ARN", missing),
    ]);
    let err = lambda_notifier_config(&config, &client)
        .await
        .expect_err("missing secret");
    assert_eq!(err.arn, missing);
    let text = err.to_string();
    assert!(
        text.contains(missing) && text.contains("ResourceNotFoundException"),
        "{text}"
    );
    assert!(!text.contains("xoxb-present-token"));

    let blank = create_secret(&client, "   ").await;
    let err = fetch_secret(&client, &blank)
        .await
        .expect_err("blank secret");
    assert!(err.to_string().contains("empty"), "{err}");

    let binary = client
        .create_secret()
        .name(format!("jobledger/{}", uuid::Uuid::now_v7().simple()))
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(
            b"\x00token".to_vec(),
        ))
        .send()
        .await
        .expect("binary secret")
        .arn()
        .expect("arn")
        .to_string();
    let err = fetch_secret(&client, &binary)
        .await
        .expect_err("binary secret");
    assert!(err.to_string().contains("no SecretString"), "{err}");
}

/// Secrets Manager refusing the role (moto does not enforce IAM, so a local server answers as AWS
/// does: HTTP 400 with an `AccessDeniedException` body).
async fn serve_access_denied() -> String {
    async fn deny(headers: HeaderMap) -> axum::response::Response {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(target, "secretsmanager.GetSecretValue");
        let mut r = (
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "__type": "AccessDeniedException",
                "Message": "User: arn:aws:sts::123456789012:assumed-role/notifier is not authorized to perform: secretsmanager:GetSecretValue"
            })
            .to_string(),
        )
            .into_response();
        r.headers_mut().insert(
            "content-type",
            "application/x-amz-json-1.1".parse().expect("header"),
        );
        r
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(deny))
            .await
            .expect("serve")
    });
    url
}

#[tokio::test]
async fn a_forbidden_secret_fails_the_cold_start_naming_the_arn() {
    let url = serve_access_denied().await;
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(url)
        .build();
    let client = aws_sdk_secretsmanager::Client::from_conf(conf);
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:jobledger/slack-AbCdEf";
    let config = lambda_env(&[("SLACK_CHANNEL", "C0JOBS"), ("SLACK_SECRET_ARN", arn)]);
    let err = lambda_notifier_config(&config, &client)
        .await
        .expect_err("forbidden");
    let text = err.to_string();
    assert!(
        text.contains(arn) && text.contains("AccessDeniedException"),
        "{text}"
    );
}
