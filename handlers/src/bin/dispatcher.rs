//! The `dispatcher` Lambda: the events table's stream → the jobs FIFO queue.
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use jobledger_events::dynamo::DynamoEventStore;
use jobledger_handlers::aws::config::DispatcherConfig;
use jobledger_handlers::aws::{SqsJobQueue, functions, logging, s3_client, sdk_config};

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = DispatcherConfig::from_env()?;
    let sdk = sdk_config().await;
    let store = DynamoEventStore::events_only(
        aws_sdk_dynamodb::Client::new(&sdk),
        s3_client(&sdk),
        config.events_table,
    );
    let queue = SqsJobQueue::new(aws_sdk_sqs::Client::new(&sdk), config.jobs_queue_url);
    functions::dispatcher(store.clone(), store, queue).await
}
