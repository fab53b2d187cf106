//! The AWS path end to end on moto, with no Docker (run under `scripts/with-moto`):
//!
//! api Lambda (an API Gateway REST proxy event) → DynamoDB events table → its stream, read back
//! with DynamoDB Streams and handed to the dispatcher and projector glue as Lambda delivers it →
//! SQS FIFO, received and handed to the launcher glue → `RunTask` on moto's ECS → the worker
//! library, run as the launched task would (its `JOB_ID`/`ATTEMPT` read back with `DescribeTasks`)
//! against DynamoDB and S3 → the stream again, until the job is terminal.
//!
//! Every test builds its own tables, bucket, queue, cluster and task definition, so the tests run
//! in parallel on one moto server. Moto invokes no Lambda: the test plays the event source
//! mappings (it deletes the SQS messages a launcher batch did not report as failed, as Lambda does).
//!
//! Moto gaps worked around here only: a `TransactWriteItems` that fails a condition detaches open
//! stream iterators (see [`StreamReader`]); its ECS ignores `clientToken` (so "one `RunTask` per
//! attempt" is counted at the SDK boundary by [`RunTaskTap`]); it cannot be made to throttle (so
//! [`RunTaskTap`] sends the throttled `RunTask` to a local endpoint that answers
//! `ThrottlingException`, and moto never sees it); `RunTask` needs existing subnets and a
//! security group, read from moto's default VPC.
#![cfg(feature = "aws")]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_lambda_events::event::streams::{DynamoDbEventResponse, SqsEventResponse};
use aws_sdk_ecs::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use jobledger_events::chain::verify_chain;
use jobledger_events::{
    DynamoEventStore, EventStore, EventsTables, JobEvent, JobId, RecordedEvent, Status,
};
use jobledger_handlers::api::{ApiState, Authenticator};
use jobledger_handlers::aws::functions::gateway_service;
use jobledger_handlers::aws::glue;
use jobledger_handlers::aws::{EcsConfig, EcsTaskLauncher, SqsJobQueue};
use jobledger_handlers::launch::LaunchPolicy;
use jobledger_handlers::ports::{JobMessage, JobQueue, SystemTime};
use jobledger_projections::{DynamoJobViews, JobView, ViewStore};
use jobledger_testsupport::http::{FakeServer, Reply};
use jobledger_testsupport::moto;
use jobledger_testsupport::streams::StreamReader;
use jobledger_workers::{AttemptOutcome, ObjectStore, S3ObjectStore, WorkerEnv, run_attempt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower::util::BoxCloneService;
use uuid::Uuid;

// ---- the API Gateway side ----

/// The `api` Lambda's service, boxed so the stack can hold it.
type ApiService = BoxCloneService<lambda_http::Request, Response, Infallible>;

/// A REST proxy event for `method path` on stage `prod`, built from the recorded API Gateway
/// event in `fixtures/aws/apigw_submit.json` (its `requestContext.identity.apiKeyId` is the key id
/// API Gateway resolved), and decoded the way `lambda_http` decodes what Lambda hands it.
fn gateway_request(
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> lambda_http::Request {
    let file = format!(
        "{}/tests/fixtures/aws/apigw_submit.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut event: Value = serde_json::from_str(&text).expect("fixture is JSON");
    event["httpMethod"] = json!(method);
    event["path"] = json!(path);
    event["pathParameters"] = json!({ "proxy": path.trim_start_matches('/') });
    event["requestContext"]["httpMethod"] = json!(method);
    event["requestContext"]["path"] = json!(format!("/prod{path}"));
    event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
    for (name, value) in headers {
        event["headers"][*name] = json!(value);
        event["multiValueHeaders"][*name] = json!([value]);
    }
    lambda_http::request::from_str(&event.to_string()).expect("lambda_http decodes the event")
}

// ---- the ECS boundary ----

/// Watches every `RunTask` the launcher's ECS client sends: records its request (moto's ECS
/// ignores `clientToken`, so the count here is what proves one `RunTask` per attempt), and sends
/// the next `throttle` of them to a local endpoint answering `ThrottlingException` instead of moto.
#[derive(Debug, Default)]
struct TapState {
    /// Bodies of the `RunTask` requests that reached moto.
    sent: Mutex<Vec<Value>>,
    /// Bodies of the `RunTask` requests answered with throttling.
    throttled: Mutex<Vec<Value>>,
    /// How many more `RunTask`s to throttle.
    throttle: AtomicU32,
    /// The local endpoint that throttles.
    throttle_url: String,
}

/// The interceptor around [`TapState`].
#[derive(Clone, Debug)]
struct RunTaskTap(Arc<TapState>);

impl Intercept for RunTaskTap {
    fn name(&self) -> &'static str {
        "RunTaskTap"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request_mut();
        let run_task = request
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".RunTask"));
        if !run_task {
            return Ok(());
        }
        let body: Value = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let throttle = self
            .0
            .throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttle {
            self.0.throttled.lock().expect("lock").push(body);
            request.set_uri(self.0.throttle_url.as_str())?;
        } else {
            self.0.sent.lock().expect("lock").push(body);
        }
        Ok(())
    }
}

