//! The DynamoDB ledger as a [`HistorySource`]: one job by `Query` (consistent, following
//! `LastEvaluatedKey`), everything by a parallel `Scan` in segments.
//!
//! A table Scan has no global order. Segments split the table by partition key, so each job lies
//! in exactly one segment, and within a segment DynamoDB returns a job's items together, in sort
//! key order, though a job may straddle pages. Each segment therefore collects items per job,
//! sorts them by version and hands a job on once it is complete: when the segment ends, or, to
//! bound memory, once more than [`MAX_BUFFERED`] events are held, every job but the one still
//! being read. Items are decoded only through `DynamoEventStore::decode_item` (payloads offloaded
//! to S3 included), so every store reads events the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use jobledger_events::{DynamoEventStore, JobId, StoreError};
use jobledger_workers::aws_clients;
use tokio::sync::mpsc;

use crate::format::{Entry, Pos, sourced};
use crate::source::{Feed, HistorySource, SourceError};

/// Events a segment holds before it hands on every job but the one it is reading.
pub const MAX_BUFFERED: usize = 200_000;

/// Segments of a full scan unless told otherwise.
pub const DEFAULT_SEGMENTS: u32 = 4;

type Item = HashMap<String, AttributeValue>;
type Sender = mpsc::Sender<Result<Vec<Entry>, SourceError>>;

/// An events table in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoSource {
    dynamo: aws_sdk_dynamodb::Client,
    store: DynamoEventStore,
    table: String,
    segments: u32,
}

