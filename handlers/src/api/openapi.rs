//! The OpenAPI document, built from the same calls that register the routes, so the two cannot drift.
//!
//! Every route goes through [`DocumentedRouter::route`], which takes the `#[utoipa::path]` description
//! of a handler and serves the handler at exactly the path and methods that description names.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::openapi::path::{HttpMethod, Paths};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, PathItem};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail, FieldErrorDoc};
use super::jobs::{
    Accepted, CancelRequest, EventsPage, Health, JobsPage, Links, ResultLink, SubmitRequest,
};
pub use schemas::{JOB_KIND_SCHEMA, STATUS_SCHEMA};

/// The fixed part of the document: info, security scheme, component schemas. Paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobledger",
        description = "Submit AI batch jobs and read their state and verifiable event history."
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(
        SubmitRequest, CancelRequest, Accepted, Links, EventsPage, JobsPage, ResultLink, Health,
        ErrorBody, ErrorDetail, FieldErrorDoc,
        schemas::ItemDoc, schemas::NotifyDoc, schemas::JobKindDoc, schemas::StatusDoc,
        schemas::JobViewDoc, schemas::ProgressDoc, schemas::UsageDoc, schemas::CapacityDoc,
        schemas::EventDoc,
    )),
    tags((name = "jobs", description = "Jobs and their history"), (name = "service", description = "Health and this document"))
)]
pub struct ApiDoc;

/// The name of the security scheme every authenticated operation refers to.
pub const API_KEY_SCHEME: &str = "api_key";

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::auth::API_KEY_HEADER,
                "The API key. On AWS, API Gateway checks it; locally, the server does.",
            ))),
        );
    }
}

fn method_filter(m: &HttpMethod) -> MethodFilter {
    match m {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// An axum router and the OpenAPI paths of exactly its routes.
pub(crate) struct DocumentedRouter<St> {
    router: Router<St>,
    paths: Paths,
    tag: &'static str,
}

impl<St: Clone + Send + Sync + 'static> DocumentedRouter<St> {
    /// An empty router whose operations will be listed under `tag`.
    pub(crate) fn new(tag: &'static str) -> Self {
        DocumentedRouter {
            router: Router::new(),
            paths: Paths::new(),
            tag,
        }
    }

    /// Serves `handler` at the path and methods its `#[utoipa::path]` description `P` names, and documents it.
    pub(crate) fn route<P: utoipa::Path, H: Handler<T, St>, T: 'static>(
        mut self,
        handler: H,
    ) -> Self {
        let path = P::path();
        let methods = P::methods();
        let method_router = methods.iter().fold(MethodRouter::new(), |r, m| {
            r.on(method_filter(m), handler.clone())
        });
        self.router = self.router.route(&path, method_router);
        let mut operation = P::operation();
        operation.tags = Some(vec![self.tag.to_string()]);
        self.paths.add_path_operation(&path, methods, operation);
        self
    }

    /// Applies a layer to every route added so far (as `Router::route_layer`).
    pub(crate) fn route_layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.router = self.router.route_layer(layer);
        self
    }

    /// Joins two documented routers.
    pub(crate) fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        for (path, item) in other.paths.paths {
            merge_path(&mut self.paths, path, item);
        }
        self
    }

    /// The router, and the whole document: [`ApiDoc`] plus the paths of the routes.
    pub(crate) fn into_parts(self) -> (Router<St>, OpenApiDoc) {
        let mut doc = ApiDoc::openapi();
        doc.paths = self.paths;
        (self.router, doc)
    }
}

fn merge_path(paths: &mut Paths, path: String, item: PathItem) {
    match paths.paths.get_mut(&path) {
        Some(existing) => existing.merge_operations(item),
        None => {
            paths.paths.insert(path, item);
        }
    }
}

/// Schemas of types that live in crates without OpenAPI support, written out here.
///
/// Fields are never read: only their schemas are used. Tests compare them with what the API serves.
#[allow(dead_code)]
pub(crate) mod schemas {
    use serde::Serialize;
    use utoipa::ToSchema;

    /// Name of the schema of job kinds (its `enum` values are the wire names).
    pub const JOB_KIND_SCHEMA: &str = "JobKind";
    /// Name of the schema of job statuses.
    pub const STATUS_SCHEMA: &str = "Status";

    /// One input item: an `id` plus exactly one content field, depending on the kind.
    #[derive(ToSchema)]
    #[schema(as = Item)]
    pub struct ItemDoc {
        /// The caller's id for the item; results carry it back.
        id: String,
        /// Plain text or Markdown.
        text: Option<String>,
        /// An HTML page.
        html: Option<String>,
        /// An image, base64-encoded.
        image_base64: Option<String>,
        /// `s3://bucket/key` (or a local `file://` URI) of the content.
        uri: Option<String>,
    }

    /// Which notification sinks a job wants (both default to true).
    #[derive(ToSchema)]
    #[schema(as = Notify)]
    pub struct NotifyDoc {
        /// Post to Slack.
        #[schema(default = true)]
        slack: Option<bool>,
        /// Log in Notion.
        #[schema(default = true)]
        notion: Option<bool>,
    }

    /// The kinds of work a job can do.
    #[derive(ToSchema, Serialize)]
    #[schema(as = JobKind)]
    #[serde(rename_all = "snake_case")]
    pub enum JobKindDoc {
        /// Image → alt text.
        ImageAlt,
        /// Page text → a description of at most 155 characters.
        MetaDescription,
        /// Text → topics, keywords, readability, language, structure.
        ContentAnalysis,
        /// Does nothing per item; measures the pipeline itself.
        Noop,
    }