impl RunTaskTap {
    fn sent(&self) -> Vec<Value> {
        self.0.sent.lock().expect("lock").clone()
    }

    fn throttled(&self) -> Vec<Value> {
        self.0.throttled.lock().expect("lock").clone()
    }

    fn throttle_next(&self, n: u32) {
        self.0.throttle.store(n, Ordering::SeqCst);
    }
}

/// A local endpoint that answers every call as ECS does when it throttles.
async fn throttling_endpoint() -> String {
    let server = FakeServer::start(|_, _| {
        Reply::json(
            400,
            json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
        )
        .header("content-type", "application/x-amz-json-1.1")
    })
    .await;
    format!("{}/", server.url())
}

// ---- the DynamoDB stream side ----

fn stream_failures(response: &DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

fn sqs_failures(response: &SqsEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

// ---- the stack ----

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str =
    "scripts/with-moto cargo nextest run -p jobledger-handlers --all-features --test aws_e2e";

/// One deployment on moto: every resource named uniquely for one test.
struct Stack {
    /// The `api` function's ledger: events, idempotency keys, payload bucket.
    api_store: DynamoEventStore,
    /// The dispatcher's, projector's and launcher's ledger: the events table only (as Terraform
    /// configures them).
    store: DynamoEventStore,
    /// The worker's ledger: events and payload bucket.
    worker_store: DynamoEventStore,
    views: DynamoJobViews,
    objects: S3ObjectStore,
    queue: SqsJobQueue,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    /// An ECS client without the tap, for looking.
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    launcher: EcsTaskLauncher,
    tap: RunTaskTap,
    api: ApiService,
    stream: StreamReader,
    /// Tasks the test already ran a worker for.
    ran: HashSet<String>,
}

/// The resources of one deployment, by name.
struct Names {
    events: String,
    idempotency: String,
    jobs: String,
    bucket: String,
    queue_url: String,
    cluster: String,
    task_definition: String,
    container: String,
    subnets: Vec<String>,
    security_groups: Vec<String>,
}

impl Names {
    /// The names `terraform output -json` reports (the data plane `scripts/check-terraform` applies).
    fn from_terraform_outputs(path: &str) -> Names {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let outputs: Value = serde_json::from_str(&text).expect("terraform output -json");
        let text_of = |name: &str| -> String {
            outputs[name]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("terraform output {name} is missing or not a string"))
                .to_string()
        };
        let subnets: Vec<String> = outputs["worker_subnet_ids"]["value"]
            .as_array()
            .expect("terraform output worker_subnet_ids")
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        Names {
            events: text_of("events_table_name"),
            idempotency: text_of("idempotency_table_name"),
            jobs: text_of("jobs_table_name"),
            bucket: text_of("results_bucket_name"),
            queue_url: text_of("jobs_queue_url"),
            cluster: text_of("ecs_cluster_name"),
            task_definition: text_of("worker_task_definition_arn"),
            container: text_of("worker_container_name"),
            subnets,
            security_groups: vec![text_of("worker_security_group_id")],
        }
    }
}

impl Stack {
    /// A deployment of its own, created on moto with unique names.
    async fn new() -> Stack {
        let endpoint = moto::endpoint(RUN_AS);
        let sdk = jobledger_handlers::aws::sdk_config().await;
        let suffix = Uuid::now_v7().simple().to_string();
        let name = |what: &str| format!("e2e-{what}-{suffix}");

        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let (events, idempotency, bucket) = (name("events"), name("idempotency"), name("results"));
        DynamoEventStore::new(
            dynamo.clone(),
            jobledger_handlers::aws::s3_client(&sdk),
            EventsTables::new(&events, &idempotency, &bucket),
        )
        .create_tables()
        .await
        .expect("ledger tables");
        DynamoJobViews::new(dynamo, name("jobs"))
            .create_table()
            .await
            .expect("jobs table");

        let queue_url = aws_sdk_sqs::Client::new(&sdk)
            .create_queue()
            .queue_name(format!("{}.fifo", name("jobs")))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "60")
            .send()
            .await
            .expect("FIFO queue")
            .queue_url
            .expect("queue url");

        let ecs = aws_sdk_ecs::Client::new(&sdk);
        let cluster = name("cluster");
        ecs.create_cluster()
            .cluster_name(&cluster)
            .capacity_providers("FARGATE")
            .capacity_providers("FARGATE_SPOT")
            .send()
            .await
            .expect("cluster");
        let family = name("worker");
        ecs.register_task_definition()
            .family(&family)
            .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
            .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
            .cpu("256")
            .memory("512")
            .container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name("worker")
                    .image("jobledger/worker:e2e")
                    // moto's RunTask answers 500 without a container-level memory.
                    .memory(512)
                    .essential(true)
                    .build(),
            )
            .send()
            .await
            .expect("task definition");
        // moto's RunTask checks that the subnets exist in its EC2: use its default VPC's.
        let subnets = moto::ec2_ids(&endpoint, "DescribeSubnets", "subnetId").await;
        let groups = moto::ec2_ids(&endpoint, "DescribeSecurityGroups", "groupId").await;
        assert!(
            !subnets.is_empty() && !groups.is_empty(),
            "moto's default VPC"
        );
        let names = Names {
            events,
            idempotency,
            jobs: name("jobs"),
            bucket,
            queue_url,
            cluster,
            task_definition: family,
            container: "worker".into(),
            subnets: subnets.into_iter().take(2).collect(),
            security_groups: groups.into_iter().take(1).collect(),
        };
        Stack::on(&sdk, names).await
    }

    /// The functions wired to existing resources, as Terraform configures them.
    async fn on(sdk: &aws_config::SdkConfig, names: Names) -> Stack {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let s3 = jobledger_handlers::aws::s3_client(sdk);
        let Names { events, bucket, .. } = &names;
        let api_store = DynamoEventStore::new(
            dynamo.clone(),
            s3.clone(),
            EventsTables::new(events, &names.idempotency, bucket),
        );
        let store = DynamoEventStore::new(
            dynamo.clone(),
            s3.clone(),
            EventsTables::events_only(events),
        );
        let worker_store = DynamoEventStore::new(
            dynamo.clone(),
            s3.clone(),
            EventsTables {
                events: events.clone(),
                idempotency: None,
                payload_bucket: Some(bucket.clone()),
            },
        );
        let views = DynamoJobViews::new(dynamo.clone(), &names.jobs);
        let objects = S3ObjectStore::new(s3, bucket);

        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue_url = names.queue_url.clone();
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("queue arn");
        let queue = SqsJobQueue::new(sqs.clone(), &queue_url);

        let ecs = aws_sdk_ecs::Client::new(sdk);
        let tap = RunTaskTap(Arc::new(TapState {
            throttle_url: throttling_endpoint().await,
            ..TapState::default()
        }));
        let tapped = aws_sdk_ecs::config::Builder::from(sdk)
            .interceptor(tap.clone())
            // In production the SDK retries throttling a few times before the adapter sees it;
            // here each throttled answer stands for those retries being used up.
            .retry_config(RetryConfig::disabled())
            .build();
        let launcher = EcsTaskLauncher::new(
            aws_sdk_ecs::Client::from_conf(tapped),
            EcsConfig {
                cluster: names.cluster.clone(),
                task_definition: names.task_definition.clone(),
                container_name: names.container.clone(),
                subnets: names.subnets.clone(),
                security_groups: names.security_groups.clone(),
            },
        );

        let api = BoxCloneService::new(gateway_service(jobledger_handlers::api::router(
            ApiState::new(
                api_store.clone(),
                views.clone(),
                objects.clone(),
                Authenticator::Gateway,
            ),
        )));

        let stream_arn = dynamo
            .describe_table()
            .table_name(events)
            .send()
            .await
            .expect("DescribeTable")
            .table
            .and_then(|t| t.latest_stream_arn)
            .expect("the events table has a stream");
        let stream =
            StreamReader::open(aws_sdk_dynamodbstreams::Client::new(sdk), stream_arn).await;

        Stack {
            api_store,
            store,
            worker_store,
            views,
            objects,
            queue,
            sqs,
            queue_url,
            queue_arn,
            ecs,
            cluster: names.cluster,
            launcher,
            tap,
            api,
            stream,
            ran: HashSet::new(),
        }
    }

    /// Calls the `api` function; the status and the JSON body.
    async fn call(&self, request: lambda_http::Request) -> (StatusCode, Value) {
        let response = self.api.clone().oneshot(request).await.expect("served");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }

    /// Submits a job through the `api` function and checks the 202; its id.
    async fn submit(&self, job: Value, idempotency_key: &str) -> JobId {
        let request = gateway_request(
            "POST",
            "/jobs",
            Some(&job),
            &[("Idempotency-Key", idempotency_key)],
        );
        let (status, body) = self.call(request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "SUBMITTED", "{body}");
        let id = body["job_id"].as_str().expect("job_id").to_string();
        assert_eq!(body["links"]["self"], format!("/jobs/{id}"), "{body}");
        assert_eq!(
            body["links"]["events"],
            format!("/jobs/{id}/events"),
            "{body}"
        );
        id.parse().expect("a job id")
    }

    /// Hands a stream batch to the dispatcher and the projector (two event source mappings on the
    /// same stream) and checks that neither reports a failure.
    async fn deliver(&self, event: &StreamEvent) {
        let dispatched =
            glue::dispatch_stream(&self.store, &self.store, &self.queue, event, Utc::now()).await;
        assert_eq!(stream_failures(&dispatched), Vec::<String>::new());
        let projected = glue::project_stream(&self.store, &self.store, &self.views, event).await;
        assert_eq!(stream_failures(&projected), Vec::<String>::new());
    }

    /// Reads what the stream has since the last read and delivers it; the batch.
    async fn pump(&mut self) -> StreamEvent {
        let event = self.stream.next().await;
        self.deliver(&event).await;
        event
    }

    /// Receives up to 10 messages from the queue, as the SQS event source would.
    async fn receive(&self) -> SqsEvent {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("ReceiveMessage");
        let records: Vec<Value> = out
            .messages()
            .iter()
            .map(|m| {
                let attributes: Map<String, Value> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_string(), json!(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let text = json!({ "Records": records }).to_string();
        serde_json::from_str(&text).expect("the Lambda SQS event shape")
    }

    /// Runs the launcher function on a batch; the ids it reported as failed.
    async fn launch(&self, event: &SqsEvent) -> Vec<String> {
        let response = glue::launch_sqs(
            &self.store,
            &self.queue,
            &self.launcher,
            event,
            &SystemTime,
            &LaunchPolicy::default(),
        )
        .await
        .expect("a batch Lambda can answer");
        sqs_failures(&response)
    }

    /// What the SQS event source does after an invocation: deletes every message the function did
    /// not report as failed.
    async fn acknowledge(&self, event: &SqsEvent, failed: &[String]) {
        for m in &event.records {
            if failed.contains(m.message_id.as_ref().expect("message id")) {
                continue;
            }
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(m.receipt_handle.as_deref().expect("receipt handle"))
                .send()
                .await
                .expect("DeleteMessage");
        }
    }

    /// Makes a message visible again at once: stands in for its visibility timeout running out.
    async fn expire_visibility(&self, event: &SqsEvent) {
        for m in &event.records {
            self.sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(m.receipt_handle.as_deref().expect("receipt handle"))
                .visibility_timeout(0)
                .send()
                .await
                .expect("ChangeMessageVisibility");
        }
    }

    /// The tasks in the cluster.
    async fn tasks(&self) -> Vec<String> {
        self.ecs
            .list_tasks()
            .cluster(&self.cluster)
            .send()
            .await
            .expect("ListTasks")
            .task_arns()
            .to_vec()
    }

    /// Runs the worker library for every task launched since the last call, as each task would:
    /// its environment is what `RunTask`'s overrides gave it (read back with `DescribeTasks`),
    /// its ledger the DynamoDB table and its objects the S3 bucket.
    async fn run_launched_workers(&mut self) -> Vec<(JobId, AttemptOutcome)> {
        let new: Vec<String> = self
            .tasks()
            .await
            .into_iter()
            .filter(|t| !self.ran.contains(t))
            .collect();
        if new.is_empty() {
            return Vec::new();
        }
        let described = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(new.clone()))
            .send()
            .await
            .expect("DescribeTasks");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut outcomes = Vec::new();
        for task in described.tasks() {
            let arn = task.task_arn().expect("task arn").to_string();
            let worker = task
                .overrides()
                .map(|o| o.container_overrides())
                .unwrap_or_default()
                .iter()
                .find(|c| c.name() == Some("worker"))
                .expect("the worker container's overrides");
            let mut env: HashMap<String, String> = worker
                .environment()
                .iter()
                .filter_map(|kv| Some((kv.name()?.to_string(), kv.value()?.to_string())))
                .collect();
            // What the task definition sets (the ledger and objects are not local on Fargate,
            // but the worker's environment reader wants a data folder).
            let task_id = arn.rsplit('/').next().unwrap_or_default().to_string();
            env.insert("WORKER_ID".into(), format!("ecs-task-{task_id}"));
            env.insert("WORKER_CAPACITY".into(), "FARGATE_SPOT".into());
            env.insert(
                "JOBLEDGER_DATA_DIR".into(),
                data_dir.path().display().to_string(),
            );
            let worker_env =
                WorkerEnv::from_lookup(|n| env.get(n).cloned()).expect("the task's environment");
            let (_stop, stop_rx) = tokio::sync::watch::channel(false);
            let outcome = run_attempt(
                &self.worker_store,
                &self.objects,
                worker_env.job_id,
                worker_env.attempt,
                &worker_env.config,
                stop_rx,
            )
            .await
            .expect("the attempt runs");
            self.ran.insert(arn);
            outcomes.push((worker_env.job_id, outcome));
        }
        assert_eq!(outcomes.len(), new.len(), "every new task was described");
        outcomes
    }

    async fn history(&self, job_id: JobId) -> Vec<RecordedEvent> {
        self.store.load(job_id).await.expect("load the history")
    }

    async fn types(&self, job_id: JobId) -> Vec<String> {
        self.history(job_id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    async fn view(&self, job_id: JobId) -> JobView {
        self.views
            .get(job_id)
            .await
            .expect("read the jobs table")
            .expect("the job has a view")
    }
}

fn noop_job(items: usize) -> Value {
    json!({
        "kind": "noop",
        "items": (0..items).map(|i| json!({"id": format!("item-{i}"), "text": format!("text {i}")})).collect::<Vec<_>>(),
        "max_attempts": 2,
        "metadata": {"test": "aws_e2e"},
    })
}

fn client_token(request: &Value) -> String {
    request["clientToken"]
        .as_str()
        .expect("a clientToken")
        .to_string()
}

// ---- the tests ----

#[tokio::test]
async fn jobs_submitted_through_api_gateway_run_to_succeeded_on_moto() {
    jobs_run_to_succeeded(Stack::new().await).await;
}

/// The same whole path on the data plane `terraform apply` created on moto: `scripts/check-terraform`
/// runs it after the apply with `JOBLEDGER_TF_OUTPUTS` naming `terraform output -json`.
#[tokio::test]
#[ignore = "needs the resources of scripts/check-terraform's apply (JOBLEDGER_TF_OUTPUTS)"]
async fn jobs_run_to_succeeded_on_the_resources_terraform_created() {
    let outputs = std::env::var("JOBLEDGER_TF_OUTPUTS")
        .expect("JOBLEDGER_TF_OUTPUTS names the JSON of `terraform output -json`");
    let sdk = jobledger_handlers::aws::sdk_config().await;
    let names = Names::from_terraform_outputs(&outputs);
    // moto applies the bucket policy, and its `DenyInsecureTransport` statement refuses every
    // request that reaches moto over plain HTTP; on AWS all traffic is HTTPS. (moto gap)
    jobledger_handlers::aws::s3_client(&sdk)
        .delete_bucket_policy()
        .bucket(&names.bucket)
        .send()
        .await
        .expect("DeleteBucketPolicy");
    jobs_run_to_succeeded(Stack::on(&sdk, names).await).await;
}

async fn jobs_run_to_succeeded(mut s: Stack) {
    let noop = s.submit(noop_job(3), "e2e-noop").await;
    // A real kind: the builtin (offline, deterministic) backend writes the descriptions.
    let meta = s
        .submit(
            json!({"kind": "meta_description", "items": [
                {"id": "post-1", "text": "Event sourcing keeps every change to a job as an append-only ledger."},
                {"id": "post-2", "html": "<html><body><h1>Fargate Spot</h1><p>Cheap capacity that can be reclaimed.</p></body></html>"}
            ]}),
            "e2e-meta",
        )
        .await;
    for job in [noop, meta] {
        assert_eq!(s.history(job).await[0].actor, "api-key:gw-key-7");
    }

    // The stream has both JobSubmitted; the dispatcher queues them, the projector creates views.
    let submitted = s.pump().await;
    assert_eq!(submitted.records.len(), 2);
    for job in [noop, meta] {
        assert_eq!(s.types(job).await, ["JobSubmitted", "JobQueued"]);
        assert_eq!(s.view(job).await.status, Status::Submitted);
    }
    s.pump().await;
    assert_eq!(s.view(noop).await.status, Status::Queued);

    // The launcher gets one message per job (one FIFO group each) and starts one task each.
    let messages = s.receive().await;
    assert_eq!(messages.records.len(), 2);
    let groups: HashSet<String> = messages
        .records
        .iter()
        .filter_map(|m| m.attributes.get("MessageGroupId").cloned())
        .collect();
    assert_eq!(groups, HashSet::from([noop.to_string(), meta.to_string()]));
    let failed = s.launch(&messages).await;
    assert!(failed.is_empty(), "{failed:?}");
    s.acknowledge(&messages, &failed).await;
    let tokens: HashSet<String> = s.tap.sent().iter().map(client_token).collect();
    assert_eq!(
        tokens,
        HashSet::from([format!("{noop}-1"), format!("{meta}-1")])
    );
    assert_eq!(s.tasks().await.len(), 2);
    s.pump().await;
    assert_eq!(s.view(noop).await.status, Status::Launching);

    // Each task runs its attempt against DynamoDB and S3.
    let outcomes = s.run_launched_workers().await;
    assert_eq!(outcomes.len(), 2);
    let mut results = HashMap::new();
    for (job, outcome) in outcomes {
        match outcome {
            AttemptOutcome::Succeeded {
                result_uri,
                result_sha256,
                items_ok,
                items_failed,
                ..
            } => {
                assert_eq!(items_failed, 0, "{job}");
                results.insert(job, (result_uri, result_sha256, items_ok));
            }
            other => panic!("job {job}: {other:?}"),
        }
    }

    // The stream carries the workers' events to the projector until both jobs are terminal.
    for _ in 0..5 {
        let batch = s.pump().await;
        if batch.records.is_empty() {
            break;
        }
    }
    for (job, items) in [(noop, 3), (meta, 2)] {
        let (uri, sha, ok) = results.get(&job).expect("an outcome").clone();
        assert_eq!(ok, items);
        let view = s.view(job).await;
        assert_eq!(view.status, Status::Succeeded, "{view:?}");
        assert_eq!(view.result_uri.as_deref(), Some(uri.as_str()));
        assert_eq!(view.progress.done, items);
        let history = s.history(job).await;
        assert_eq!(view.last_version, history.len() as u64);
        assert!(
            verify_chain(&history).is_empty(),
            "{:?}",
            verify_chain(&history)
        );

        // The result object is in S3, and is the file the ledger vouches for.
        assert!(
            uri.starts_with(&format!("s3://{}/", s.objects.bucket())),
            "{uri}"
        );
        let bytes = s.objects.get(&uri).await.expect("the result object");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
        let lines: Vec<Value> = String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len() as u64, items);
        assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
        let succeeded = history
            .iter()
            .find_map(|e| match e.decode() {
                Ok(JobEvent::JobSucceeded(s)) => Some(s),
                _ => None,
            })
            .expect("JobSucceeded");
        assert_eq!(succeeded.result_sha256, sha);

        let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            &types[..4],
            [
                "JobSubmitted",
                "JobQueued",
                "TaskLaunched",
                "AttemptStarted"
            ]
        );
        assert_eq!(types.last(), Some(&"JobSucceeded"));
        let actors: Vec<&str> = history.iter().map(|e| e.actor.as_str()).collect();
        assert_eq!(
            &actors[..3],
            ["api-key:gw-key-7", "system:dispatcher", "system:launcher"]
        );
        assert!(actors[3].starts_with("worker:ecs-task-"), "{actors:?}");
        // The request's correlation id runs through the dispatcher, the launcher and the worker.
        assert!(
            history
                .iter()
                .all(|e| e.correlation_id == history[0].correlation_id),
            "{history:?}"
        );
        assert_eq!(history[2].causation_id, history[0].event_id.to_string());
        assert_eq!(history[3].causation_id, history[2].event_id.to_string());

        // And the API, through API Gateway, reports it.
        let (status, body) = s
            .call(gateway_request("GET", &format!("/jobs/{job}"), None, &[]))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "SUCCEEDED", "{body}");
        assert_eq!(body["result_uri"], uri.as_str(), "{body}");
    }
    assert_eq!(s.tap.sent().len(), 2, "one RunTask per attempt");
    assert!(s.receive().await.records.is_empty(), "the queue is drained");
}

