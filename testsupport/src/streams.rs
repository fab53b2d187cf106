//! A DynamoDB stream read back as the Lambda event a function receives, and stored items as that
//! event's JSON images (`{"S": …}`, `{"N": …}`, …).

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::Event;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use serde_json::{Map, Value, json};

/// An image (`name → {"S": …}`) and the attribute values in it, as JSON, for one SDK's
/// `AttributeValue` (DynamoDB's and DynamoDB Streams' are distinct types of the same shape).
macro_rules! image_json {
    ($(#[$doc:meta])* $vis:vis $image:ident, $attribute_json:ident, $attribute:ty) => {
        $(#[$doc])*
        $vis fn $image(item: &HashMap<String, $attribute>) -> Map<String, Value> {
            item.iter()
                .map(|(k, v)| (k.clone(), $attribute_json(v)))
                .collect()
        }

        fn $attribute_json(v: &$attribute) -> Value {
            type A = $attribute;
            match v {
                A::S(s) => json!({"S": s}),
                A::N(n) => json!({"N": n}),
                A::Bool(b) => json!({"BOOL": b}),
                A::Null(b) => json!({"NULL": b}),
                A::L(items) => json!({"L": items.iter().map($attribute_json).collect::<Vec<_>>()}),
                A::M(m) => json!({"M": $image(m)}),
                A::Ss(items) => json!({"SS": items}),
                A::Ns(items) => json!({"NS": items}),
                other => panic!("the ledger writes no attribute like {other:?}"),
            }
        }
    };
}

image_json!(
    /// A stored item (as `event_item` makes it) as the JSON image of a stream record.
    pub item_image,
    item_attribute_json,
    aws_sdk_dynamodb::types::AttributeValue
);
image_json!(
    /// An image read from DynamoDB Streams as the JSON Lambda delivers.
    record_image,
    record_attribute_json,
    aws_sdk_dynamodbstreams::types::AttributeValue
);

/// One stream record in the shape Lambda hands to a function.
fn lambda_record(r: &Record, stream_arn: &str) -> Value {
    let d = r.dynamodb().expect("a DynamoDB record");
    json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": r.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region(),
        "dynamodb": {
            "ApproximateCreationDateTime": d.approximate_creation_date_time().map(|t| t.secs()),
            "Keys": d.keys().map(record_image),
            "NewImage": d.new_image().map(record_image),
            "SequenceNumber": d.sequence_number(),
            "SizeBytes": d.size_bytes(),
            "StreamViewType": d.stream_view_type().map(|t| t.as_str()),
        },
        "eventSourceARN": stream_arn,
    })
}

/// Reads a table's stream from its start, batch after batch, in the shape Lambda delivers.
///
/// Like Lambda's poller it remembers the last sequence number it read and asks for a fresh
/// iterator after it each time. (Moto gap: a `TransactWriteItems` that fails a condition restores
/// a deep copy of the table, stream included, so an iterator taken before it never sees a later
/// record.)
#[derive(Debug)]
pub struct StreamReader {
    client: aws_sdk_dynamodbstreams::Client,
    arn: String,
    shard: String,
    last_sequence: Option<String>,
}

impl StreamReader {
    /// A reader of the stream `arn`, which must have one shard (a new table's stream has one).
    pub async fn open(client: aws_sdk_dynamodbstreams::Client, arn: String) -> Self {
        let described = client
            .describe_stream()
            .stream_arn(&arn)
            .send()
            .await
            .expect("DescribeStream");
        let shards = described
            .stream_description()
            .map(|d| d.shards())
            .unwrap_or_default();
        assert_eq!(shards.len(), 1, "one shard: {shards:?}");
        let shard = shards[0].shard_id().expect("shard id").to_string();
        StreamReader {
            client,
            arn,
            shard,
            last_sequence: None,
        }
    }

    /// The records written since the last call, as the Lambda event a function would receive
    /// (serialised and parsed again, so only what travels as JSON gets through).
    pub async fn next(&mut self) -> Event {
        let request = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.arn)
            .shard_id(&self.shard);
        let request = match &self.last_sequence {
            Some(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let iterator = request
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator
            .expect("the shard is open");
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await
            .expect("GetRecords");
        if let Some(last) = out.records().last() {
            self.last_sequence = last
                .dynamodb()
                .and_then(|d| d.sequence_number())
                .map(String::from);
        }
        let records: Vec<Value> = out
            .records()
            .iter()
            .map(|r| lambda_record(r, &self.arn))
            .collect();
        let text = json!({ "Records": records }).to_string();
        serde_json::from_str(&text).expect("the Lambda DynamoDB event shape")
    }
}
