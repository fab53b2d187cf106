//! `DynamoNotifyStore`: the notifier's state and dead-letter list in DynamoDB, for the `notifier`
//! Lambda. One table (Terraform's `notifier_state`: pk `job_id` (S), sk `sink` (S)) holds three
//! kinds of item, told apart by the sort key, so a job's whole notifier state is one partition:
//!
//! | sort key | item |
//! |---|---|
//! | `<sink>` (`slack-bot`, `notion`, …) | the sink's [`SinkState`] for the job: `last_version`, `external_id`, `channel`, `message_version`, `reply_version` |
//! | `tries#<sink>#<version>` | failed tries of one record (`tries`), counted across Lambda invocations |
//! | `dead#<sink>#<version>` | a [`DeadLetter`]: the record a sink gave up on, with its last error |
//!
//! The state is written with `PutItem` conditional on the stored `last_version` being at most the
//! new one, so concurrent invocations (a retried batch racing a late one) can never move a sink
//! back. A dead letter's id is derived from (sink, job, version): adding the same record twice
//! updates one item. Listing and removing dead letters are operator actions: they `Scan` the table
//! (dead letters are rare and the table holds one small item per job and sink), and need
//! `dynamodb:Scan` and `dynamodb:DeleteItem`, which the Lambda's role does not have.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use chrono::{DateTime, Utc};
use jobledger_events::JobId;
use jobledger_events::dynamo::sdk_error_is_retryable;
use sha2::{Digest, Sha256};

use super::state::{
    DeadLetter, DeadLetterStore, FailureCounter, NewDeadLetter, NotifyStateStore, SinkState,
    StateError,
};

/// Partition key attribute.
const PK: &str = "job_id";
/// Sort key attribute.
const SK: &str = "sink";
/// Sort-key prefix of dead letters.
const DEAD: &str = "dead#";
/// Sort-key prefix of failure counters.
const TRIES: &str = "tries#";

/// The notifier's per-job, per-sink state and dead letters in one DynamoDB table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoNotifyStore {
    client: Client,
    table: String,
}

fn backend<E>(operation: &str, e: SdkError<E>) -> StateError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&e).to_string(),
    };
    StateError::Backend {
        retryable: sdk_error_is_retryable(&e),
        message: format!("DynamoDB {operation}: {message}"),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Reads items back; any defect names the item.
struct ItemReader<'a> {
    item: &'a HashMap<String, AttributeValue>,
    what: String,
}

impl ItemReader<'_> {
    fn corrupt(&self, attribute: &str) -> StateError {
        StateError::Corrupt(format!("{}: bad or missing {attribute}", self.what))
    }

    fn string(&self, attribute: &str) -> Result<String, StateError> {
        match self.item.get(attribute) {
            Some(AttributeValue::S(v)) => Ok(v.clone()),
            _ => Err(self.corrupt(attribute)),
        }
    }

    fn optional_string(&self, attribute: &str) -> Result<Option<String>, StateError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(true)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            _ => Err(self.corrupt(attribute)),
        }
    }

    fn number<T: std::str::FromStr>(&self, attribute: &str) -> Result<T, StateError> {
        match self.item.get(attribute) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| self.corrupt(attribute)),
            _ => Err(self.corrupt(attribute)),
        }
    }
}

/// The stable id of the dead letter of (sink, job, version): below 2^53, so it survives any JSON
/// reader an operator pipes the list through.
fn dead_letter_id(sink: &str, job_id: JobId, version: u64) -> i64 {
    let digest = Sha256::digest(format!("{sink}\n{job_id}\n{version}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let id = (u64::from_be_bytes(bytes) >> 11).max(1);
    i64::try_from(id).unwrap_or(1)
}

impl DynamoNotifyStore {
    /// The store on `table` (Terraform's `notifier_state` table, `NOTIFIER_STATE_TABLE`).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoNotifyStore {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table if it does not exist (tests and dev; production tables come from
    /// Terraform) and waits until it is `ACTIVE`.
    pub async fn create_table(&self) -> Result<(), StateError> {
        let definition = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StateError::Backend {
                    retryable: false,
                    message: e.to_string(),
                })
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StateError::Backend {
                    retryable: false,
                    message: e.to_string(),
                })
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(definition(PK)?)
            .attribute_definitions(definition(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(backend("CreateTable", e)),
        }
        for _ in 0..600 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| backend("DescribeTable", e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StateError::Backend {
            retryable: true,
            message: format!("DynamoDB table {} is not ACTIVE after a minute", self.table),
        })
    }

    fn key(&self, job_id: JobId, sort: String) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (PK.to_string(), s(job_id.to_string())),
            (SK.to_string(), s(sort)),
        ])
    }

    /// Every dead-letter item (a `Scan`, following `LastEvaluatedKey`).
    async fn dead_letter_items(
        &self,
        sink: Option<&str>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StateError> {
        let mut filter = "begins_with(#sk, :dead)".to_string();
        let mut values = HashMap::from([(":dead".to_string(), s(DEAD))]);
        if let Some(sink) = sink {
            filter.push_str(" AND #sink_name = :sink");
            values.insert(":sink".into(), s(sink));
        }
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut scan = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression(&filter)
                .expression_attribute_names("#sk", SK)
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start.take());
            if sink.is_some() {
                scan = scan.expression_attribute_names("#sink_name", "sink_name");
            }
            let page = scan.send().await.map_err(|e| backend("Scan", e))?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }
}