#[tokio::test]
async fn a_rejected_submission_leaves_nothing_in_the_ledger_or_the_queue() {
    let mut s = Stack::new().await;
    let (status, body) = s
        .call(gateway_request(
            "POST",
            "/jobs",
            Some(&json!({"kind": "no_such_kind", "items": [{"id": "a", "text": "x"}]})),
            &[],
        ))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(s.pump().await.records.is_empty(), "nothing was appended");
    assert!(s.receive().await.records.is_empty(), "nothing was queued");
}

#[tokio::test]
async fn duplicate_stream_and_queue_deliveries_change_nothing() {
    let mut s = Stack::new().await;
    let job = s.submit(noop_job(1), "e2e-dup").await;
    let submitted = s.stream.next().await;
    assert_eq!(submitted.records.len(), 1);

    // A first dispatcher invocation sent the message and died before recording JobQueued (so
    // Lambda delivers the batch again): the redelivery sends once more, SQS drops it as a
    // duplicate of the event id, and the ledger records JobQueued once.
    let submitted_id = s.history(job).await[0].event_id;
    s.queue
        .send(&JobMessage::new(job, 1, None, submitted_id))
        .await
        .expect("the first invocation's SendMessage");
    s.deliver(&submitted).await;
    // And twice more, through both functions.
    s.deliver(&submitted).await;
    s.deliver(&submitted).await;
    assert_eq!(s.types(job).await, ["JobSubmitted", "JobQueued"]);

    let queued = s.pump().await;
    assert_eq!(queued.records.len(), 1);
    s.deliver(&queued).await;
    assert_eq!(s.types(job).await, ["JobSubmitted", "JobQueued"]);
    let view = s.view(job).await;
    assert_eq!((view.status, view.last_version), (Status::Queued, 2));

    // One message on the queue; the launcher runs it, but the delete is lost (or the function
    // timed out): the message comes back and is launched "again".
    let first = s.receive().await;
    assert_eq!(first.records.len(), 1, "one message for one event id");
    assert_eq!(s.launch(&first).await, Vec::<String>::new());
    s.expire_visibility(&first).await;
    let second = s.receive().await;
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.records[0].message_id, first.records[0].message_id);
    assert_eq!(
        second.records[0]
            .attributes
            .get("ApproximateReceiveCount")
            .map(String::as_str),
        Some("2")
    );
    let failed = s.launch(&second).await;
    assert!(failed.is_empty(), "{failed:?}");
    s.acknowledge(&second, &failed).await;

    let sent = s.tap.sent();
    assert_eq!(sent.len(), 1, "one RunTask for the attempt: {sent:?}");
    assert_eq!(client_token(&sent[0]), format!("{job}-1"));
    assert_eq!(s.tasks().await.len(), 1);
    let launched = s.pump().await;
    assert_eq!(launched.records.len(), 1);
    assert_eq!(
        s.types(job).await,
        ["JobSubmitted", "JobQueued", "TaskLaunched"]
    );

    // Every batch so far, delivered once more: no message, no event, no view change.
    let before = s.view(job).await;
    for batch in [&submitted, &queued, &launched] {
        s.deliver(batch).await;
    }
    assert_eq!(
        s.types(job).await,
        ["JobSubmitted", "JobQueued", "TaskLaunched"]
    );
    assert!(
        s.receive().await.records.is_empty(),
        "nothing new was queued"
    );
    let after = s.view(job).await;
    assert_eq!(after, before);
    assert_eq!(after.status, Status::Launching);
    assert!(
        s.stream.next().await.records.is_empty(),
        "nothing was appended"
    );
}

