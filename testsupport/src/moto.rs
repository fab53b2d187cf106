//! The moto server of `scripts/with-moto`: clients with fixed test credentials (never the
//! caller's own), unique names so tests run in parallel on one server, and the events table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use jobledger_events::dynamo::event_item;
use jobledger_events::{JobId, RecordedEvent};

/// The moto endpoint (`AWS_ENDPOINT_URL`). Panics when it is not set, telling how to run the test:
/// `run_as` is the command line, e.g. `scripts/with-moto cargo test -p … --test …`.
pub fn endpoint(run_as: &str) -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: these tests need a moto server; run them as `{run_as}`"
        )
    })
}

/// The region `scripts/with-moto` exports (`AWS_REGION`), `us-east-1` without it.
pub fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

fn credentials() -> aws_sdk_dynamodb::config::Credentials {
    aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "moto")
}

/// A DynamoDB client configuration for `endpoint`, to adjust (retries) before building.
pub fn dynamo_config(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new(region()))
        .credentials_provider(credentials())
}

/// A DynamoDB client for `endpoint`.
pub fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(dynamo_config(endpoint).build())
}

/// An S3 client for `endpoint`, addressing buckets by path (moto serves them so, not by host).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new(region()))
        .credentials_provider(credentials())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The DynamoDB and S3 clients of this run's moto server.
#[derive(Clone, Debug)]
pub struct Moto {
    /// `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    /// DynamoDB on moto.
    pub dynamo: aws_sdk_dynamodb::Client,
    /// S3 on moto, buckets by path.
    pub s3: aws_sdk_s3::Client,
}

impl Moto {
    /// Clients for the moto server; panics naming `run_as` when there is none (see [`endpoint`]).
    pub fn connect(run_as: &str) -> Moto {
        let endpoint = endpoint(run_as);
        Moto {
            dynamo: dynamo_client(&endpoint),
            s3: s3_client(&endpoint),
            endpoint,
        }
    }
}

/// `prefix-<uuid>`: a table, bucket or queue name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Creates an events table with the deployed key schema (`job_id` S, `version` N) and no stream:
/// moto keeps every stream record in memory, and deep-copies them with the table on every
/// transaction, so a long history with a stream takes it past gigabytes.
pub async fn create_events_table(dynamo: &aws_sdk_dynamodb::Client, table: &str) {
    let attribute = |name: &str, kind| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .expect("attribute")
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key")
    };
    dynamo
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("job_id", ScalarAttributeType::S))
        .attribute_definitions(attribute("version", ScalarAttributeType::N))
        .key_schema(key("job_id", KeyType::Hash))
        .key_schema(key("version", KeyType::Range))
        .send()
        .await
        .expect("create the events table");
}

/// Writes `events` into `table` with `BatchWriteItem`, item for item as `append` writes them.
///
/// Moto gap: moto 5.2.5 deep-copies every table a `TransactWriteItems` touches (to roll back) and
/// keeps every copy, so memory and time grow with the square of the table's size: long histories
/// are seeded, and the transactional path is left to the tests of `append` itself.
pub async fn seed_events(dynamo: &aws_sdk_dynamodb::Client, table: &str, events: &[RecordedEvent]) {
    for chunk in events.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|e| {
                let put = PutRequest::builder()
                    .set_item(Some(event_item(e).expect("item")))
                    .build()
                    .expect("put");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        while !requests.is_empty() {
            let out = dynamo
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .expect("batch write");
            requests = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
        }
    }
}

/// The stored item of `job_id`'s event `version` (a consistent read); panics if there is none.
pub async fn event_item_at(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    job_id: JobId,
    version: u64,
) -> HashMap<String, AttributeValue> {
    dynamo
        .get_item()
        .table_name(table)
        .key("job_id", AttributeValue::S(job_id.to_string()))
        .key("version", AttributeValue::N(version.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item exists")
}

/// Calls moto's EC2 query API `action` (the workspace has no EC2 SDK) and returns every `<tag>`
/// value of the answer (`DescribeSubnets` → `subnetId`: `RunTask` on moto needs real ones).
pub async fn ec2_ids(endpoint: &str, action: &str, tag: &str) -> Vec<String> {
    let body = reqwest::Client::new()
        .post(endpoint)
        // moto routes by the credential scope; it does not check the signature.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&[("Action", action), ("Version", "2016-11-15")])
        .send()
        .await
        .expect("EC2 call")
        .text()
        .await
        .expect("EC2 answer");
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    body.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(String::from)
        .collect()
}
