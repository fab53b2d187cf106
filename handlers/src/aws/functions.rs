//! The Lambda functions, each one `run` call: a binary builds its clients and hands them here.
//!
//! The handlers borrow the clients built once at cold start; every invocation only decodes its
//! event and calls the glue (see `glue.rs`).

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use std::convert::Infallible;

use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use jobledger_events::EventStore;
use jobledger_projections::ViewStore;
use lambda_http::request::RequestContext;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use tower::{Layer, Service, ServiceExt};

use super::glue;
use super::stream::ImageDecoder;
use crate::api::GatewayKeyId;
use crate::launch::LaunchPolicy;
use crate::ports::{JobQueue, SystemTime, TaskLauncher};
use crate::sweep::SweepPolicy;

/// The error a Lambda run loop ends with.
pub type Error = lambda_runtime::Error;

/// Prepares an API Gateway request for the shared router: copies the API key id API Gateway
/// resolved (`requestContext.identity.apiKeyId`) into a [`GatewayKeyId`] extension (a client-sent
/// header never gets there), and strips the `/<stage>` prefix `lambda_http` puts on REST API
/// paths, so `/prod/jobs` is routed as `/jobs`.
pub async fn gateway_request(mut req: Request, next: Next) -> Response {
    let (key_id, stage) = match req.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV1(ctx)) => {
            (ctx.identity.api_key_id.clone(), ctx.stage.clone())
        }
        _ => (None, None),
    };
    if let Some(id) = key_id.filter(|id| !id.is_empty()) {
        req.extensions_mut().insert(GatewayKeyId(id));
    }
    if let Some(stripped) = stage.and_then(|s| strip_stage(req.uri(), &s)) {
        *req.uri_mut() = stripped;
    }
    next.run(req).await
}

/// The URI without its leading `/<stage>` segment, if it has one.
fn strip_stage(uri: &Uri, stage: &str) -> Option<Uri> {
    let prefix = format!("/{stage}");
    let rest = uri.path().strip_prefix(&prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The API router as the `api` Lambda serves it: [`gateway_request`] runs before routing.
pub fn gateway_service(
    router: axum::Router,
) -> impl Service<lambda_http::Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    axum::middleware::from_fn(gateway_request)
        .layer(router)
        .map_request(|req: lambda_http::Request| req.map(axum::body::Body::new))
}

/// The `api` function: the same axum router as `jobledger dev`, behind API Gateway.
pub async fn api(router: axum::Router) -> Result<(), Error> {
    lambda_http::run(gateway_service(router)).await
}

/// The `dispatcher` function (DynamoDB stream of the events table).
pub async fn dispatcher<D: ImageDecoder, S: EventStore, Q: JobQueue>(
    decoder: D,
    store: S,
    queue: Q,
) -> Result<(), Error> {
    let (decoder, store, queue) = (&decoder, &store, &queue);
    lambda_runtime::run(service_fn(|e: LambdaEvent<StreamEvent>| async move {
        Ok::<_, Diagnostic>(
            glue::dispatch_stream(decoder, store, queue, &e.payload, Utc::now()).await,
        )
    }))
    .await
}

/// The `projector` function (DynamoDB stream of the events table).
pub async fn projector<D: ImageDecoder, S: EventStore, V: ViewStore>(
    decoder: D,
    store: S,
    views: V,
) -> Result<(), Error> {
    let (decoder, store, views) = (&decoder, &store, &views);
    lambda_runtime::run(service_fn(|e: LambdaEvent<StreamEvent>| async move {
        Ok::<_, Diagnostic>(glue::project_stream(decoder, store, views, &e.payload).await)
    }))
    .await
}

/// The `launcher` function (SQS FIFO, `ReportBatchItemFailures`).
pub async fn launcher<S: EventStore, Q: JobQueue, L: TaskLauncher>(
    store: S,
    queue: Q,
    launcher: L,
) -> Result<(), Error> {
    let (store, queue, launcher) = (&store, &queue, &launcher);
    let policy = &LaunchPolicy::default();
    lambda_runtime::run(service_fn(|e: LambdaEvent<SqsEvent>| async move {
        glue::launch_sqs(store, queue, launcher, &e.payload, &SystemTime, policy).await
    }))
    .await
}

/// The `notifier` function (DynamoDB stream of the events table): Slack and Notion.
pub async fn notifier<D, S, N, O>(
    decoder: D,
    store: S,
    states: N,
    objects: O,
    notifier: crate::notify::Notifier,
) -> Result<(), Error>
where
    D: ImageDecoder,
    S: EventStore,
    N: crate::notify::NotifyStateStore
        + crate::notify::DeadLetterStore
        + crate::notify::FailureCounter,
    O: jobledger_workers::ObjectStore,
{
    let (decoder, store, states, objects, notifier) =
        (&decoder, &store, &states, &objects, &notifier);
    lambda_runtime::run(service_fn(|e: LambdaEvent<StreamEvent>| async move {
        let (response, report) =
            glue::notify_stream(decoder, store, states, objects, notifier, &e.payload).await;
        tracing::debug!(?report, "notifier batch done");
        Ok::<_, Diagnostic>(response)
    }))
    .await
}

/// The `sweeper` function (EventBridge: a schedule, and ECS Task State Change events).
pub async fn sweeper<S: EventStore, V: ViewStore>(
    store: S,
    views: V,
    policy: SweepPolicy,
) -> Result<(), Error> {
    let (store, views, policy) = (&store, &views, &policy);
    lambda_runtime::run(service_fn(
        |e: LambdaEvent<EventBridgeEvent<serde_json::Value>>| async move {
            glue::sweeper_event(store, views, policy, &SystemTime, e.payload).await
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_prefix_is_stripped_only_as_a_whole_segment() {
        let strip = |u: &str| strip_stage(&u.parse().expect("uri"), "prod").map(|u| u.to_string());
        assert_eq!(
            strip("/prod/jobs?limit=2").as_deref(),
            Some("/jobs?limit=2")
        );
        assert_eq!(strip("/prod").as_deref(), Some("/"));
        assert_eq!(strip("/production/jobs"), None);
        assert_eq!(strip("/jobs"), None);
    }
}