impl DynamoSource {
    /// A source over `table`, read through `dynamo` (payloads offloaded to S3 read through `s3`).
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        table: &str,
        segments: u32,
    ) -> Self {
        let store = DynamoEventStore::events_only(dynamo.clone(), s3, table);
        DynamoSource {
            dynamo,
            store,
            table: table.to_string(),
            segments: segments.max(1),
        }
    }

    /// A source over `table` with region, credentials and endpoint from the standard AWS
    /// environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles …), its clients built as every
    /// other binary builds them (`jobledger_workers::aws_clients`).
    pub async fn from_env(table: &str, segments: u32) -> Self {
        let sdk = aws_clients::sdk_config().await;
        Self::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            aws_clients::s3_client(&sdk),
            table,
            segments,
        )
    }

    fn backend<E: std::error::Error>(&self, operation: &str, e: E) -> SourceError {
        SourceError::Unavailable(format!(
            "DynamoDB {operation} on {}: {}",
            self.table,
            DisplayErrorContext(e)
        ))
    }

    /// Decodes one item; a damaged item becomes an [`Entry::Unreadable`].
    async fn entry(&self, item: Item, check: bool) -> Result<Entry, SourceError> {
        let job_id = job_of(&item);
        match self.store.decode_item(item).await {
            Ok(event) => Ok(Entry::Event(sourced(event, Pos::None, check))),
            Err(StoreError::Corrupt {
                version, reason, ..
            }) => Ok(Entry::Unreadable {
                pos: Pos::None,
                job_id,
                version,
                reason,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one segment of a parallel scan, sending whole jobs, each in version order.
    async fn scan_segment(
        &self,
        segment: u32,
        check: bool,
        tx: &Sender,
        position: &AtomicU64,
    ) -> Result<(), SourceError> {
        let mut open = OpenJobs::default();
        let mut start = None;
        loop {
            let page = self
                .dynamo
                .scan()
                .table_name(&self.table)
                .segment(segment as i32)
                .total_segments(self.segments as i32)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.backend("Scan", e))?;
            let items = page.items.unwrap_or_default();
            position.fetch_add(items.len() as u64, Ordering::Relaxed);
            for item in items {
                let job = job_of(&item);
                let entry = self.entry(item, check).await?;
                open.push(job, entry);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
            if open.buffered > MAX_BUFFERED && !send(tx, open.take_all_but_latest()).await {
                return Ok(());
            }
        }
        send(tx, open.take_all()).await;
        Ok(())
    }
}

/// Sends whole jobs as one batch; false once the consumer has gone.
async fn send(tx: &Sender, batch: Vec<Entry>) -> bool {
    batch.is_empty() || tx.send(Ok(batch)).await.is_ok()
}

/// The job an item names, if its key is readable.
fn job_of(item: &Item) -> Option<JobId> {
    match item.get("job_id") {
        Some(AttributeValue::S(s)) => s.parse().ok(),
        _ => None,
    }
}

/// The jobs a segment is still collecting.
#[derive(Default)]
struct OpenJobs {
    jobs: BTreeMap<Option<JobId>, Vec<Entry>>,
    latest: Option<Option<JobId>>,
    buffered: usize,
}

impl OpenJobs {
    fn push(&mut self, job: Option<JobId>, entry: Entry) {
        self.jobs.entry(job).or_default().push(entry);
        self.latest = Some(job);
        self.buffered += 1;
    }

    /// Every job, each sorted by version (unreadable versions last), in job id order.
    fn take_all(&mut self) -> Vec<Entry> {
        self.buffered = 0;
        let mut out = Vec::new();
        for (_, mut entries) in std::mem::take(&mut self.jobs) {
            entries.sort_by_key(|e| version_of(e).unwrap_or(u64::MAX));
            out.extend(entries);
        }
        out
    }

    /// Every job but the one the scan is in the middle of.
    fn take_all_but_latest(&mut self) -> Vec<Entry> {
        let kept = self.latest.and_then(|job| self.jobs.remove_entry(&job));
        let out = self.take_all();
        if let Some((job, entries)) = kept {
            self.buffered = entries.len();
            self.jobs.insert(job, entries);
        }
        out
    }
}

fn version_of(entry: &Entry) -> Option<u64> {
    match entry {
        Entry::Event(e) => Some(e.event.version),
        Entry::Pin(p, _) => Some(p.version),
        Entry::Unreadable { version, .. } => *version,
    }
}

impl HistorySource for DynamoSource {
    fn describe(&self) -> String {
        format!("DynamoDB table {}", self.table)
    }

    fn has_pins(&self) -> bool {
        false
    }

    fn grouped(&self) -> bool {
        true
    }

    async fn job(&self, job_id: JobId, check: bool) -> Result<Vec<Entry>, SourceError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamo
                .query()
                .table_name(&self.table)
                .key_condition_expression("#j = :j")
                .expression_attribute_names("#j", "job_id")
                .expression_attribute_values(":j", AttributeValue::S(job_id.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.backend("Query", e))?;
            for item in page.items.unwrap_or_default() {
                out.push(self.entry(item, check).await?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    /// DynamoDB's item count (refreshed about every six hours): good enough for a progress bar.
    async fn extent(&self) -> Result<u64, SourceError> {
        let out = self
            .dynamo
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.backend("DescribeTable", e))?;
        Ok(out
            .table
            .and_then(|t| t.item_count)
            .map_or(0, |n| n.max(0) as u64))
    }

    fn scan(&self, check: bool, position: Arc<AtomicU64>) -> Result<Feed, SourceError> {
        let mut feeds = self.scan_parts(check, 1, position)?;
        feeds
            .pop()
            .ok_or_else(|| SourceError::Unavailable("no segment started".into()))
    }

    /// Segments are dealt out over the parts; each part's feed gets whole jobs.
    fn scan_parts(
        &self,
        check: bool,
        parts: usize,
        position: Arc<AtomicU64>,
    ) -> Result<Vec<Feed>, SourceError> {
        let parts = parts.clamp(1, self.segments as usize);
        let mut senders = Vec::with_capacity(parts);
        let mut feeds = Vec::with_capacity(parts);
        for _ in 0..parts {
            let (tx, rx) = mpsc::channel(4);
            senders.push(tx);
            feeds.push(rx);
        }
        for segment in 0..self.segments {
            let tx = senders[segment as usize % parts].clone();
            let (this, position) = (self.clone(), Arc::clone(&position));
            tokio::spawn(async move {
                if let Err(e) = this.scan_segment(segment, check, &tx, &position).await {
                    let _ = tx.send(Err(e)).await;
                }
            });
        }
        Ok(feeds)
    }
}
