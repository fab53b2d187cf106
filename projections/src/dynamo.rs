//! `DynamoJobViews`: the read model on DynamoDB (the `jobs` table, `JOBS_TABLE`).
//!
//! # Items
//!
//! One item per job, pk `job_id` (S). The view's fields are top-level attributes (via
//! serde_dynamo), so operators can read them in the console and `scripts/monitor.sh` can print
//! `kind`, `attempt`, `updated_at`, `last_version`. `updated_at` and `created_at` are written in the
//! ledger's fixed-width form (`2025-01-15T10:00:01.250000Z`), so text order is time order: the GSI
//! `status-updated_at` (pk `status` S, sk `updated_at` S) lists a status newest first.
//! `metadata` is a map unless DynamoDB cannot hold it (see `fits_dynamo_map`); then it is kept as
//! JSON text in `metadata_json`.
//!
//! The saved `Stats` are one more item in the same table, pk `#stats` (never a UUID), holding the
//! stats as JSON text in `stats`. It has no `status`, so the GSI never sees it; scans skip it.
//! Keeping it in the jobs table means Terraform has no extra table and the projector's role
//! (`GetItem`, `UpdateItem` on jobs) covers it.
//!
//! # Writes
//!
//! `UpdateItem` (the projector may not `PutItem`) with `attribute_not_exists(job_id) OR
//! last_version < :v`: duplicate and late stream records fail the condition and change nothing.
//!
//! # Listing
//!
//! One `Query` of the GSI per status (all statuses when none is asked for, merged), newest first,
//! `kind` as a filter expression. The cursor is the last listed job's `(updated_at, job_id)`,
//! encoded; the next page asks each status for `updated_at <= cursor` and drops the jobs at or
//! before the cursor among equal times. A job updated after the cursor was made moves to the
//! front, so it is never listed twice on later pages. DynamoDB does not order items with equal
//! sort keys, so each status is read to the end of the tie group at its page boundary and the
//! merge sorts by `(updated_at, job_id)` descending, like the SQLite store.
//!
//! `scan` (job id order) has no index to walk: it reads the whole table, keeping only the
//! `limit` smallest ids after `after`, so memory stays bounded but each call costs a full scan;
//! `all` does one scan. Both are for replay and stats, not for requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus,
    WriteRequest,
};
use chrono::DateTime;
use jobledger_events::dynamo::{MissingEnv, env_var, fits_dynamo_map, sdk_error_is_retryable};
use jobledger_events::envelope::format_time;
use jobledger_events::{JobId, Status};

use crate::job_view::JobView;
use crate::stats::Stats;
use crate::store::{ListQuery, MAX_LIST_LIMIT, Page, ViewError, ViewStore};

/// The GSI that lists a status newest first (pk `status`, sk `updated_at`).
pub const STATUS_INDEX: &str = "status-updated_at";

/// The key of the item holding the saved stats.
pub const STATS_KEY: &str = "#stats";

/// How many views `upsert_many` writes at once.
const WRITE_CONCURRENCY: usize = 16;

/// The DynamoDB read model. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoJobViews {
    client: aws_sdk_dynamodb::Client,
    table: Arc<str>,
}

fn sdk_error<E>(operation: &str, e: SdkError<E>) -> ViewError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    ViewError::backend(
        sdk_error_is_retryable(&e),
        format!("DynamoDB {operation}: {}", DisplayErrorContext(&e)),
    )
}

fn corrupt(job_id: &str, reason: impl Into<String>) -> ViewError {
    ViewError::Corrupt {
        job_id: job_id.to_string(),
        reason: reason.into(),
    }
}

fn invalid(e: impl std::fmt::Display) -> ViewError {
    ViewError::backend(false, e.to_string())
}

