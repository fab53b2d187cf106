//! Stream records read back from moto's real DynamoDB stream, turned into the Lambda event shape
//! and decoded by the stream glue (run under `scripts/with-moto`).
//!
//! The items are the ones of `fixtures/aws/stream_*.json` (the layout `DynamoEventStore` writes),
//! put through DynamoDB's JSON API directly, as the fixture holds them.
#![cfg(feature = "aws")]

use jobledger_handlers::aws::stream::{self, ImageDecoder};
use jobledger_testsupport::moto;
use jobledger_testsupport::streams::StreamReader;
use serde_json::{Value, json};
use uuid::Uuid;

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str =
    "scripts/with-moto cargo test -p jobledger-handlers --features aws --test aws_stream_moto";

/// One call of DynamoDB's JSON protocol: the items are the fixture's DynamoDB JSON, as it is.
async fn dynamodb(target: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(moto::endpoint(RUN_AS))
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
    let mut reader =
        StreamReader::open(aws_sdk_dynamodbstreams::Client::new(&sdk), stream_arn).await;
    let event = reader.next().await;
    assert_eq!(event.records.len(), 2);
    let batch = stream::decode(&MapImages, &event).await;
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].event.version, 1);
    assert!(batch.records[0].event.hash_is_valid());
    let bad = batch.undecodable.as_ref().expect("v2 is damaged");
    let seq_v2 = event.records[1]
        .change
        .sequence_number
        .clone()
        .expect("sequence number");
    assert_eq!(bad.record, seq_v2);
    assert_eq!(batch.failures(&[]), [seq_v2]);
}
