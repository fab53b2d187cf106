//! The `launcher` Lambda: the jobs FIFO queue → ECS Fargate (Spot) tasks.
// The handler future nests the SDK, ledger and core futures deeper than the default limit.
#![recursion_limit = "256"]

use jobledger_events::dynamo::DynamoEventStore;
use jobledger_handlers::aws::config::LauncherConfig;
use jobledger_handlers::aws::{
    EcsTaskLauncher, SqsJobQueue, functions, logging, s3_client, sdk_config,
};

#[tokio::main]
async fn main() -> Result<(), functions::Error> {
    logging::init();
    let config = LauncherConfig::from_env()?;
    let sdk = sdk_config().await;
    let store = DynamoEventStore::events_only(
        aws_sdk_dynamodb::Client::new(&sdk),
        s3_client(&sdk),
        config.events_table,
    );
    let queue = SqsJobQueue::new(aws_sdk_sqs::Client::new(&sdk), config.jobs_queue_url);
    let launcher = EcsTaskLauncher::new(aws_sdk_ecs::Client::new(&sdk), config.ecs)
        .with_public_ip(config.assign_public_ip);
    functions::launcher(store, queue, launcher).await
}