    /// Where a job is in its life.
    #[derive(ToSchema, Serialize)]
    #[schema(as = Status)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum StatusDoc {
        /// Accepted, not yet on the queue.
        Submitted,
        /// On the work queue.
        Queued,
        /// A worker task was started.
        Launching,
        /// A worker claimed the attempt.
        Running,
        /// Waiting for the next attempt.
        RetryWait,
        /// Finished with results.
        Succeeded,
        /// Gave up.
        Failed,
        /// Cancel requested; the worker is stopping.
        Cancelling,
        /// Cancelled.
        Cancelled,
    }

    /// Where a worker ran.
    #[derive(ToSchema, Serialize)]
    #[schema(as = Capacity)]
    pub enum CapacityDoc {
        /// Fargate Spot.
        #[serde(rename = "FARGATE_SPOT")]
        FargateSpot,
        /// Fargate on demand.
        #[serde(rename = "FARGATE")]
        Fargate,
        /// On the local machine.
        #[serde(rename = "local")]
        Local,
    }

    /// Item counts.
    #[derive(ToSchema)]
    #[schema(as = Progress)]
    pub struct ProgressDoc {
        /// Items done successfully.
        done: u64,
        /// Items failed.
        failed: u64,
        /// Items in the job (0 until known for an `input_uri` job).
        total: u64,
    }

    /// What an attempt used and what it cost.
    #[derive(ToSchema)]
    #[schema(as = Usage)]
    pub struct UsageDoc {
        /// Wall time of the attempt.
        duration_ms: u64,
        /// vCPUs of the task.
        vcpu: f64,
        /// Memory of the task.
        memory_mb: u64,
        /// Where it ran.
        capacity: Option<CapacityDoc>,
        /// Model input tokens, all items.
        input_tokens: u64,
        /// Model output tokens, all items.
        output_tokens: u64,
        /// The model used, if any.
        model: Option<String>,
        /// Compute plus model cost.
        cost_usd: f64,
    }

    /// One job as readers see it. Field names are part of the contract: added, never renamed.
    #[derive(ToSchema)]
    #[schema(as = JobView)]
    pub struct JobViewDoc {
        /// The job (UUID v7).
        #[schema(format = Uuid)]
        job_id: String,
        /// The kind of work.
        kind: JobKindDoc,
        /// Current status.
        status: StatusDoc,
        /// The current attempt (1-based).
        attempt: u32,
        /// Item counts.
        progress: ProgressDoc,
        /// When the job was submitted.
        #[schema(format = DateTime)]
        created_at: String,
        /// When its last event was recorded.
        #[schema(format = DateTime)]
        updated_at: String,
        /// Where the results are, once succeeded.
        result_uri: Option<String>,
        /// SHA-256 (hex) of the results file, once succeeded.
        result_sha256: Option<String>,
        /// What the successful attempt used and cost.
        usage: Option<UsageDoc>,
        /// Version of the last event this view includes.
        last_version: u64,
        /// The last error seen.
        error: Option<String>,
        /// Which notification sinks the job wants.
        notify: NotifyDoc,
        /// The caller's metadata.
        #[schema(value_type = Object)]
        metadata: serde_json::Value,
        /// Failed attempts counted against `max_attempts`.
        failures: u32,
        /// Interruptions counted against the interruption budget.
        interruptions: u32,
        /// Every interruption of the job's life.
        total_interruptions: u32,
        /// When the current attempt started.
        #[schema(format = DateTime)]
        attempt_started_at: Option<String>,
        /// The worker's last heartbeat.
        #[schema(format = DateTime)]
        heartbeat_at: Option<String>,
        /// When the current attempt's task was launched.
        #[schema(format = DateTime)]
        launched_at: Option<String>,
        /// When the job reached a terminal status.
        #[schema(format = DateTime)]
        finished_at: Option<String>,
        /// Wall-clock limit of one attempt, in seconds.
        timeout_s: u32,
        /// Attempts that may fail before the job fails.
        max_attempts: u32,
        /// The next attempt is not launched before this time.
        #[schema(format = DateTime)]
        not_before: Option<String>,
        /// Higher runs first where a backend can order work.
        priority: i32,
        /// The current attempt's task.
        task_arn: Option<String>,
        /// Where the current attempt's task runs.
        capacity: Option<CapacityDoc>,
        /// The latest checkpoint.
        checkpoint_uri: Option<String>,
        /// Money spent on the job so far.
        cost_usd: f64,
    }

    /// One event exactly as the ledger stores it.
    #[derive(ToSchema, Serialize)]
    #[schema(as = Event)]
    pub struct EventDoc {
        /// The job (stream id).
        #[schema(format = Uuid)]
        job_id: String,
        /// 1, 2, 3 … per job; gap-free.
        version: u64,
        /// Unique; downstream dedup id.
        #[schema(format = Uuid)]
        event_id: String,
        /// e.g. `JobSubmitted`.
        #[serde(rename = "type")]
        event_type: String,
        /// Payload schema version.
        schema: u32,
        /// The payload.
        #[schema(value_type = Object)]
        data: serde_json::Value,
        /// When it was recorded (RFC 3339 UTC, microseconds).
        #[schema(format = DateTime)]
        at: String,
        /// Who caused it: `api-key:<id>`, `worker:<task>`, `system:sweeper`, …
        actor: String,
        /// The request that started the chain.
        correlation_id: String,
        /// The event or command that caused this one.
        causation_id: String,
        /// Hash of the previous event (64 hex; zeros for version 1).
        prev_hash: String,
        /// `sha256(prev_hash ‖ canonical bytes of this envelope without hash)`, 64 hex.
        hash: String,
    }
}
