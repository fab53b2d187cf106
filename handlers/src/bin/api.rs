//! The `api` Lambda: the same axum router as `jobledger dev`, behind API Gateway (REST, API keys).
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use jobledger_events::dynamo::{DynamoEventStore, EventsTables};
use jobledger_handlers::api::{ApiConfig, ApiState, Authenticator, router};
use jobledger_handlers::aws::config::ApiLambdaConfig;
use jobledger_handlers::aws::{functions, logging, s3_client, sdk_config};
use jobledger_projections::dynamo::DynamoJobViews;
use jobledger_workers::s3::S3ObjectStore;

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = ApiLambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let s3 = s3_client(&sdk);
    let tables = EventsTables::new(
        &config.events_table,
        &config.idempotency_table,
        &config.results_bucket,
    );
    let state = ApiState::new(
        DynamoEventStore::new(dynamo.clone(), s3.clone(), tables),
        DynamoJobViews::new(dynamo, config.jobs_table),
        S3ObjectStore::new(s3, config.results_bucket),
        Authenticator::Gateway,
    )
    .with_config(ApiConfig {
        result_url_ttl: config.result_url_ttl,
        ..ApiConfig::default()
    });
    functions::api(router(state)).await
}