/// The item of a view.
fn view_item(view: &JobView) -> Result<HashMap<String, AttributeValue>, ViewError> {
    let mut item: HashMap<String, AttributeValue> =
        serde_dynamo::aws_sdk_dynamodb_1::to_item(view).map_err(invalid)?;
    // Fixed-width times: the GSI sorts `updated_at` as text.
    item.insert(
        "updated_at".into(),
        AttributeValue::S(format_time(&view.updated_at)),
    );
    item.insert(
        "created_at".into(),
        AttributeValue::S(format_time(&view.created_at)),
    );
    let metadata = serde_json::Value::Object(view.metadata.clone());
    if !fits_dynamo_map(&metadata) {
        item.remove("metadata");
        item.insert(
            "metadata_json".into(),
            AttributeValue::S(serde_json::to_string(&metadata).map_err(invalid)?),
        );
    }
    Ok(item)
}

/// The view of an item; any defect is `Corrupt`.
fn decode_view(mut item: HashMap<String, AttributeValue>) -> Result<JobView, ViewError> {
    let job = match item.get("job_id") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => "(unknown)".to_string(),
    };
    if let Some(text) = item.remove("metadata_json") {
        let AttributeValue::S(text) = text else {
            return Err(corrupt(&job, "metadata_json is not a string"));
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| corrupt(&job, format!("metadata_json: {e}")))?;
        item.insert(
            "metadata".into(),
            serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(&value)
                .map_err(|e| corrupt(&job, format!("metadata_json: {e}")))?,
        );
    }
    serde_dynamo::aws_sdk_dynamodb_1::from_item(item).map_err(|e| corrupt(&job, e.to_string()))
}

/// Cursor text: a format tag, the last listed job's `updated_at` (µs) and its `job_id`.
fn encode_cursor(view: &JobView) -> String {
    format!(
        "d1.{}.{}",
        view.updated_at.timestamp_micros(),
        view.job_id.as_uuid().simple()
    )
}

