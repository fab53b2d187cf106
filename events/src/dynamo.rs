//! `DynamoEventStore`: the ledger on DynamoDB (the AWS path), with oversized payloads in S3.
//!
//! # Tables (names come from Terraform: `EVENTS_TABLE`, `IDEMPOTENCY_TABLE`, `RESULTS_BUCKET`)
//!
//! * `events`: pk `job_id` (S), sk `version` (N), one item per event. The envelope fields are
//!   top-level attributes (`event_id`, `type`, `schema`, `at`, `actor`, `correlation_id`,
//!   `causation_id`, `prev_hash`, `hash`; ids and hashes as strings) and the payload is one of:
//!   - `data` (M): the payload as a DynamoDB map, so the console, PartiQL and stream consumers can
//!     read it. Read back, it is re-serialised with `chain::canonical_json`, which gives back the
//!     exact canonical text the hash covers (key order and number spelling are not kept by DynamoDB).
//!   - `data_json` (S): the canonical text itself, for the rare payload a map cannot hold (a number
//!     outside DynamoDB's range, an empty key, nesting deeper than 32 levels).
//!   - `data_uri` (S) + `data_sha256` (S): a payload whose item would exceed [`INLINE_ITEM_LIMIT`]
//!     (DynamoDB items stop at 400 KB), stored in S3 as its canonical bytes under
//!     `payloads/<job_id>/<version>-<event_id>.json`. The event id in the key keeps a losing
//!     appender from overwriting the winner's payload. The digest lets a load tell a damaged or
//!     swapped object from the real payload.
//! * `idempotency`: pk `key` (S) with `job_id`, `fingerprint`, `created_at` and the TTL attribute
//!   `expires_at` (N, epoch seconds, created + 24 h).
//!
//! # Appends
//!
//! One `TransactWriteItems` per batch: a `Put` per event conditioned on
//! `attribute_not_exists(version)`, plus the idempotency `Put` conditioned on the key being free
//! (or expired: TTL deletion lags by up to days). At most [`MAX_TRANSACT_ITEMS`] items, so a batch
//! of more events is refused. A condition can only say "this version is taken"; that the caller's
//! `expected_version` really is the head (and not beyond it, which would leave a gap) is checked
//! before the transaction by reading that version. The check is sound outside the transaction
//! because events are never deleted: once version `n` exists it exists forever. It is a `Query`,
//! not a transaction `ConditionCheck`, because the roles of the dispatcher, launcher, sweeper and
//! worker may `Query` but not `ConditionCheckItem` (terraform/contract.json).
//!
//! No `ClientRequestToken` is sent: when a response is lost and the SDK retries, the retry fails
//! its own conditions, and the store recognises its own events at those versions (same event id
//! and hash) and reports success instead of a conflict.
//!
//! # Loads
//!
//! Consistent-read `Query` on the job, following `LastEvaluatedKey` (a page stops at 1 MB, and a
//! job's history can be longer). Versions must be exactly 1, 2, 3 …: a hole is reported as
//! `Corrupt`, as is any item that does not decode.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TransactWriteItem,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::chain::canonical_json;
use crate::envelope::{Hash, RecordedEvent, format_time, parse_time};
use crate::ids::JobId;
use crate::store::{AppendBatch, EventStore, IdempotencyRecord, StoreError};

/// Most items DynamoDB accepts in one `TransactWriteItems` (events plus the idempotency item).
pub const MAX_TRANSACT_ITEMS: usize = 100;

/// Estimated item size above which a payload goes to S3 (DynamoDB's hard limit is 400 KB; the rest
/// is headroom for the envelope and for estimation error).
pub const INLINE_ITEM_LIMIT: usize = 300 * 1024;

/// Estimated size of one transaction above which the largest payloads also go to S3 (DynamoDB
/// refuses transactions over 4 MB).
const TRANSACTION_BUDGET: usize = 3_500_000;

/// How long an idempotency claim holds (also the TTL of its item).
const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// Deepest nesting DynamoDB accepts in a map attribute.
const MAX_DYNAMO_DEPTH: usize = 32;

/// DynamoDB error codes (in a response or a cancellation reason) that mean "try again later".
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "ThrottlingError",
    "ProvisionedThroughputExceededException",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
    "TransactionConflict",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
    "SlowDown",
];