#[tokio::test]
async fn ecs_throttling_leaves_the_message_for_a_later_delivery_that_launches_it() {
    let mut s = Stack::new().await;
    let job = s.submit(noop_job(1), "e2e-throttle").await;
    s.pump().await;

    s.tap.throttle_next(1);
    let first = s.receive().await;
    assert_eq!(first.records.len(), 1);
    let message_id = first.records[0].message_id.clone().expect("message id");
    let failed = s.launch(&first).await;
    assert_eq!(
        failed,
        std::slice::from_ref(&message_id),
        "reported as a batch item failure"
    );
    s.acknowledge(&first, &failed).await;
    assert_eq!(s.tap.throttled().len(), 1);
    assert!(s.tap.sent().is_empty(), "moto saw no RunTask");
    assert!(s.tasks().await.is_empty());
    // A first throttle is not the job's business: nothing recorded, the job still waits.
    assert_eq!(s.types(job).await, ["JobSubmitted", "JobQueued"]);

    s.expire_visibility(&first).await;
    let second = s.receive().await;
    assert_eq!(second.records.len(), 1, "the message was left on the queue");
    assert_eq!(
        second.records[0].message_id.as_deref(),
        Some(message_id.as_str())
    );
    let failed = s.launch(&second).await;
    assert!(failed.is_empty(), "{failed:?}");
    s.acknowledge(&second, &failed).await;

    let sent = s.tap.sent();
    assert_eq!(sent.len(), 1);
    // The retry asks with the attempt's own token, the one the throttled call carried.
    assert_eq!(client_token(&sent[0]), format!("{job}-1"));
    assert_eq!(client_token(&s.tap.throttled()[0]), format!("{job}-1"));
    assert_eq!(s.tasks().await.len(), 1);
    s.pump().await;
    assert_eq!(
        s.types(job).await,
        ["JobSubmitted", "JobQueued", "TaskLaunched"]
    );
    assert_eq!(s.view(job).await.status, Status::Launching);
    assert!(s.receive().await.records.is_empty());
}

