//! The DynamoDB stream glue with real Lambda payloads (fixtures in `fixtures/aws/`, items in the
//! layout `DynamoEventStore` writes: envelope attributes plus `data` as a map).
//!
//! Only `INSERT`s carry events; an undecodable record fails itself and every later record; a
//! record the core fails does the same. The image decoder here is a test stand-in for
//! `DynamoEventStore::decode_item` (the binaries use the real one).
#![cfg(feature = "aws")]

use std::time::Duration;

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use chrono::Utc;
use jobledger_events::chain::canonical_json;
use jobledger_events::testing::append_history;
use jobledger_events::{RecordedEvent, SqliteEventStore};
use jobledger_handlers::aws::glue;
use jobledger_handlers::aws::stream::{self, ImageDecoder};
use jobledger_handlers::local::SqliteJobQueue;
use jobledger_handlers::ports::{JobMessage, JobQueue};
use jobledger_projections::{SqliteViewStore, ViewStore};
use serde_json::{Map, Value};

/// Decodes images whose payload is a `data` map, as `DynamoEventStore` writes small payloads.
struct MapImages;

fn plain(v: &Value) -> Value {
    let (tag, inner) = v
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("attribute");
    match tag.as_str() {
        "S" | "BOOL" => inner.clone(),
        "N" => serde_json::from_str(inner.as_str().expect("N text")).expect("number"),
        "NULL" => Value::Null,
        "L" => Value::Array(inner.as_array().expect("L").iter().map(plain).collect()),
        "M" => Value::Object(
            inner
                .as_object()
                .expect("M")
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect::<Map<_, _>>(),
        ),
        other => panic!("unexpected attribute type {other}"),
    }
}

impl ImageDecoder for MapImages {
    async fn decode_image(&self, record: &EventRecord) -> Result<RecordedEvent, String> {
        let mut item = match plain(&serde_json::json!({
            "M": serde_json::to_value(&record.change.new_image).map_err(|e| e.to_string())?
        })) {
            Value::Object(m) => m,
            _ => return Err("not a map".into()),
        };
        let data = canonical_json(&item.remove("data").ok_or("no data")?);
        item.insert(
            "data".into(),
            serde_json::from_str(&data).map_err(|e| e.to_string())?,
        );
        // Re-serialising a canonical payload with serde_json keeps its text: keys sorted, same numbers.
        serde_json::from_value::<Value>(Value::Object(item))
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_str(&v.to_string()).map_err(|e| e.to_string()))
    }
}

fn fixture(name: &str) -> Event {
    let path = format!("{}/tests/fixtures/aws/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not a stream event: {e}"))
}

fn failures(response: &aws_lambda_events::event::streams::DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect()
}

struct Stores {
    _dir: tempfile::TempDir,
    events: SqliteEventStore,
    queue: SqliteJobQueue,
    views: SqliteViewStore,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("temp dir");
    Stores {
        events: SqliteEventStore::open(dir.path().join("events.db")).expect("events"),
        queue: SqliteJobQueue::open(dir.path().join("queue.db")).expect("queue"),
        views: SqliteViewStore::open(dir.path().join("views.db")).expect("views"),
        _dir: dir,
    }
}

#[tokio::test]
async fn inserts_decode_to_their_events_and_other_records_are_acknowledged() {
    let batch = stream::decode(&MapImages, &fixture("stream_submitted.json")).await;
    assert_eq!(
        batch.ids,
        ["4100000000000000000000001", "4100000000000000000000002"]
    );
    assert_eq!(batch.records.len(), 1, "the MODIFY carries no event");
    let record = &batch.records[0];
    assert_eq!(record.id, "4100000000000000000000001");
    assert_eq!(record.event.event_type, "JobSubmitted");
    assert_eq!(record.event.version, 1);
    assert!(record.event.hash_is_valid());
    assert!(batch.undecodable.is_none());
    assert!(batch.failures(&[]).is_empty());
}

#[tokio::test]
async fn a_submitted_job_is_dispatched_from_its_stream_record() {
    let s = stores();
    let batch = stream::decode(&MapImages, &fixture("stream_submitted.json")).await;
    let submitted: Vec<RecordedEvent> = batch.records.iter().map(|r| r.event.clone()).collect();
    append_history(&s.events, &submitted, 10)
        .await
        .expect("ledger holds v1");

    let response = glue::dispatch_stream(
        &MapImages,
        &s.events,
        &s.queue,
        &fixture("stream_submitted.json"),
        Utc::now(),
    )
    .await;
    assert!(failures(&response).is_empty());
    let got = s
        .queue
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    let message = JobMessage::from_body(&got[0].body).expect("job message");
    assert_eq!((message.job_id, message.attempt), (submitted[0].job_id, 1));
    assert_eq!(message.event_id, submitted[0].event_id);
}

#[tokio::test]
async fn a_tampered_record_fails_with_every_later_record_and_earlier_ones_are_projected() {
    let s = stores();
    let event = fixture("stream_tampered.json");
    let batch = stream::decode(&MapImages, &event).await;
    let bad = batch.undecodable.as_ref().expect("the tampered record");
    assert_eq!(bad.record, "4200000000000000000000002");
    assert!(bad.reason.contains("hash"), "{bad}");
    append_history(&s.events, &[batch.records[0].event.clone()], 10)
        .await
        .expect("ledger holds v1");

    let response = glue::project_stream(&MapImages, &s.events, &s.views, &event).await;
    assert_eq!(
        failures(&response),
        ["4200000000000000000000002", "4200000000000000000000003"]
    );
    let view = s
        .views
        .get(batch.records[0].event.job_id)
        .await
        .expect("read view")
        .expect("v1 was projected");
    assert_eq!(
        view.last_version, 1,
        "nothing after the bad record was applied"
    );
}

#[tokio::test]
async fn an_insert_without_a_new_image_is_a_failed_item_not_a_panic() {
    let batch = stream::decode(&MapImages, &fixture("stream_no_image.json")).await;
    assert_eq!(batch.records.len(), 1, "the REMOVE is ignored");
    let bad = batch.undecodable.as_ref().expect("the empty INSERT");
    assert!(bad.reason.contains("NewImage"), "{bad}");
    assert_eq!(batch.failures(&[]), ["4300000000000000000000003"]);
}

#[tokio::test]
async fn a_record_the_core_fails_fails_with_every_later_record_ignored_ones_included() {
    // The ledger does not hold the job: the dispatcher cannot load it, so v1 fails.
    let s = stores();
    let response = glue::dispatch_stream(
        &MapImages,
        &s.events,
        &s.queue,
        &fixture("stream_submitted.json"),
        Utc::now(),
    )
    .await;
    assert_eq!(
        failures(&response),
        ["4100000000000000000000001", "4100000000000000000000002"]
    );
    assert!(
        s.queue
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .expect("receive")
            .is_empty()
    );
}
