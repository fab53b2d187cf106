//! Stream records read back from moto's real DynamoDB stream, turned into the Lambda event shape
//! and decoded by the stream glue (run under `scripts/with-moto`).
//!
//! The items are the ones of `fixtures/aws/stream_*.json` (the layout `DynamoEventStore` writes),
//! put through DynamoDB's JSON API directly: handlers cannot construct a `DynamoEventStore` yet.
#![cfg(feature = "aws")]

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::Event;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use jobledger_handlers::aws::stream::{self, ImageDecoder};
use serde_json::{Map, Value, json};
use uuid::Uuid;

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!("AWS_ENDPOINT_URL is not set: run this test under scripts/with-moto (it needs moto's DynamoDB Streams)")
    })
}

/// One call of DynamoDB's JSON protocol (the workspace's handlers have no DynamoDB SDK).
async fn dynamodb(target: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(endpoint())
        .header("x-amz-target", format!("DynamoDB_20120810.{target}"))
        .header("content-type", "application/x-amz-json-1.0")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("DynamoDB call");
    let status = response.status();
    let text = response.text().await.expect("answer");
    assert!(status.is_success(), "{target}: {status} {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

fn ddb_json(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => json!({"S": s}),
        AttributeValue::N(n) => json!({"N": n}),
        AttributeValue::Bool(b) => json!({"BOOL": b}),
        AttributeValue::Null(b) => json!({"NULL": b}),
        AttributeValue::L(items) => json!({"L": items.iter().map(ddb_json).collect::<Vec<_>>()}),
        AttributeValue::M(m) => json!({"M": image(m)}),
        AttributeValue::Ss(items) => json!({"SS": items}),
        AttributeValue::Ns(items) => json!({"NS": items}),
        other => panic!("unexpected attribute {other:?}"),
    }
}

fn image(m: &HashMap<String, AttributeValue>) -> Map<String, Value> {
    m.iter().map(|(k, v)| (k.clone(), ddb_json(v))).collect()
}

/// A stream record in the shape Lambda hands to a function.
fn lambda_record(r: &Record, stream_arn: &str) -> Value {
    let d = r.dynamodb().expect("stream record");
    json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": r.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region(),
        "dynamodb": {
            "ApproximateCreationDateTime": d.approximate_creation_date_time().map(|t| t.secs()),
            "Keys": d.keys().map(image),
            "NewImage": d.new_image().map(image),
            "SequenceNumber": d.sequence_number(),
            "SizeBytes": d.size_bytes(),
            "StreamViewType": d.stream_view_type().map(|t| t.as_str()),
        },
        "eventSourceARN": stream_arn,
    })
}

/// The same stand-in decoder as `aws_stream.rs`: a `data` map payload, re-canonicalised.
struct MapImages;

fn plain(v: &Value) -> Value {
    let (tag, inner) = v
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("attribute");
    match tag.as_str() {
        "S" | "BOOL" => inner.clone(),
        "N" => serde_json::from_str(inner.as_str().expect("N")).expect("number"),
        "NULL" => Value::Null,
        "L" => Value::Array(inner.as_array().expect("L").iter().map(plain).collect()),
        "M" => Value::Object(
            inner
                .as_object()
                .expect("M")
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
        ),
        other => panic!("unexpected attribute type {other}"),
    }
}

impl ImageDecoder for MapImages {
    async fn decode_image(
        &self,
        record: &aws_lambda_events::event::dynamodb::EventRecord,
    ) -> Result<jobledger_events::RecordedEvent, String> {
        let m = serde_json::to_value(&record.change.new_image).map_err(|e| e.to_string())?;
        let mut item = plain(&json!({ "M": m }));
        let data = jobledger_events::chain::canonical_json(&item["data"]);
        item["data"] = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        serde_json::from_str(&item.to_string()).map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn records_read_from_moto_s_stream_decode_like_lambda_s() {
    let table = format!("events-{}", Uuid::now_v7().simple());
    let created = dynamodb(
        "CreateTable",
        json!({
            "TableName": table,
            "AttributeDefinitions": [
                {"AttributeName": "job_id", "AttributeType": "S"},
                {"AttributeName": "version", "AttributeType": "N"}
            ],
            "KeySchema": [
                {"AttributeName": "job_id", "KeyType": "HASH"},
                {"AttributeName": "version", "KeyType": "RANGE"}
            ],
            "BillingMode": "PAY_PER_REQUEST",
            "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}
        }),
    )
    .await;
    let stream_arn = created["TableDescription"]["LatestStreamArn"]
        .as_str()
        .expect("stream arn")
        .to_string();

    // v1 as stored, then v2 with its actor changed after hashing (a damaged item).
    let tampered: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/aws/stream_tampered.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture"),
    )
    .expect("JSON");
    for record in tampered["Records"]
        .as_array()
        .expect("records")
        .iter()
        .take(2)
    {
        dynamodb(
            "PutItem",
            json!({"TableName": table, "Item": record["dynamodb"]["NewImage"]}),
        )
        .await;
    }

    let sdk = jobledger_handlers::aws::sdk_config().await;
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let described = streams
        .describe_stream()
        .stream_arn(&stream_arn)
        .send()
        .await
        .expect("DescribeStream");
    let shard = described
        .stream_description()
        .and_then(|d| d.shards().first())
        .and_then(|s| s.shard_id())
        .expect("a shard")
        .to_string();
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&stream_arn)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator
        .expect("iterator");
    let records = streams
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .expect("GetRecords")
        .records
        .unwrap_or_default();
    assert_eq!(records.len(), 2);

    let event: Event = serde_json::from_value(json!({
        "Records": records.iter().map(|r| lambda_record(r, &stream_arn)).collect::<Vec<_>>()
    }))
    .expect("the Lambda event shape");
    let batch = stream::decode(&MapImages, &event).await;
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].event.version, 1);
    assert!(batch.records[0].event.hash_is_valid());
    let bad = batch.undecodable.as_ref().expect("v2 is damaged");
    let seq_v2 = records[1]
        .dynamodb()
        .and_then(|d| d.sequence_number())
        .expect("sequence number");
    assert_eq!(bad.record, seq_v2);
    assert_eq!(batch.failures(&[]), [seq_v2.to_string()]);
}