/// The cursor's `(updated_at as stored, job_id)`.
fn decode_cursor(cursor: &str) -> Result<(String, JobId), ViewError> {
    let bad = || ViewError::BadCursor(cursor.to_string());
    let mut parts = cursor.split('.');
    let (Some("d1"), Some(at), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let micros: i64 = at.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id: JobId = id.parse().map_err(|_| bad())?;
    Ok((format_time(&at), id))
}

impl DynamoJobViews {
    /// A view store on an existing `jobs` table.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoJobViews {
            client,
            table: Arc::from(table.into()),
        }
    }

    /// The table named by `JOBS_TABLE` (set by Terraform).
    pub fn from_env(client: aws_sdk_dynamodb::Client) -> Result<Self, MissingEnv> {
        Ok(Self::new(
            client,
            env_var("JOBS_TABLE").ok_or(MissingEnv("JOBS_TABLE"))?,
        ))
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table with its GSI if it does not exist (for tests and dev; production tables
    /// come from Terraform), and waits until it is `ACTIVE`.
    pub async fn create_table(&self) -> Result<(), ViewError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(invalid)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(invalid)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(STATUS_INDEX)
            .key_schema(key("status", KeyType::Hash)?)
            .key_schema(key("updated_at", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(invalid)?;
        let created = self
            .client
            .create_table()
            .table_name(self.table.as_ref())
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("job_id")?)
            .attribute_definitions(attribute("status")?)
            .attribute_definitions(attribute("updated_at")?)
            .key_schema(key("job_id", KeyType::Hash)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(sdk_error("CreateTable", e)),
        }
        for _ in 0..600 {
            let out = self
                .client
                .describe_table()
                .table_name(self.table.as_ref())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeTable", e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ViewError::backend(
            true,
            format!("{} is not ACTIVE after 2 minutes", self.table),
        ))
    }

    /// Up to `want` views of one status, newest first, at or before `before` (exclusive of the
    /// cursor's own job and newer ones), read to the end of the tie group at the boundary.
    async fn query_status(
        &self,
        status: Status,
        kind: Option<&'static str>,
        before: Option<(String, JobId)>,
        want: usize,
    ) -> Result<Vec<JobView>, ViewError> {
        let mut out: Vec<JobView> = Vec::new();
        let mut start = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(self.table.as_ref())
                .index_name(STATUS_INDEX)
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":s", AttributeValue::S(status.as_str().into()))
                .scan_index_forward(false)
                .limit(i32::try_from(want.clamp(1, MAX_LIST_LIMIT + 1)).unwrap_or(1000))
                .set_exclusive_start_key(start);
            request = match &before {
                Some((at, _)) => request
                    .key_condition_expression("#s = :s AND #u <= :u")
                    .expression_attribute_names("#u", "updated_at")
                    .expression_attribute_values(":u", AttributeValue::S(at.clone())),
                None => request.key_condition_expression("#s = :s"),
            };
            if let Some(kind) = kind {
                request = request
                    .filter_expression("#k = :k")
                    .expression_attribute_names("#k", "kind")
                    .expression_attribute_values(":k", AttributeValue::S(kind.into()));
            }
            let page = request.send().await.map_err(|e| sdk_error("Query", e))?;
            for item in page.items.unwrap_or_default() {
                let view = decode_view(item)?;
                if let Some((at, id)) = &before
                    && format_time(&view.updated_at) == *at
                    && view.job_id >= *id
                {
                    continue;
                }
                if out.len() >= want
                    && out
                        .last()
                        .is_some_and(|last| last.updated_at != view.updated_at)
                {
                    return Ok(out);
                }
                out.push(view);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    /// Every item of the table, page by page, handed to `f` (the stats item left out).
    async fn scan_all(
        &self,
        mut f: impl FnMut(HashMap<String, AttributeValue>) -> Result<(), ViewError>,
        keys_only: bool,
    ) -> Result<(), ViewError> {
        let mut start = None;
        loop {
            let mut request = self
                .client
                .scan()
                .table_name(self.table.as_ref())
                .consistent_read(true)
                .set_exclusive_start_key(start);
            if keys_only {
                request = request
                    .projection_expression("#j")
                    .expression_attribute_names("#j", "job_id");
            }
            let page = request.send().await.map_err(|e| sdk_error("Scan", e))?;
            for item in page.items.unwrap_or_default() {
                if matches!(item.get("job_id"), Some(AttributeValue::S(k)) if k == STATS_KEY)
                    && !keys_only
                {
                    continue;
                }
                f(item)?;
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(());
            }
        }
    }

    /// Deletes items by key, 25 per `BatchWriteItem`, retrying what DynamoDB leaves unprocessed.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), ViewError> {
        for chunk in keys.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|k| {
                    DeleteRequest::builder()
                        .key("job_id", AttributeValue::S(k.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(invalid)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for attempt in 0u32.. {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(self.table.to_string(), requests)
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchWriteItem", e))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(self.table.as_ref()))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if attempt >= 10 {
                    return Err(ViewError::backend(
                        true,
                        "BatchWriteItem kept leaving deletes unprocessed",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
            }
        }
        Ok(())
    }
}

impl ViewStore for DynamoJobViews {
    async fn upsert(&self, view: &JobView) -> Result<bool, ViewError> {
        let mut item = view_item(view)?;
        item.remove("job_id");
        let mut request = self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .key("job_id", AttributeValue::S(view.job_id.to_string()))
            .condition_expression("attribute_not_exists(#job) OR #lv < :lv")
            .expression_attribute_names("#job", "job_id")
            .expression_attribute_names("#lv", "last_version")
            .expression_attribute_values(":lv", AttributeValue::N(view.last_version.to_string()));
        let mut sets = Vec::with_capacity(item.len());
        for (i, (name, value)) in item.into_iter().enumerate() {
            sets.push(format!("#a{i} = :a{i}"));
            request = request
                .expression_attribute_names(format!("#a{i}"), name)
                .expression_attribute_values(format!(":a{i}"), value);
        }
        // The other form of the metadata may be left from an earlier view.
        let stale = if fits_dynamo_map(&serde_json::Value::Object(view.metadata.clone())) {
            "metadata_json"
        } else {
            "metadata"
        };
        request = request.expression_attribute_names("#stale", stale);
        let update = format!("SET {} REMOVE #stale", sets.join(", "));
        match request.update_expression(update).send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("UpdateItem", e)),
        }
    }

    async fn upsert_many(&self, views: &[JobView]) -> Result<usize, ViewError> {
        let mut written = 0;
        for chunk in views.chunks(WRITE_CONCURRENCY) {
            let mut tasks = tokio::task::JoinSet::new();
            for view in chunk {
                let store = self.clone();
                let view = view.clone();
                tasks.spawn(async move { store.upsert(&view).await });
            }
            while let Some(done) = tasks.join_next().await {
                written += usize::from(done.map_err(|e| ViewError::backend(false, e))??);
            }
        }
        Ok(written)
    }

    async fn get(&self, job_id: JobId) -> Result<Option<JobView>, ViewError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .key("job_id", AttributeValue::S(job_id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        out.item.map(decode_view).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Page, ViewError> {
        let limit = q.limit.clamp(1, MAX_LIST_LIMIT);
        let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let kind = q.kind.map(|k| k.as_str());
        let statuses: Vec<Status> = match q.status {
            Some(s) => vec![s],
            None => Status::ALL.to_vec(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for status in statuses {
            let store = self.clone();
            let before = before.clone();
            // One extra view tells whether another page follows.
            tasks.spawn(async move { store.query_status(status, kind, before, limit + 1).await });
        }
        let mut jobs = Vec::new();
        while let Some(done) = tasks.join_next().await {
            jobs.extend(done.map_err(|e| ViewError::backend(false, e))??);
        }
        jobs.sort_by_key(|v| std::cmp::Reverse((v.updated_at, v.job_id)));
        let next_cursor = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(encode_cursor)
        } else {
            None
        };
        Ok(Page { jobs, next_cursor })
    }

    async fn scan(&self, after: Option<JobId>, limit: usize) -> Result<Vec<JobView>, ViewError> {
        let limit = limit.max(1);
        let mut kept: Vec<JobView> = Vec::new();
        self.scan_all(
            |item| {
                let view = decode_view(item)?;
                if after.is_none_or(|a| view.job_id > a) {
                    kept.push(view);
                    // Bounded memory: keep only the `limit` smallest ids seen so far.
                    if kept.len() >= 2 * limit {
                        kept.sort_by_key(|v| v.job_id);
                        kept.truncate(limit);
                    }
                }
                Ok(())
            },
            false,
        )
        .await?;
        kept.sort_by_key(|v| v.job_id);
        kept.truncate(limit);
        Ok(kept)
    }

    async fn all(&self) -> Result<Vec<JobView>, ViewError> {
        let mut out = Vec::new();
        self.scan_all(
            |item| {
                out.push(decode_view(item)?);
                Ok(())
            },
            false,
        )
        .await?;
        out.sort_by_key(|v| v.job_id);
        Ok(out)
    }

    async fn clear(&self) -> Result<(), ViewError> {
        let mut keys = Vec::new();
        self.scan_all(
            |item| {
                if let Some(AttributeValue::S(k)) = item.get("job_id") {
                    keys.push(k.clone());
                }
                Ok(())
            },
            true,
        )
        .await?;
        self.delete_keys(keys).await
    }

    async fn save_stats(&self, stats: &Stats) -> Result<(), ViewError> {
        let json = serde_json::to_string(stats).map_err(invalid)?;
        self.client
            .update_item()
            .table_name(self.table.as_ref())
            .key("job_id", AttributeValue::S(STATS_KEY.into()))
            .update_expression("SET #st = :st")
            .expression_attribute_names("#st", "stats")
            .expression_attribute_values(":st", AttributeValue::S(json))
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem", e))?;
        Ok(())
    }

    async fn load_stats(&self) -> Result<Option<Stats>, ViewError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .key("job_id", AttributeValue::S(STATS_KEY.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        let Some(mut item) = out.item else {
            return Ok(None);
        };
        match item.remove("stats") {
            Some(AttributeValue::S(json)) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| corrupt("(stats)", e.to_string())),
            _ => Err(corrupt("(stats)", "the stats item has no `stats` text")),
        }
    }
}
