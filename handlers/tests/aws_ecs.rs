//! `EcsTaskLauncher`: the `RunTask` request it sends and how it reads ECS's answers.
//!
//! Two backends: a fake ECS endpoint on 127.0.0.1 (to answer what moto never does: no Spot
//! capacity, throttling, 5xx) that also records each request; and moto's ECS (run under
//! `scripts/with-moto`) for a real cluster, task definition and `DescribeTasks`.
#![cfg(feature = "aws")]

use std::sync::{Arc, Mutex};

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jobledger_events::JobId;
use jobledger_events::event::Capacity;
use jobledger_handlers::aws::{EcsConfig, EcsTaskLauncher};
use jobledger_handlers::ports::TaskLauncher;
use jobledger_testsupport::moto;
use serde_json::{Value, json};
use uuid::Uuid;

type Recorded = Arc<Mutex<Vec<Value>>>;

/// A fake ECS endpoint answering each `RunTask` with the next canned `(status, body)`.
async fn fake_ecs(answers: Vec<(u16, Value)>) -> (EcsTaskLauncher, Recorded) {
    let recorded: Recorded = Arc::default();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let seen = recorded.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            let answers = answers.clone();
            async move {
                let target = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                assert!(target.ends_with(".RunTask"), "unexpected call {target}");
                seen.lock()
                    .expect("lock")
                    .push(serde_json::from_str(&body).expect("JSON request"));
                let (status, body) = answers
                    .lock()
                    .expect("lock")
                    .next()
                    .expect("a canned answer for every call");
                (
                    StatusCode::from_u16(status).expect("status"),
                    [("content-type", "application/x-amz-json-1.1")],
                    body.to_string(),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(url)
        // One request per call, so the canned answers line up (the SDK retries throttling itself).
        .retry_config(RetryConfig::disabled())
        .build();
    let launcher = EcsTaskLauncher::new(
        aws_sdk_ecs::Client::from_conf(conf),
        config("c", "worker:1"),
    );
    (launcher, recorded)
}

fn config(cluster: &str, task_definition: &str) -> EcsConfig {
    EcsConfig {
        cluster: cluster.into(),
        task_definition: task_definition.into(),
        container_name: "worker".into(),
        subnets: vec!["subnet-1".into(), "subnet-2".into()],
        security_groups: vec!["sg-1".into()],
    }
}

fn started(arn: &str) -> (u16, Value) {
    (200, json!({"tasks": [{"taskArn": arn}], "failures": []}))
}

fn no_capacity() -> (u16, Value) {
    (
        200,
        json!({"tasks": [], "failures": [{"reason": "Capacity is unavailable at this time. Please try again later or in a different availability zone"}]}),
    )
}

fn env_of(request: &Value) -> Vec<(String, String)> {
    request["overrides"]["containerOverrides"][0]["environment"]
        .as_array()
        .expect("environment")
        .iter()
        .map(|kv| {
            (
                kv["name"].as_str().unwrap_or_default().to_string(),
                kv["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_launch_asks_for_spot_with_the_attempts_token_overrides_network_and_tags() {
    let (launcher, recorded) = fake_ecs(vec![started("arn:task/1")]).await;
    let job = JobId::new();
    let launched = launcher.launch(job, 2).await.expect("launch");
    assert_eq!(launched.task_arn, "arn:task/1");
    assert_eq!(launched.capacity, Capacity::FargateSpot);

    let requests = recorded.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r["clientToken"], format!("{job}-2"));
    assert_eq!(r["cluster"], "c");
    assert_eq!(r["taskDefinition"], "worker:1");
    assert_eq!(r["count"], 1);
    assert_eq!(
        r["capacityProviderStrategy"],
        json!([{"capacityProvider": "FARGATE_SPOT", "weight": 1}])
    );
    assert!(
        r.get("launchType").is_none(),
        "a strategy excludes launchType"
    );
    let vpc = &r["networkConfiguration"]["awsvpcConfiguration"];
    assert_eq!(vpc["subnets"], json!(["subnet-1", "subnet-2"]));
    assert_eq!(vpc["securityGroups"], json!(["sg-1"]));
    assert_eq!(r["overrides"]["containerOverrides"][0]["name"], "worker");
    assert_eq!(
        env_of(r),
        vec![
            ("JOB_ID".to_string(), job.to_string()),
            ("ATTEMPT".to_string(), "2".to_string())
        ]
    );
    assert_eq!(
        r["tags"],
        json!([{"key": "job_id", "value": job.to_string()}, {"key": "attempt", "value": "2"}])
    );
}

#[tokio::test]
async fn without_spot_capacity_the_launch_falls_back_to_on_demand_fargate() {
    let (launcher, recorded) = fake_ecs(vec![no_capacity(), started("arn:task/od")]).await;
    let job = JobId::new();
    let launched = launcher.launch(job, 1).await.expect("launch on demand");
    assert_eq!(launched.capacity, Capacity::Fargate);
    assert_eq!(launched.task_arn, "arn:task/od");
    let requests = recorded.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1]["capacityProviderStrategy"][0]["capacityProvider"],
        "FARGATE"
    );
    assert_eq!(requests[1]["clientToken"], format!("{job}-1-ondemand"));
    assert_eq!(env_of(&requests[1]), env_of(&requests[0]));
}

#[tokio::test]
async fn no_capacity_anywhere_is_retryable() {
    let (launcher, _) = fake_ecs(vec![no_capacity(), no_capacity()]).await;
    let err = launcher
        .launch(JobId::new(), 1)
        .await
        .expect_err("no capacity");
    assert!(err.retryable, "{err}");
    assert!(err.reason.contains("Capacity is unavailable"), "{err}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retryable_and_client_errors_permanent() {
    let throttled = (
        400,
        json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
    );
    let (launcher, _) = fake_ecs(vec![throttled]).await;
    let err = launcher
        .launch(JobId::new(), 1)
        .await
        .expect_err("throttled");
    assert!(err.retryable, "{err}");
    assert!(err.reason.contains("ThrottlingException"), "{err}");

    let server = (500, json!({"__type": "ServerException", "message": "oops"}));
    let (launcher, _) = fake_ecs(vec![server]).await;
    assert!(
        launcher
            .launch(JobId::new(), 1)
            .await
            .expect_err("5xx")
            .retryable
    );

    let client = (
        400,
        json!({"__type": "ClientException", "message": "TaskDefinition not found."}),
    );
    let (launcher, _) = fake_ecs(vec![client]).await;
    let err = launcher.launch(JobId::new(), 1).await.expect_err("4xx");
    assert!(!err.retryable, "{err}");

    let missing = (
        200,
        json!({"tasks": [], "failures": [{"arn": "arn:subnet", "reason": "MISSING"}]}),
    );
    let (launcher, _) = fake_ecs(vec![missing]).await;
    assert!(
        !launcher
            .launch(JobId::new(), 1)
            .await
            .expect_err("MISSING")
            .retryable
    );
}

// ---- moto ----

/// How to run this file, for the message when moto is missing (it needs moto's ECS and EC2).
const RUN_AS: &str =
    "scripts/with-moto cargo test -p jobledger-handlers --features aws --test aws_ecs";

async fn sdk() -> aws_config::SdkConfig {
    moto::endpoint(RUN_AS);
    jobledger_handlers::aws::sdk_config().await
}

async fn ec2_ids(action: &str, tag: &str) -> Vec<String> {
    moto::ec2_ids(&moto::endpoint(RUN_AS), action, tag).await
}

/// A cluster and a task definition (container-level memory: moto's RunTask needs it), on moto's
/// default VPC subnets and default security group (RunTask checks subnets exist in its EC2).
async fn moto_launcher() -> (EcsTaskLauncher, aws_sdk_ecs::Client, EcsConfig) {
    let client = aws_sdk_ecs::Client::new(&sdk().await);
    let suffix = Uuid::now_v7().simple().to_string();
    let cluster = format!("jobs-{suffix}");
    client
        .create_cluster()
        .cluster_name(&cluster)
        .capacity_providers("FARGATE")
        .capacity_providers("FARGATE_SPOT")
        .send()
        .await
        .expect("create cluster");
    let family = format!("worker-{suffix}");
    client
        .register_task_definition()
        .family(&family)
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .cpu("256")
        .memory("512")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("worker")
                .image("jobledger/worker:test")
                .memory(512)
                .essential(true)
                .build(),
        )
        .send()
        .await
        .expect("register task definition");
    let subnets = ec2_ids("DescribeSubnets", "subnetId").await;
    let groups = ec2_ids("DescribeSecurityGroups", "groupId").await;
    assert!(
        !subnets.is_empty() && !groups.is_empty(),
        "moto's default VPC has subnets and a security group"
    );
    let config = EcsConfig {
        cluster,
        task_definition: family,
        container_name: "worker".into(),
        subnets: subnets.into_iter().take(2).collect(),
        security_groups: groups.into_iter().take(1).collect(),
    };
    (
        EcsTaskLauncher::new(client.clone(), config.clone()),
        client,
        config,
    )
}

#[tokio::test]
async fn on_moto_the_task_runs_the_attempt_with_its_overrides_and_tags() {
    let (launcher, client, config) = moto_launcher().await;
    let job = JobId::new();
    let launched = launcher.launch(job, 3).await.expect("RunTask on moto");
    assert_eq!(launched.capacity, Capacity::FargateSpot);

    let described = client
        .describe_tasks()
        .cluster(&config.cluster)
        .tasks(&launched.task_arn)
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .expect("DescribeTasks");
    let task = &described.tasks()[0];
    let overrides = task.overrides().expect("overrides");
    let worker = &overrides.container_overrides()[0];
    assert_eq!(worker.name(), Some("worker"));
    let env: Vec<(&str, &str)> = worker
        .environment()
        .iter()
        .map(|kv| {
            (
                kv.name().unwrap_or_default(),
                kv.value().unwrap_or_default(),
            )
        })
        .collect();
    let job_text = job.to_string();
    assert_eq!(env, vec![("JOB_ID", job_text.as_str()), ("ATTEMPT", "3")]);
    let tags: Vec<(&str, &str)> = task
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
        .collect();
    assert!(tags.contains(&("job_id", job_text.as_str())), "{tags:?}");
    assert!(tags.contains(&("attempt", "3")), "{tags:?}");
}

#[tokio::test]
async fn on_moto_an_unknown_task_definition_is_a_permanent_failure() {
    let (_, client, mut config) = moto_launcher().await;
    config.task_definition = format!("missing-{}", Uuid::now_v7().simple());
    let launcher = EcsTaskLauncher::new(client, config);
    let err = launcher
        .launch(JobId::new(), 1)
        .await
        .expect_err("no such task definition");
    assert!(!err.retryable, "{err}");
}