#[tokio::test]
async fn ecs_throttling_that_outlasts_the_launch_policy_is_recorded_and_the_retry_queued() {
    let mut s = Stack::new().await;
    let job = s.submit(noop_job(1), "e2e-throttle-long").await;
    s.pump().await;
    let policy = LaunchPolicy::default();
    s.tap.throttle_next(policy.record_failure_after);

    // Each delivery but the last is left on the queue; the last (its receive count reaching the
    // policy) records the failure in the ledger and is consumed.
    for delivery in 1..=policy.record_failure_after {
        let messages = s.receive().await;
        assert_eq!(messages.records.len(), 1, "delivery {delivery}");
        let failed = s.launch(&messages).await;
        s.acknowledge(&messages, &failed).await;
        if delivery < policy.record_failure_after {
            assert_eq!(failed.len(), 1, "delivery {delivery}");
            s.expire_visibility(&messages).await;
        } else {
            assert!(failed.is_empty(), "delivery {delivery}: {failed:?}");
        }
    }
    assert_eq!(
        s.tap.throttled().len(),
        policy.record_failure_after as usize
    );
    assert!(s.tap.sent().is_empty() && s.tasks().await.is_empty());
    assert!(
        s.receive().await.records.is_empty(),
        "the message was consumed"
    );
    let history = s.history(job).await;
    let failure = history
        .iter()
        .find_map(|e| match e.decode() {
            Ok(JobEvent::LaunchFailed(f)) => Some(f),
            _ => None,
        })
        .expect("LaunchFailed");
    assert!(failure.retryable, "{failure:?}");
    assert!(
        failure.reason.contains("ThrottlingException"),
        "{failure:?}"
    );
    let not_before = history
        .iter()
        .find_map(|e| match e.decode() {
            Ok(JobEvent::RetryScheduled(r)) => Some((r.next_attempt, r.not_before)),
            _ => None,
        })
        .expect("RetryScheduled");
    assert_eq!(not_before.0, 2);

    // The dispatcher queues attempt 2, to wait on the queue until its not_before.
    s.pump().await;
    s.pump().await;
    let view = s.view(job).await;
    assert_eq!((view.status, view.attempt), (Status::Queued, 2));
    let retry = s.receive().await;
    assert_eq!(retry.records.len(), 1);
    let body = retry.records[0].body.as_deref().expect("a body");
    let message = JobMessage::from_body(body).expect("a job message");
    assert_eq!((message.job_id, message.attempt), (job, 2));
    assert_eq!(message.not_before, Some(not_before.1));
    assert!(verify_chain(&s.history(job).await).is_empty());
}

