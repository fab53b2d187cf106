//! The `projector` Lambda: the events table's stream → the `jobs` read model.
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use jobledger_events::dynamo::DynamoEventStore;
use jobledger_handlers::aws::config::ProjectorConfig;
use jobledger_handlers::aws::{functions, logging, s3_client, sdk_config};
use jobledger_projections::dynamo::DynamoJobViews;

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = ProjectorConfig::from_env()?;
    let sdk = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = DynamoEventStore::events_only(dynamo.clone(), s3_client(&sdk), config.events_table);
    let views = DynamoJobViews::new(dynamo, config.jobs_table);
    functions::projector(store.clone(), store, views).await
}