/// A required environment variable is missing (it names a resource Terraform created).
#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is not set (see docs/deploy.md, terraform/contract.json)")]
pub struct MissingEnv(pub &'static str);

/// Reads an environment variable, treating an empty value as unset.
pub fn env_var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Where the ledger lives. Only the api claims idempotency keys and only the api and the worker
/// write payloads, so the other functions get neither name from Terraform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsTables {
    /// The events table (`EVENTS_TABLE`).
    pub events: String,
    /// The idempotency table (`IDEMPOTENCY_TABLE`); needed to claim or look up keys.
    pub idempotency: Option<String>,
    /// The bucket for oversized payloads (`RESULTS_BUCKET`); needed to write them, not to read them.
    pub payload_bucket: Option<String>,
}

impl EventsTables {
    /// All three names.
    pub fn new(
        events: impl Into<String>,
        idempotency: impl Into<String>,
        payload_bucket: impl Into<String>,
    ) -> Self {
        EventsTables {
            events: events.into(),
            idempotency: Some(idempotency.into()),
            payload_bucket: Some(payload_bucket.into()),
        }
    }

    /// Only the events table: for functions that neither claim idempotency keys nor write payloads.
    pub fn events_only(events: impl Into<String>) -> Self {
        EventsTables {
            events: events.into(),
            idempotency: None,
            payload_bucket: None,
        }
    }

    /// `EVENTS_TABLE` (required), `IDEMPOTENCY_TABLE` and `RESULTS_BUCKET` (optional).
    pub fn from_env() -> Result<Self, MissingEnv> {
        Ok(EventsTables {
            events: env_var("EVENTS_TABLE").ok_or(MissingEnv("EVENTS_TABLE"))?,
            idempotency: env_var("IDEMPOTENCY_TABLE"),
            payload_bucket: env_var("RESULTS_BUCKET"),
        })
    }
}

/// The DynamoDB ledger. Cheap to clone (the SDK clients are handles).
#[derive(Clone, Debug)]
pub struct DynamoEventStore {
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    tables: Arc<EventsTables>,
}

/// An SDK failure, kept as text with the full error chain (the SDK's own `Display` says only
/// "service error").
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
struct AwsError {
    operation: &'static str,
    message: String,
}

fn aws_error(operation: &'static str, message: impl Into<String>) -> AwsError {
    AwsError {
        operation,
        message: message.into(),
    }
}

/// Throttling, 5xx, timeouts and transport failures may pass on a retry; the rest will not.
/// (The S3 and DynamoDB clients share this error type.)
pub fn sdk_error_is_retryable<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error()
                || s.err().code().is_some_and(|c| RETRYABLE_CODES.contains(&c))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => false,
    }
}

fn sdk_error<E>(operation: &'static str, e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let retryable = sdk_error_is_retryable(&e);
    StoreError::backend(
        retryable,
        aws_error(operation, DisplayErrorContext(&e).to_string()),
    )
}

fn refuse(message: impl Into<String>) -> StoreError {
    StoreError::backend(false, aws_error("append", message))
}

/// The envelope attributes of an event item (the payload attributes are handled apart).
#[derive(Serialize, Deserialize)]
struct EventItem {
    job_id: String,
    version: u64,
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema: u32,
    at: String,
    actor: String,
    correlation_id: String,
    causation_id: String,
    prev_hash: Hash,
    hash: Hash,
}

/// An idempotency item.
#[derive(Serialize, Deserialize)]
struct IdempotencyItem {
    key: String,
    job_id: JobId,
    fingerprint: String,
    created_at: String,
    expires_at: i64,
}

/// Where an event item keeps its payload.
enum Payload {
    Map(AttributeValue),
    Json(String),
    S3 { uri: String, sha256: String },
}

/// Whether DynamoDB can hold `value` as a map or list attribute without changing its meaning.
pub fn fits_dynamo_map(value: &serde_json::Value) -> bool {
    fn ok(value: &serde_json::Value, depth: usize) -> bool {
        match value {
            serde_json::Value::Number(n) => match n.as_f64() {
                // DynamoDB numbers: magnitude 1e-130 ..= 9.99…e125, or zero.
                Some(x) => x == 0.0 || (1e-130..1e126).contains(&x.abs()),
                None => false,
            },
            serde_json::Value::Array(items) => {
                depth < MAX_DYNAMO_DEPTH && items.iter().all(|v| ok(v, depth + 1))
            }
            serde_json::Value::Object(map) => {
                depth < MAX_DYNAMO_DEPTH
                    && map
                        .iter()
                        .all(|(k, v)| !k.is_empty() && k.len() <= 65_535 && ok(v, depth + 1))
            }
            _ => true,
        }
    }
    ok(value, 0)
}