#[tokio::test]
async fn a_job_cancelled_while_its_message_waits_is_not_launched() {
    let mut s = Stack::new().await;
    let job = s.submit(noop_job(2), "e2e-cancel").await;
    s.pump().await;
    s.pump().await;
    assert_eq!(s.view(job).await.status, Status::Queued);

    let (status, body) = s
        .call(gateway_request(
            "POST",
            &format!("/jobs/{job}/cancel"),
            Some(&json!({"reason": "changed my mind"})),
            &[],
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "CANCELLED", "{body}");
    let cancelled = s.pump().await;
    assert_eq!(
        cancelled.records.len(),
        2,
        "CancelRequested and JobCancelled"
    );
    assert_eq!(s.view(job).await.status, Status::Cancelled);

    let messages = s.receive().await;
    assert_eq!(messages.records.len(), 1, "the message still waits");
    let failed = s.launch(&messages).await;
    assert!(failed.is_empty(), "consumed, not retried: {failed:?}");
    s.acknowledge(&messages, &failed).await;

    assert!(s.tap.sent().is_empty(), "no RunTask");
    assert!(s.tasks().await.is_empty());
    assert!(s.receive().await.records.is_empty(), "the message is gone");
    let history = s.history(job).await;
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "JobSubmitted",
            "JobQueued",
            "CancelRequested",
            "JobCancelled"
        ]
    );
    assert!(verify_chain(&history).is_empty());
    assert!(
        s.stream.next().await.records.is_empty(),
        "nothing more was appended"
    );
    // The api's own store reads the same ledger.
    assert_eq!(s.api_store.load(job).await.expect("load").len(), 4);
}
