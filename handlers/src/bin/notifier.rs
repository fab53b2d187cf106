//! The `notifier` Lambda: the events table's stream → Slack and Notion, exactly once in effect.
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use std::sync::Arc;

use jobledger_events::dynamo::DynamoEventStore;
use jobledger_handlers::aws::config::NotifierLambdaConfig;
use jobledger_handlers::aws::{functions, logging, s3_client, sdk_config};
use jobledger_handlers::notify::secrets::lambda_notifier_config;
use jobledger_handlers::notify::{DynamoNotifyStore, Notifier, SystemClock};
use jobledger_workers::s3::S3ObjectStore;

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = NotifierLambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    // Tokens are read once, here: a missing or forbidden secret fails the cold start.
    let notify =
        lambda_notifier_config(&config, &aws_sdk_secretsmanager::Client::new(&sdk)).await?;
    let notifier = Notifier::from_config(&notify, Arc::new(SystemClock))?;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let s3 = s3_client(&sdk);
    let store = DynamoEventStore::events_only(dynamo.clone(), s3.clone(), config.events_table);
    let states = DynamoNotifyStore::new(dynamo, config.notifier_state_table);
    let objects = S3ObjectStore::new(s3, config.results_bucket);
    functions::notifier(store.clone(), store, states, objects, notifier).await
}