/// DynamoDB's size of an attribute value, as its documentation defines it (numbers counted by
/// their text, a slight overestimate).
pub fn attribute_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + attribute_size(v))
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + attribute_size(v)).sum::<usize>(),
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// DynamoDB's size of an item.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + attribute_size(v)).sum()
}

fn corrupt(job_id: &str, version: Option<u64>, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        job_id: job_id.to_string(),
        version,
        reason: reason.into(),
    }
}

/// `s3://bucket/key` → (bucket, key).
fn parse_s3_uri(uri: &str) -> Option<(&str, &str)> {
    let (bucket, key) = uri.strip_prefix("s3://")?.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical text of a JSON value as a `RawValue`.
fn canonical_raw(value: &serde_json::Value) -> Result<Box<RawValue>, String> {
    RawValue::from_string(canonical_json(value)).map_err(|e| e.to_string())
}

/// An event ready to be written: its item, with the payload inline (for now).
struct Prepared {
    item: HashMap<String, AttributeValue>,
    size: usize,
    /// The canonical payload text, kept to offload it if needed.
    data: String,
    inline: bool,
}

impl DynamoEventStore {
    /// A store on existing tables. The clients carry region, credentials and endpoint.
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        tables: EventsTables,
    ) -> Self {
        DynamoEventStore {
            dynamo,
            s3,
            tables: Arc::new(tables),
        }
    }

    /// A store on the events table alone ([`EventsTables::events_only`]): it appends and loads,
    /// and reads offloaded payloads, but claims no idempotency key and offloads no payload (the
    /// dispatcher, projector, launcher, sweeper and notifier).
    pub fn events_only(
        dynamo: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        events_table: impl Into<String>,
    ) -> Self {
        Self::new(dynamo, s3, EventsTables::events_only(events_table))
    }

    /// The table and bucket names.
    pub fn tables(&self) -> &EventsTables {
        &self.tables
    }

    /// Creates the tables (and the payload bucket) if they do not exist, for tests and dev:
    /// on-demand billing, a `NEW_IMAGE` stream on events, TTL on `expires_at`. Returns once
    /// both tables are `ACTIVE`. Production tables come from Terraform.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        let events = &self.tables.events;
        let created = self
            .dynamo
            .create_table()
            .table_name(events)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("job_id", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("version", ScalarAttributeType::N)?)
            .key_schema(key("job_id", KeyType::Hash)?)
            .key_schema(key("version", KeyType::Range)?)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
                    .map_err(|e| refuse(e.to_string()))?,
            )
            .send()
            .await;
        ignore_existing("CreateTable events", created)?;
        if let Some(table) = &self.tables.idempotency {
            let created = self
                .dynamo
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute("key", ScalarAttributeType::S)?)
                .key_schema(key("key", KeyType::Hash)?)
                .send()
                .await;
            ignore_existing("CreateTable idempotency", created)?;
            self.wait_active(table).await?;
            let ttl = self
                .dynamo
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name("expires_at")
                        .build()
                        .map_err(|e| refuse(e.to_string()))?,
                )
                .send()
                .await;
            // Enabling TTL twice is a ValidationException ("already enabled"): fine for a helper.
            if let Err(e) = ttl
                && e.code() != Some("ValidationException")
            {
                return Err(sdk_error("UpdateTimeToLive", e));
            }
        }
        self.wait_active(events).await?;
        if let Some(bucket) = &self.tables.payload_bucket {
            create_bucket(&self.s3, bucket).await?;
        }
        Ok(())
    }

    async fn wait_active(&self, table: &str) -> Result<(), StoreError> {
        for _ in 0..600 {
            let out = self
                .dynamo
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeTable", e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(StoreError::backend(
            true,
            aws_error(
                "DescribeTable",
                format!("{table} is not ACTIVE after 2 minutes"),
            ),
        ))
    }

    /// Decodes one event item (from a `Query` or a stream's `NEW_IMAGE`), fetching an offloaded
    /// payload from S3. Any defect is `Corrupt`, naming the job and, if readable, the version.
    pub async fn decode_item(
        &self,
        mut item: HashMap<String, AttributeValue>,
    ) -> Result<RecordedEvent, StoreError> {
        let job = match item.get("job_id") {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => {
                return Err(corrupt(
                    "(unknown)",
                    None,
                    "job_id is missing or not a string",
                ));
            }
        };
        let version = match item.get("version") {
            Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let bad = |reason: String| corrupt(&job, version, reason);
        let data = item.remove("data");
        let data_json = item.remove("data_json");
        let data_uri = item.remove("data_uri");
        let data_sha256 = item.remove("data_sha256");
        let envelope: EventItem = serde_dynamo::aws_sdk_dynamodb_1::from_item(item)
            .map_err(|e| bad(format!("envelope: {e}")))?;
        let job_id: JobId = envelope
            .job_id
            .parse()
            .map_err(|e| bad(format!("job_id: {e}")))?;
        let at = parse_time(&envelope.at).map_err(|e| bad(format!("at: {e}")))?;
        let data = match (data, data_json, data_uri, data_sha256) {
            (Some(AttributeValue::M(map)), None, None, None) => {
                let value: serde_json::Value =
                    serde_dynamo::aws_sdk_dynamodb_1::from_attribute_value(AttributeValue::M(map))
                        .map_err(|e| bad(format!("data: {e}")))?;
                canonical_raw(&value).map_err(|e| bad(format!("data: {e}")))?
            }
            (None, Some(AttributeValue::S(text)), None, None) => {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(format!("data_json: {e}")))?;
                canonical_raw(&value).map_err(|e| bad(format!("data_json: {e}")))?
            }
            (None, None, Some(AttributeValue::S(uri)), Some(AttributeValue::S(sha256))) => {
                let bytes = self.fetch_payload(&job, version, &uri).await?;
                if sha256_hex(&bytes) != sha256 {
                    return Err(bad(format!("payload {uri} does not match data_sha256")));
                }
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("payload {uri}: {e}")))?;
                canonical_raw(&value).map_err(|e| bad(format!("payload {uri}: {e}")))?
            }
            _ => {
                return Err(bad(
                    "the payload must be exactly one of: data (a map), data_json (a string), \
                     data_uri + data_sha256 (strings)"
                        .into(),
                ));
            }
        };
        Ok(RecordedEvent {
            job_id,
            version: envelope.version,
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            schema: envelope.schema,
            data,
            at,
            actor: envelope.actor,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            prev_hash: envelope.prev_hash,
            hash: envelope.hash,
        })
    }

    async fn fetch_payload(
        &self,
        job: &str,
        version: Option<u64>,
        uri: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let (bucket, key) = parse_s3_uri(uri).ok_or_else(|| {
            corrupt(
                job,
                version,
                format!("data_uri {uri:?} is not s3://bucket/key"),
            )
        })?;
        let out = match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) => {
                if let SdkError::ServiceError(s) = &e
                    && s.err().is_no_such_key()
                {
                    return Err(corrupt(job, version, format!("payload {uri} is missing")));
                }
                return Err(StoreError::backend(
                    sdk_error_is_retryable(&e),
                    aws_error(
                        "S3 GetObject",
                        format!("{uri}: {}", DisplayErrorContext(&e)),
                    ),
                ));
            }
        };
        let body = out.body.collect().await.map_err(|e| {
            StoreError::backend(true, aws_error("S3 GetObject", format!("{uri}: {e}")))
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Builds the item of one event with its payload inline (as a map, or as text if a map
    /// cannot hold it). Refuses a payload that is not canonical: it could not be stored as is.
    fn prepare(e: &RecordedEvent) -> Result<Prepared, StoreError> {
        let value: serde_json::Value = serde_json::from_str(e.data.get())
            .map_err(|err| refuse(format!("version {}: payload is not JSON: {err}", e.version)))?;
        let canonical = canonical_json(&value);
        if canonical != e.data.get() {
            return Err(refuse(format!(
                "version {}: payload is not in canonical form (chain::canonical_json)",
                e.version
            )));
        }
        let envelope = EventItem {
            job_id: e.job_id.to_string(),
            version: e.version,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema: e.schema,
            at: format_time(&e.at),
            actor: e.actor.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            prev_hash: e.prev_hash,
            hash: e.hash,
        };
        let mut item: HashMap<String, AttributeValue> =
            serde_dynamo::aws_sdk_dynamodb_1::to_item(&envelope)
                .map_err(|err| refuse(format!("version {}: {err}", e.version)))?;
        let payload = if value.is_object() && fits_dynamo_map(&value) {
            Payload::Map(
                serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(&value)
                    .map_err(|err| refuse(format!("version {}: {err}", e.version)))?,
            )
        } else {
            Payload::Json(canonical.clone())
        };
        set_payload(&mut item, payload);
        Ok(Prepared {
            size: item_size(&item),
            item,
            data: canonical,
            inline: true,
        })
    }

    /// Moves a payload to S3 and points the item at it.
    async fn offload(&self, p: &mut Prepared, e: &RecordedEvent) -> Result<(), StoreError> {
        let bucket = self.tables.payload_bucket.as_deref().ok_or_else(|| {
            refuse(format!(
                "version {}: the payload is too large for an item ({} bytes) and no payload bucket \
                 (RESULTS_BUCKET) is configured",
                e.version, p.size
            ))
        })?;
        let key = format!("payloads/{}/{}-{}.json", e.job_id, e.version, e.event_id);
        let bytes = p.data.as_bytes().to_vec();
        let sha256 = sha256_hex(&bytes);
        self.s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(bytes.into())
            .content_type("application/json")
            .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
            .send()
            .await
            .map_err(|err| {
                StoreError::backend(
                    sdk_error_is_retryable(&err),
                    aws_error(
                        "S3 PutObject",
                        format!("s3://{bucket}/{key}: {}", DisplayErrorContext(&err)),
                    ),
                )
            })?;
        let uri = format!("s3://{bucket}/{key}");
        tracing::debug!(job_id = %e.job_id, version = e.version, %uri, size = p.size, "event payload stored in S3");
        set_payload(&mut p.item, Payload::S3 { uri, sha256 });
        p.size = item_size(&p.item);
        p.inline = false;
        Ok(())
    }

    /// The item of `(job_id, version)`, read consistently (a `Query`, which every appender's role
    /// may run, unlike `GetItem`).
    async fn item_at(
        &self,
        job_id: JobId,
        version: u64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .dynamo
            .query()
            .table_name(&self.tables.events)
            .key_condition_expression("#j = :j AND #v = :v")
            .expression_attribute_names("#j", "job_id")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":j", AttributeValue::S(job_id.to_string()))
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        Ok(out.items.unwrap_or_default().into_iter().next())
    }

    /// Whether the batch's first event is already stored as written (an earlier try of this very
    /// append committed, and its response was lost).
    async fn already_appended(&self, batch: &AppendBatch) -> Result<bool, StoreError> {
        let Some(first) = batch.events.first() else {
            return Ok(false);
        };
        let Some(item) = self.item_at(batch.job_id, first.version).await? else {
            return Ok(false);
        };
        let same = |name: &str, want: String| matches!(item.get(name), Some(AttributeValue::S(s)) if *s == want);
        Ok(same("event_id", first.event_id.to_string()) && same("hash", first.hash.to_hex()))
    }

    fn idempotency_table(&self) -> Result<&str, StoreError> {
        self.tables.idempotency.as_deref().ok_or_else(|| {
            StoreError::backend(
                false,
                aws_error(
                    "idempotency",
                    "no idempotency table (IDEMPOTENCY_TABLE) is configured",
                ),
            )
        })
    }

    fn idempotency_put(&self, record: &IdempotencyRecord) -> Result<Put, StoreError> {
        let table = self.idempotency_table()?;
        let created = record.created_at.timestamp();
        let item = IdempotencyItem {
            key: record.key.clone(),
            job_id: record.job_id,
            fingerprint: record.fingerprint.clone(),
            created_at: format_time(&record.created_at),
            expires_at: (record.created_at + IDEMPOTENCY_TTL).timestamp(),
        };
        let item = serde_dynamo::aws_sdk_dynamodb_1::to_item(&item)
            .map_err(|e| refuse(format!("idempotency item: {e}")))?;
        Put::builder()
            .table_name(table)
            .set_item(Some(item))
            // An expired claim still sits in the table until TTL deletion gets to it (up to days).
            .condition_expression("attribute_not_exists(#k) OR #e <= :now")
            .expression_attribute_names("#k", "key")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_values(":now", AttributeValue::N(created.to_string()))
            .build()
            .map_err(|e| refuse(e.to_string()))
    }

    /// Maps a cancelled transaction to the store's answer.
    async fn cancelled(
        &self,
        batch: &AppendBatch,
        codes: Vec<Option<String>>,
        message: String,
    ) -> Result<(), StoreError> {
        let n = batch.events.len();
        let failed = |c: &Option<String>| c.as_deref() == Some("ConditionalCheckFailed");
        let event_taken = codes.iter().take(n).any(failed);
        let key_taken = batch.idempotency.is_some() && codes.get(n).is_some_and(failed);
        if event_taken && self.already_appended(batch).await? {
            return Ok(());
        }
        if key_taken && let Some(record) = &batch.idempotency {
            return match self.idempotency(&record.key).await? {
                Some(existing) => Err(StoreError::IdempotencyKeyTaken { existing }),
                // Deleted (expired) between the transaction and the read: the caller may try again.
                None => Err(StoreError::backend(
                    true,
                    aws_error(
                        "TransactWriteItems",
                        format!("idempotency key {} was taken, then vanished", record.key),
                    ),
                )),
            };
        }
        if event_taken {
            return Err(StoreError::Conflict {
                job_id: batch.job_id,
                expected: batch.expected_version,
            });
        }
        let validation = codes
            .iter()
            .flatten()
            .any(|c| c == "ValidationError" || c == "ItemCollectionSizeLimitExceeded");
        Err(StoreError::backend(
            !validation,
            aws_error("TransactWriteItems", message),
        ))
    }
}

/// The item `append` writes for `event` when its payload stays inline, e.g. to import an
/// exported ledger with `BatchWriteItem` or to build stream fixtures. A payload too large for an
/// item is refused: only `append` can move it to S3.
pub fn event_item(event: &RecordedEvent) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let prepared = DynamoEventStore::prepare(event)?;
    if prepared.size > INLINE_ITEM_LIMIT {
        return Err(refuse(format!(
            "version {}: the item would be {} bytes; only append can store its payload in S3",
            event.version, prepared.size
        )));
    }
    Ok(prepared.item)
}