fn dead_letter(item: &HashMap<String, AttributeValue>) -> Result<(DeadLetter, String), StateError> {
    let r = ItemReader {
        item,
        what: format!(
            "dead letter {:?}/{:?}",
            item.get(PK).and_then(|v| v.as_s().ok()),
            item.get(SK).and_then(|v| v.as_s().ok())
        ),
    };
    let time = |attribute: &str| -> Result<DateTime<Utc>, StateError> {
        DateTime::parse_from_rfc3339(&r.string(attribute)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| r.corrupt(attribute))
    };
    let letter = DeadLetter {
        id: r.number("id")?,
        sink: r.string("sink_name")?,
        job_id: r.string(PK)?.parse().map_err(|_| r.corrupt(PK))?,
        version: r.number("version")?,
        event_id: r
            .string("event_id")?
            .parse()
            .map_err(|_| r.corrupt("event_id"))?,
        seq: r.number("seq")?,
        error: r.string("error")?,
        tries: r.number("tries")?,
        failed_at: time("failed_at")?,
    };
    Ok((letter, r.string("listed_at")?))
}

impl NotifyStateStore for DynamoNotifyStore {
    async fn get(&self, sink: &str, job_id: JobId) -> Result<SinkState, StateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(job_id, sink.to_string())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(SinkState::default());
        };
        let r = ItemReader {
            item: &item,
            what: format!("notifier state {job_id}/{sink}"),
        };
        Ok(SinkState {
            last_version: r.number("last_version")?,
            external_id: r.optional_string("external_id")?,
            channel: r.optional_string("channel")?,
            message_version: r.number("message_version")?,
            reply_version: r.number("reply_version")?,
        })
    }

    async fn put(&self, sink: &str, job_id: JobId, state: &SinkState) -> Result<bool, StateError> {
        let mut item = self.key(job_id, sink.to_string());
        item.insert("last_version".into(), n(state.last_version));
        item.insert("message_version".into(), n(state.message_version));
        item.insert("reply_version".into(), n(state.reply_version));
        if let Some(id) = &state.external_id {
            item.insert("external_id".into(), s(id));
        }
        if let Some(channel) = &state.channel {
            item.insert("channel".into(), s(channel));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#v) OR #v <= :v")
            .expression_attribute_names("#v", "last_version")
            .expression_attribute_values(":v", n(state.last_version))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            // A concurrent invocation got further: its state stays.
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(backend("PutItem", e)),
        }
    }
}

impl FailureCounter for DynamoNotifyStore {
    async fn count_failure(
        &self,
        sink: &str,
        job_id: JobId,
        version: u64,
    ) -> Result<u32, StateError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(job_id, format!("{TRIES}{sink}#{version}"))))
            .update_expression("ADD #tries :one")
            .expression_attribute_names("#tries", "tries")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| backend("UpdateItem", e))?;
        let attributes = out.attributes.unwrap_or_default();
        ItemReader {
            item: &attributes,
            what: format!("failure counter {job_id}/{sink}/{version}"),
        }
        .number("tries")
    }
}

impl DeadLetterStore for DynamoNotifyStore {
    async fn add(&self, l: NewDeadLetter) -> Result<(), StateError> {
        let id = dead_letter_id(&l.sink, l.job_id, l.version);
        let names = [
            ("#id", "id"),
            ("#sink_name", "sink_name"),
            ("#version", "version"),
            ("#event_id", "event_id"),
            ("#seq", "seq"),
            ("#error", "error"),
            ("#failed_at", "failed_at"),
            ("#listed_at", "listed_at"),
            ("#tries", "tries"),
        ];
        let at = l.failed_at.to_rfc3339();
        let values = [
            (":id", n(id)),
            (":sink", s(&l.sink)),
            (":version", n(l.version)),
            (":event_id", s(l.event_id.to_string())),
            (":seq", n(l.seq)),
            (":error", s(&l.error)),
            (":at", s(at)),
            (":tries", n(l.tries)),
        ];
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(
                self.key(l.job_id, format!("{DEAD}{}#{}", l.sink, l.version)),
            ))
            .update_expression(
                "SET #id = if_not_exists(#id, :id), #sink_name = :sink, #version = :version, \
                 #event_id = :event_id, #seq = :seq, #error = :error, #failed_at = :at, \
                 #listed_at = if_not_exists(#listed_at, :at) ADD #tries :tries",
            )
            .set_expression_attribute_names(Some(
                names
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ))
            .set_expression_attribute_values(Some(
                values
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| backend("UpdateItem", e))?;
        Ok(())
    }

    async fn list(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let mut letters = self
            .dead_letter_items(sink)
            .await?
            .iter()
            .map(dead_letter)
            .collect::<Result<Vec<_>, _>>()?;
        // Oldest first, as listed (RFC 3339 UTC strings sort by time).
        letters.sort_by(|(a, a_at), (b, b_at)| a_at.cmp(b_at).then(a.id.cmp(&b.id)));
        Ok(letters.into_iter().map(|(l, _)| l).collect())
    }

    async fn remove(&self, id: i64) -> Result<bool, StateError> {
        let items = self.dead_letter_items(None).await?;
        let Some(item) = items
            .iter()
            .find(|i| i.get("id").and_then(|v| v.as_n().ok()) == Some(&id.to_string()))
        else {
            return Ok(false);
        };
        let key = [PK, SK]
            .iter()
            .filter_map(|k| Some((k.to_string(), item.get(*k)?.clone())))
            .collect();
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression("attribute_exists(#id)")
            .expression_attribute_names("#id", "id")
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(true),
            // Removed meanwhile by another operator.
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(backend("DeleteItem", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_stable_positive_and_json_safe() {
        let job = JobId::new();
        let a = dead_letter_id("notion", job, 3);
        assert_eq!(a, dead_letter_id("notion", job, 3));
        assert_ne!(a, dead_letter_id("notion", job, 4));
        assert_ne!(a, dead_letter_id("slack-bot", job, 3));
        assert!(a > 0 && a < (1_i64 << 53));
    }
}
