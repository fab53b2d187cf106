//! DynamoDB stream records → ledger events.
//!
//! Only `INSERT`s carry events (the ledger is append-only); `MODIFY` and `REMOVE` are acknowledged
//! and ignored. The item image is decoded by the ledger's own `DynamoEventStore::decode_item` (so
//! stream and table agree: `data` re-canonicalised, `data_json`, payloads offloaded to S3), and the
//! event's hash is checked, so a record that does not decode to exactly the stored event is never
//! processed. A record that cannot be decoded stops the batch there: it and every later record are
//! reported as failed items, so Lambda delivers them again (and in the end to the DLQ).

use std::future::Future;

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use jobledger_events::{DynamoEventStore, RecordedEvent};

use super::lambda::fail_from;
use crate::dispatch::StreamRecord;

/// Why a stream record could not be turned into an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream record {record}: {reason}")]
pub struct DecodeFailure {
    /// The record's sequence number (or event id if it has none).
    pub record: String,
    /// What is wrong.
    pub reason: String,
}

/// A stream batch, decoded up to its first undecodable record.
#[derive(Clone, Debug, Default)]
pub struct DecodedBatch {
    /// The id of every record in the batch, in order (`SequenceNumber`).
    pub ids: Vec<String>,
    /// The events of the `INSERT`s before the first undecodable record, in order.
    pub records: Vec<StreamRecord>,
    /// The first record that could not be decoded.
    pub undecodable: Option<DecodeFailure>,
}

impl DecodedBatch {
    /// The batch item failures, given the ids of the records the core failed (in its order).
    pub fn failures(&self, core_failed: &[String]) -> Vec<String> {
        if !core_failed.is_empty() {
            return fail_from(&self.ids, core_failed);
        }
        match &self.undecodable {
            Some(bad) => fail_from(&self.ids, std::slice::from_ref(&bad.record)),
            None => Vec::new(),
        }
    }
}

/// The id Lambda knows a stream record by: its `SequenceNumber`.
pub fn record_id(record: &EventRecord) -> String {
    record
        .change
        .sequence_number
        .clone()
        .unwrap_or_else(|| record.event_id.clone())
}

/// Turns a stream record's `NewImage` into the stored event.
pub trait ImageDecoder: Send + Sync {
    /// The event of an `INSERT` record (its image is not empty).
    fn decode_image(
        &self,
        record: &EventRecord,
    ) -> impl Future<Output = Result<RecordedEvent, String>> + Send;
}

/// The ledger's own decoder: the same rules as a load (payload map, JSON text, or S3 reference).
impl ImageDecoder for DynamoEventStore {
    async fn decode_image(&self, record: &EventRecord) -> Result<RecordedEvent, String> {
        self.decode_item(record.change.new_image.clone().into())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Decodes a Lambda stream event (see the module docs).
pub async fn decode(decoder: &impl ImageDecoder, event: &Event) -> DecodedBatch {
    let mut batch = DecodedBatch {
        ids: event.records.iter().map(record_id).collect(),
        ..DecodedBatch::default()
    };
    for record in &event.records {
        match decode_record(decoder, record).await {
            Ok(Some(e)) => batch.records.push(StreamRecord {
                id: record_id(record),
                event: e,
            }),
            Ok(None) => {}
            Err(failure) => {
                tracing::error!(
                    record = failure.record,
                    reason = failure.reason,
                    "undecodable stream record"
                );
                batch.undecodable = Some(failure);
                break;
            }
        }
    }
    batch
}

/// One record: `Ok(None)` for a record that carries no new event (not an `INSERT`).
pub async fn decode_record(
    decoder: &impl ImageDecoder,
    record: &EventRecord,
) -> Result<Option<RecordedEvent>, DecodeFailure> {
    let fail = |reason: String| DecodeFailure {
        record: record_id(record),
        reason,
    };
    if record.event_name != "INSERT" {
        return Ok(None);
    }
    if record.change.sequence_number.is_none() {
        return Err(fail("no SequenceNumber".into()));
    }
    if record.change.new_image.is_empty() {
        return Err(fail(
            "INSERT without NewImage (the stream must be NEW_IMAGE)".into(),
        ));
    }
    let event = decoder.decode_image(record).await.map_err(fail)?;
    if !event.hash_is_valid() {
        return Err(fail(format!(
            "job {} version {}: the stored hash does not match the decoded event",
            event.job_id, event.version
        )));
    }
    Ok(Some(event))
}
