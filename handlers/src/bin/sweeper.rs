//! The `sweeper` Lambda: timeouts and lost workers, on a schedule and on ECS task-state changes.
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use jobledger_events::dynamo::DynamoEventStore;
use jobledger_handlers::aws::config::SweeperConfig;
use jobledger_handlers::aws::{functions, logging, s3_client, sdk_config};
use jobledger_handlers::sweep::SweepPolicy;
use jobledger_projections::dynamo::DynamoJobViews;

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = SweeperConfig::from_env()?;
    let policy = SweepPolicy {
        heartbeat_limit: chrono::Duration::from_std(config.heartbeat_timeout)?,
    };
    let sdk = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = DynamoEventStore::events_only(dynamo.clone(), s3_client(&sdk), config.events_table);
    let views = DynamoJobViews::new(dynamo, config.jobs_table);
    functions::sweeper(store, views, policy).await
}