fn set_payload(item: &mut HashMap<String, AttributeValue>, payload: Payload) {
    for name in ["data", "data_json", "data_uri", "data_sha256"] {
        item.remove(name);
    }
    match payload {
        Payload::Map(av) => {
            item.insert("data".into(), av);
        }
        Payload::Json(text) => {
            item.insert("data_json".into(), AttributeValue::S(text));
        }
        Payload::S3 { uri, sha256 } => {
            item.insert("data_uri".into(), AttributeValue::S(uri));
            item.insert("data_sha256".into(), AttributeValue::S(sha256));
        }
    }
}

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| refuse(e.to_string()))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| refuse(e.to_string()))
}

fn ignore_existing<T, E>(
    operation: &'static str,
    result: Result<T, SdkError<E>>,
) -> Result<(), StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
        Err(e) => Err(sdk_error(operation, e)),
    }
}

/// Creates a bucket if it does not exist (for tests and dev).
async fn create_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), StoreError> {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let mut request = s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that refuses an explicit location constraint.
    if let Some(region) = s3.config().region().map(|r| r.as_ref().to_string())
        && region != "us-east-1"
    {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.code(),
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(StoreError::backend(
            false,
            aws_error("S3 CreateBucket", DisplayErrorContext(&e).to_string()),
        )),
    }
}

/// Rejects batches no correct caller builds (they would break the gap-free versions).
fn check_batch(batch: &AppendBatch) -> Result<(), StoreError> {
    let items = batch.events.len() + usize::from(batch.idempotency.is_some());
    if items > MAX_TRANSACT_ITEMS {
        return Err(refuse(format!(
            "a batch of {} events{} needs {items} transaction items; DynamoDB takes at most \
             {MAX_TRANSACT_ITEMS}: append it in smaller batches",
            batch.events.len(),
            if batch.idempotency.is_some() {
                " and an idempotency key"
            } else {
                ""
            },
        )));
    }
    for (i, e) in batch.events.iter().enumerate() {
        let version = batch.expected_version + 1 + i as u64;
        if e.job_id != batch.job_id || e.version != version {
            return Err(refuse(format!(
                "malformed batch for job {} after version {}: event {i} is job {} version {} \
                 (expected version {version})",
                batch.job_id, batch.expected_version, e.job_id, e.version
            )));
        }
    }
    if batch.events.is_empty() && batch.idempotency.is_some() {
        return Err(refuse("an idempotency key can only be claimed with events"));
    }
    Ok(())
}

impl EventStore for DynamoEventStore {
    async fn load(&self, job_id: JobId) -> Result<Vec<RecordedEvent>, StoreError> {
        let job = job_id.to_string();
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamo
                .query()
                .table_name(&self.tables.events)
                .key_condition_expression("#j = :j")
                .expression_attribute_names("#j", "job_id")
                .expression_attribute_values(":j", AttributeValue::S(job.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let mut history = Vec::with_capacity(items.len());
        for (expected, item) in (1u64..).zip(items) {
            let event = self.decode_item(item).await?;
            if event.job_id != job_id {
                return Err(corrupt(
                    &job,
                    Some(event.version),
                    format!("item belongs to job {}", event.job_id),
                ));
            }
            if event.version != expected {
                return Err(corrupt(
                    &job,
                    Some(expected),
                    format!(
                        "version {expected} is missing (the next stored version is {})",
                        event.version
                    ),
                ));
            }
            history.push(event);
        }
        Ok(history)
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        check_batch(&batch)?;
        if batch.events.is_empty() {
            return Ok(());
        }
        let mut prepared = batch
            .events
            .iter()
            .map(Self::prepare)
            .collect::<Result<Vec<_>, _>>()?;
        for (p, e) in prepared.iter_mut().zip(&batch.events) {
            if p.size > INLINE_ITEM_LIMIT {
                self.offload(p, e).await?;
            }
        }
        // Many large-but-inline payloads can still overflow the transaction: offload the largest.
        while prepared.iter().map(|p| p.size).sum::<usize>() > TRANSACTION_BUDGET {
            let Some(i) = (0..prepared.len())
                .filter(|&i| prepared[i].inline)
                .max_by_key(|&i| prepared[i].size)
            else {
                break;
            };
            self.offload(&mut prepared[i], &batch.events[i]).await?;
        }
        if batch.expected_version > 0
            && self
                .item_at(batch.job_id, batch.expected_version)
                .await?
                .is_none()
        {
            // The head is below the expected version: appending would leave a gap.
            return Err(StoreError::Conflict {
                job_id: batch.job_id,
                expected: batch.expected_version,
            });
        }
        let mut writes = Vec::with_capacity(prepared.len() + 1);
        for p in prepared {
            let put = Put::builder()
                .table_name(&self.tables.events)
                .set_item(Some(p.item))
                .condition_expression("attribute_not_exists(#v)")
                .expression_attribute_names("#v", "version")
                .build()
                .map_err(|e| refuse(e.to_string()))?;
            writes.push(TransactWriteItem::builder().put(put).build());
        }
        if let Some(record) = &batch.idempotency {
            writes.push(
                TransactWriteItem::builder()
                    .put(self.idempotency_put(record)?)
                    .build(),
            );
        }
        let result = self
            .dynamo
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(s))
                if matches!(
                    s.err(),
                    TransactWriteItemsError::TransactionCanceledException(_)
                ) =>
            {
                let message = DisplayErrorContext(s.err()).to_string();
                let codes = match s.into_err() {
                    TransactWriteItemsError::TransactionCanceledException(c) => c
                        .cancellation_reasons
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| r.code)
                        .collect(),
                    _ => Vec::new(),
                };
                self.cancelled(&batch, codes, message).await
            }
            Err(e) => Err(sdk_error("TransactWriteItems", e)),
        }
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let table = self.idempotency_table()?;
        let out = self
            .dynamo
            .get_item()
            .table_name(table)
            .key("key", AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let bad = |reason: String| corrupt(&format!("(idempotency key {key})"), None, reason);
        let item: IdempotencyItem =
            serde_dynamo::aws_sdk_dynamodb_1::from_item(item).map_err(|e| bad(e.to_string()))?;
        let created_at: DateTime<Utc> =
            parse_time(&item.created_at).map_err(|e| bad(format!("created_at: {e}")))?;
        Ok(Some(IdempotencyRecord {
            key: item.key,
            job_id: item.job_id,
            fingerprint: item.fingerprint,
            created_at,
        }))
    }
}
