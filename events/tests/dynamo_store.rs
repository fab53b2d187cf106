//! `DynamoEventStore` on moto: the whole conformance suite, plus what only the DynamoDB store
//! promises (paged loads over 1 MB, payloads in S3, the 100-item transaction limit, error mapping).
//!
//! Run through `scripts/with-moto` (it starts moto and exports `AWS_ENDPOINT_URL`). Each store
//! gets its own tables and bucket, so the tests run in parallel against one moto server.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use jobledger_events::chain::{compute_hash, verify_chain};
use jobledger_events::command::Command;
use jobledger_events::dynamo::{DynamoEventStore, EventsTables};
use jobledger_events::execute::{execute, record};
use jobledger_events::ids::JobId;
use jobledger_events::store::{AppendBatch, EventStore, IdempotencyRecord, StoreError};
use jobledger_events::testing::{
    self, StoreHarness, build_history, noop_spec, running_job, test_context, test_time,
};
use jobledger_events::{Hash, JobEvent, RecordedEvent};
use jobledger_testsupport::http::{FakeServer, Reply};
use jobledger_testsupport::moto::{self, unique};
use serde_json::value::RawValue;

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str = "scripts/with-moto cargo test -p jobledger-events --features dynamodb,testing --test dynamo_store";

/// Fresh tables and a fresh bucket per store; corruption by writing the item with the SDK.
struct Moto {
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

impl Moto {
    fn new() -> Self {
        let moto::Moto { dynamo, s3, .. } = moto::Moto::connect(RUN_AS);
        Moto { dynamo, s3 }
    }

    /// A store on new tables made by `create_tables`, except that the events table has no
    /// stream. Moto deep-copies a table, stream records included, for every transaction and
    /// keeps every record in memory: with a stream, a 5,000-event history takes moto past 4 GB.
    /// `create_tables_makes_the_terraform_key_schema_with_a_new_image_stream` covers the stream.
    async fn store_with(&self, tables: EventsTables) -> DynamoEventStore {
        moto::create_events_table(&self.dynamo, &tables.events).await;
        let store = DynamoEventStore::new(self.dynamo.clone(), self.s3.clone(), tables);
        // The events table exists, so this makes the idempotency table and the bucket.
        store.create_tables().await.expect("create tables");
        store
    }

    /// A store whose tables all come from `create_tables` (events with its stream).
    async fn store_as_deployed(&self) -> DynamoEventStore {
        let store = DynamoEventStore::new(
            self.dynamo.clone(),
            self.s3.clone(),
            EventsTables::new(unique("events"), unique("idempotency"), unique("payloads")),
        );
        store.create_tables().await.expect("create tables");
        store
    }

    async fn item(
        &self,
        store: &DynamoEventStore,
        job_id: JobId,
        version: u64,
    ) -> HashMap<String, AttributeValue> {
        moto::event_item_at(&self.dynamo, &store.tables().events, job_id, version).await
    }
}

impl StoreHarness<DynamoEventStore> for Moto {
    async fn fresh(&self) -> DynamoEventStore {
        self.store_with(EventsTables::new(
            unique("events"),
            unique("idempotency"),
            unique("payloads"),
        ))
        .await
    }

    async fn corrupt(&self, store: &DynamoEventStore, job_id: JobId, version: u64) {
        self.tamper_named(
            store,
            job_id,
            version,
            "SET #h = :bad",
            &[("#h", "hash")],
            &[(":bad", AttributeValue::S("not-a-hash".into()))],
        )
        .await;
    }
}

impl Moto {
    /// Runs an `UpdateItem` on one event item, as a bad tool or a hand edit in the console would.
    async fn tamper_named(
        &self,
        store: &DynamoEventStore,
        job_id: JobId,
        version: u64,
        update: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) {
        let mut request = self
            .dynamo
            .update_item()
            .table_name(&store.tables().events)
            .key("job_id", AttributeValue::S(job_id.to_string()))
            .key("version", AttributeValue::N(version.to_string()))
            .update_expression(update);
        for (alias, name) in names {
            request = request.expression_attribute_names(*alias, *name);
        }
        for (name, value) in values {
            request = request.expression_attribute_values(*name, value.clone());
        }
        request.send().await.expect("tamper");
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            testing::$case(&Moto::new()).await;
        }
    )*};
}

conformance!(
    load_returns_what_was_appended_field_for_field,
    a_stale_expected_version_is_a_conflict_and_writes_nothing,
    concurrent_appenders_get_one_winner_per_version,
    a_reused_idempotency_key_returns_the_original_claim,
    a_corrupt_item_is_reported_with_job_and_version,
    the_hash_chain_continues_across_appends,
    an_older_payload_schema_is_upcast_on_read,
);

/// The conformance case `a_long_history_loads_whole_and_in_order`, with the history seeded (see
/// `moto::seed_events`: moto's transactions cannot hold it), plus proof that the backend really
/// paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_over_one_megabyte_is_read_in_several_pages_and_loads_whole() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let job_id = JobId::new();
    let history = build_history(job_id, 4_996);
    assert_eq!(history.len(), 5_000);
    let bytes: usize = history
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    assert!(bytes > 1 << 20, "the history is only {bytes} bytes");
    moto::seed_events(&moto.dynamo, &store.tables().events, &history).await;
    // The backend must really page: a single Query stops at 1 MB and says where to go on.
    let first_page = moto
        .dynamo
        .query()
        .table_name(&store.tables().events)
        .key_condition_expression("job_id = :j")
        .expression_attribute_values(":j", AttributeValue::S(job_id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("query");
    assert!(
        first_page.last_evaluated_key.is_some() && first_page.items().len() < history.len(),
        "one Query returned all {} items: the test does not exercise paging",
        history.len()
    );
    let loaded = store.load(job_id).await.expect("load");
    assert_eq!(loaded.len(), history.len(), "truncated or padded");
    assert!(
        loaded.iter().zip(1..).all(|(e, v)| e.version == v),
        "out of order"
    );
    assert_eq!(loaded, history);
    assert_eq!(verify_chain(&loaded), vec![]);

    // The store appends on top of the long history like on any other.
    let next = execute(
        &store,
        job_id,
        &Command::ReportProgress {
            attempt: 1,
            done: 4_997,
            failed: 0,
            total: 4_997,
            checkpoint_uri: None,
        },
        &test_context("worker:test"),
    )
    .await
    .expect("append after 5,000 events");
    assert_eq!(next.job.version, 5_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_transaction_limit_is_refused_whole() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let job_id = JobId::new();
    let history = build_history(job_id, 97);
    assert_eq!(history.len(), 101);
    let result = store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: history.clone(),
            idempotency: None,
        })
        .await;
    match result {
        Err(StoreError::Backend {
            retryable: false,
            source,
        }) => assert!(source.to_string().contains("at most 100"), "{source}"),
        other => panic!("101 events gave {other:?}"),
    }
    // 100 events plus an idempotency key is 101 items too.
    let claim = IdempotencyRecord {
        key: "api-key:k#big".into(),
        job_id,
        fingerprint: "f".into(),
        created_at: test_time(0),
    };
    let result = store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: history[..100].to_vec(),
            idempotency: Some(claim.clone()),
        })
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::Backend {
                retryable: false,
                ..
            })
        ),
        "100 events + a key gave {result:?}"
    );
    assert!(store.load(job_id).await.expect("load").is_empty());
    assert_eq!(store.idempotency(&claim.key).await.expect("lookup"), None);
    store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: history[..99].to_vec(),
            idempotency: Some(claim.clone()),
        })
        .await
        .expect("99 events + a key is exactly 100 items");
    assert_eq!(store.load(job_id).await.expect("load"), history[..99]);
    assert_eq!(
        store.idempotency(&claim.key).await.expect("lookup"),
        Some(claim)
    );
}

/// A `JobSubmitted` whose metadata holds `bytes` bytes of text (a payload the API would refuse,
/// but the store must still keep what it is given).
fn big_submission(job_id: JobId, after: &[RecordedEvent], bytes: usize) -> RecordedEvent {
    let mut spec = noop_spec(1);
    spec.metadata
        .insert("blob".into(), "ü✓ payload ".repeat(bytes / 14 + 1).into());
    let head = after.last().map_or(Hash::ZERO, |e| e.hash);
    record(
        job_id,
        after.len() as u64,
        head,
        &[JobEvent::JobSubmitted(spec)],
        &test_context("api-key:big"),
    )
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_too_large_for_an_item_is_kept_in_s3_and_loads_back_exactly() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let job_id = JobId::new();
    let big = big_submission(job_id, &[], 350_000);
    assert!(big.data.get().len() > 350_000);
    store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: vec![big.clone()],
            idempotency: None,
        })
        .await
        .expect("append a 350 KB payload");
    let item = moto.item(&store, job_id, 1).await;
    assert!(!item.contains_key("data"), "the payload stayed inline");
    let Some(AttributeValue::S(uri)) = item.get("data_uri") else {
        panic!("no data_uri on the item: {:?}", item.keys());
    };
    let bucket = store.tables().payload_bucket.clone().expect("bucket");
    let prefix = format!("s3://{bucket}/payloads/{job_id}/1-");
    assert!(uri.starts_with(&prefix), "{uri} is not under {prefix}");
    let key = uri
        .trim_start_matches(&format!("s3://{bucket}/"))
        .to_string();
    let object = moto
        .s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("the payload object exists");
    let bytes = object.body.collect().await.expect("body").into_bytes();
    assert_eq!(
        &bytes[..],
        big.data.get().as_bytes(),
        "S3 holds the canonical payload"
    );

    let loaded = store.load(job_id).await.expect("load");
    assert_eq!(loaded, vec![big.clone()]);
    assert!(
        loaded[0].hash_is_valid(),
        "the hash covers the real payload"
    );
    assert!(loaded[0].decode().is_ok());

    // The job goes on as usual after an offloaded event.
    let queued = execute(
        &store,
        job_id,
        &Command::MarkQueued {
            attempt: 1,
            message_id: "m".into(),
        },
        &test_context("system:dispatcher"),
    )
    .await
    .expect("queue");
    assert_eq!(queued.job.version, 2);

    // A swapped object and a missing one are both reported, never returned as the payload.
    moto.s3
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(b"{\"kind\":\"noop\"}".to_vec().into())
        .send()
        .await
        .expect("swap");
    testing::expect_corrupt_at("swapped payload", store.load(job_id).await, job_id, 1);
    moto.s3
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("delete");
    testing::expect_corrupt_at("missing payload", store.load(job_id).await, job_id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_fit_items_but_not_one_transaction_are_offloaded_largest_first() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let job_id = JobId::new();
    // 16 events of ~250 KB: each fits an item, together they exceed the 4 MB transaction limit.
    let first = big_submission(job_id, &[], 250_000);
    let mut events = vec![first];
    let ctx = test_context("worker:big");
    for _ in 1..16 {
        let head = &events[events.len() - 1];
        let e = record(
            job_id,
            head.version,
            head.hash,
            &[JobEvent::ProgressReported(
                jobledger_events::event::Progress {
                    attempt: 1,
                    done: 1,
                    failed: 0,
                    total: 2,
                    checkpoint_uri: Some("c".repeat(250_000)),
                },
            )],
            &ctx,
        )
        .remove(0);
        events.push(e);
    }
    store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: events.clone(),
            idempotency: None,
        })
        .await
        .expect("append 4 MB in one batch");
    let mut offloaded = 0;
    for version in 1..=16 {
        offloaded += usize::from(
            moto.item(&store, job_id, version)
                .await
                .contains_key("data_uri"),
        );
    }
    assert!(
        (1..16).contains(&offloaded),
        "{offloaded} of 16 payloads went to S3; some (not all) should"
    );
    assert_eq!(store.load(job_id).await.expect("load"), events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_maps_unless_dynamodb_cannot_hold_them_and_must_be_canonical() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let (job_id, history) = running_job(&store).await;
    let item = moto.item(&store, job_id, 1).await;
    assert!(
        matches!(item.get("data"), Some(AttributeValue::M(m)) if m.contains_key("kind")),
        "JobSubmitted's payload must be a DynamoDB map"
    );
    for (name, want) in [
        ("type", "JobSubmitted"),
        ("hash", history[0].hash.to_hex().as_str()),
    ] {
        assert!(
            matches!(item.get(name), Some(AttributeValue::S(s)) if s == want),
            "{name} must be stored as the string {want}"
        );
    }

    // A number outside DynamoDB's range cannot be a map value: the canonical text is kept instead.
    let head = &history[history.len() - 1];
    let mut odd = record(
        job_id,
        head.version,
        head.hash,
        &[JobEvent::ProgressReported(
            jobledger_events::event::Progress {
                attempt: 1,
                done: 1,
                failed: 0,
                total: 3,
                checkpoint_uri: None,
            },
        )],
        &test_context("worker:odd"),
    )
    .remove(0);
    odd.data = RawValue::from_string(
        r#"{"attempt":1,"done":1,"extra":{"":1e-300,"tiny":5e-324},"failed":0,"total":3}"#.into(),
    )
    .expect("json");
    odd.hash = compute_hash(&odd);
    store
        .append(AppendBatch {
            job_id,
            expected_version: head.version,
            events: vec![odd.clone()],
            idempotency: None,
        })
        .await
        .expect("append");
    assert!(
        moto.item(&store, job_id, odd.version)
            .await
            .contains_key("data_json")
    );
    let loaded = store.load(job_id).await.expect("load");
    assert_eq!(loaded[loaded.len() - 1], odd);

    // Text that is not canonical would come back different and break the chain: refused.
    let mut sloppy = odd.clone();
    sloppy.version += 1;
    sloppy.prev_hash = odd.hash;
    sloppy.data =
        RawValue::from_string(r#"{ "attempt": 1, "done": 2, "failed": 0, "total": 3 }"#.into())
            .expect("json");
    sloppy.hash = compute_hash(&sloppy);
    let result = store
        .append(AppendBatch {
            job_id,
            expected_version: odd.version,
            events: vec![sloppy],
            idempotency: None,
        })
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::Backend {
                retryable: false,
                ..
            })
        ),
        "a non-canonical payload gave {result:?}"
    );
    assert_eq!(
        verify_chain(&store.load(job_id).await.expect("load")),
        vec![]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_damaged_item_is_reported_as_corrupt_with_its_version() {
    let moto = Moto::new();
    type Damage = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, AttributeValue)>,
    );
    let damage: Vec<Damage> = vec![
        ("type removed", "REMOVE #t", vec![("#t", "type")], vec![]),
        ("payload removed", "REMOVE #d", vec![("#d", "data")], vec![]),
        (
            "payload not a map",
            "SET #d = :v",
            vec![("#d", "data")],
            vec![(":v", AttributeValue::S("{}".into()))],
        ),
        (
            "two payloads",
            "SET #d = :v",
            vec![("#d", "data_json")],
            vec![(":v", AttributeValue::S("{}".into()))],
        ),
        (
            "payload binary inside the map",
            "SET #d.#a = :v",
            vec![("#d", "data"), ("#a", "attempt")],
            vec![(":v", AttributeValue::B(vec![1, 2].into()))],
        ),
        (
            "time not canonical",
            "SET #a = :v",
            vec![("#a", "at")],
            vec![(":v", AttributeValue::S("2025-01-01T00:00:00Z".into()))],
        ),
        (
            "event id not a uuid",
            "SET #e = :v",
            vec![("#e", "event_id")],
            vec![(":v", AttributeValue::S("e-1".into()))],
        ),
        (
            "schema a string",
            "SET #s = :v",
            vec![("#s", "schema")],
            vec![(":v", AttributeValue::S("1".into()))],
        ),
        (
            "payload uri that is not s3",
            "REMOVE #d SET #u = :u, #s = :s",
            vec![("#d", "data"), ("#u", "data_uri"), ("#s", "data_sha256")],
            vec![
                (":u", AttributeValue::S("https://example.com/p".into())),
                (":s", AttributeValue::S("00".into())),
            ],
        ),
    ];
    for (what, update, names, values) in damage {
        let store = moto.fresh().await;
        let (job_id, _) = running_job(&store).await;
        moto.tamper_named(&store, job_id, 2, update, &names, &values)
            .await;
        testing::expect_corrupt_at(what, store.load(job_id).await, job_id, 2);
    }

    // A hole: version 2 deleted. Reported at the missing version, not skipped.
    let store = moto.fresh().await;
    let (job_id, _) = running_job(&store).await;
    moto.dynamo
        .delete_item()
        .table_name(&store.tables().events)
        .key("job_id", AttributeValue::S(job_id.to_string()))
        .key("version", AttributeValue::N("2".into()))
        .send()
        .await
        .expect("delete");
    testing::expect_corrupt_at("hole", store.load(job_id).await, job_id, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_that_already_committed_is_acknowledged_not_a_conflict() {
    // What the SDK does when a TransactWriteItems response is lost: it sends the same items again.
    let moto = Moto::new();
    let store = moto.fresh().await;
    let job_id = JobId::new();
    let history = build_history(job_id, 3);
    let batch = AppendBatch {
        job_id,
        expected_version: 0,
        events: history[..3].to_vec(),
        idempotency: Some(IdempotencyRecord {
            key: "api-key:k#retry".into(),
            job_id,
            fingerprint: "f".into(),
            created_at: test_time(0),
        }),
    };
    store.append(batch.clone()).await.expect("first try");
    store
        .append(batch.clone())
        .await
        .expect("the same batch again is recognised as already written");
    assert_eq!(store.load(job_id).await.expect("load"), history[..3]);

    // Different events at the same versions are a real conflict.
    let mut other = batch.clone();
    other.idempotency = None;
    for e in &mut other.events {
        e.event_id = uuid::Uuid::now_v7();
        e.hash = compute_hash(e);
    }
    let result = store.append(other).await;
    assert!(
        matches!(result, Err(StoreError::Conflict { expected: 0, .. })),
        "gave {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_claim_expires_after_a_day_and_can_then_be_reused() {
    let moto = Moto::new();
    let store = moto.fresh().await;
    let claim = |job_id, at| IdempotencyRecord {
        key: "api-key:k#daily".into(),
        job_id,
        fingerprint: format!("fp-{job_id}"),
        created_at: at,
    };
    let submit = |job_id: JobId, at| AppendBatch {
        job_id,
        expected_version: 0,
        events: build_history(job_id, 0)[..1].to_vec(),
        idempotency: Some(claim(job_id, at)),
    };
    let first = JobId::new();
    store
        .append(submit(first, test_time(0)))
        .await
        .expect("first");
    let item = moto
        .dynamo
        .get_item()
        .table_name(store.tables().idempotency.as_deref().expect("table"))
        .key("key", AttributeValue::S("api-key:k#daily".into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("claim stored");
    let expires = test_time(0).timestamp() + 24 * 3600;
    assert_eq!(
        item.get("expires_at"),
        Some(&AttributeValue::N(expires.to_string())),
        "the TTL attribute must be created + 24 h in epoch seconds"
    );

    // 23 h later the key is still taken ...
    let second = JobId::new();
    match store.append(submit(second, test_time(23 * 3600))).await {
        Err(StoreError::IdempotencyKeyTaken { existing }) => {
            assert_eq!(existing, claim(first, test_time(0)))
        }
        other => panic!("a reuse within 24 h gave {other:?}"),
    }
    assert!(store.load(second).await.expect("load").is_empty());
    // ... 24 h later it is free again, even if TTL deletion has not run yet.
    store
        .append(submit(second, test_time(24 * 3600)))
        .await
        .expect("a reuse after 24 h");
    assert_eq!(
        store.idempotency("api-key:k#daily").await.expect("lookup"),
        Some(claim(second, test_time(24 * 3600)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_makes_the_terraform_key_schema_with_a_new_image_stream() {
    let moto = Moto::new();
    let store = moto.store_as_deployed().await;
    // The store works on the tables it made.
    let (job_id, history) = running_job(&store).await;
    assert_eq!(store.load(job_id).await.expect("load"), history);
    // Creating again is harmless (a dev stack restarts).
    store.create_tables().await.expect("create twice");
    let table = moto
        .dynamo
        .describe_table()
        .table_name(&store.tables().events)
        .send()
        .await
        .expect("describe")
        .table
        .expect("table");
    let keys: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("job_id".to_string(), "HASH".to_string()),
            ("version".to_string(), "RANGE".to_string())
        ]
    );
    let stream = table.stream_specification().expect("stream");
    assert!(stream.stream_enabled());
    assert_eq!(
        stream.stream_view_type().map(|v| v.as_str()),
        Some("NEW_IMAGE")
    );
    let ttl = moto
        .dynamo
        .describe_time_to_live()
        .table_name(store.tables().idempotency.as_deref().expect("table"))
        .send()
        .await
        .expect("ttl")
        .time_to_live_description
        .expect("ttl description");
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
}

/// The dispatcher's, projector's, launcher's, sweeper's and notifier's store: the events table
/// alone, as Terraform configures those functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_only_store_appends_and_reads_offloaded_payloads_but_claims_and_offloads_nothing()
{
    let moto = Moto::new();
    let full = moto.fresh().await;
    let events = full.tables().events.clone();
    let store = DynamoEventStore::events_only(moto.dynamo.clone(), moto.s3.clone(), &events);
    assert_eq!(store.tables(), &EventsTables::events_only(&events));

    let (job_id, history) = running_job(&store).await;
    assert_eq!(store.load(job_id).await.expect("load"), history);
    assert_eq!(full.load(job_id).await.expect("load"), history);

    // A payload the api offloaded to S3 loads back through it.
    let big_job = JobId::new();
    let big = big_submission(big_job, &[], 350_000);
    full.append(AppendBatch {
        job_id: big_job,
        expected_version: 0,
        events: vec![big.clone()],
        idempotency: None,
    })
    .await
    .expect("the full store offloads");
    assert_eq!(store.load(big_job).await.expect("load"), vec![big]);

    // It has no idempotency table to claim a key in, nor a bucket to offload to: both refused,
    // and nothing written.
    let fresh = JobId::new();
    let claim = IdempotencyRecord {
        key: "api-key:k#events-only".into(),
        job_id: fresh,
        fingerprint: "f".into(),
        created_at: test_time(0),
    };
    let claimed = store
        .append(AppendBatch {
            job_id: fresh,
            expected_version: 0,
            events: build_history(fresh, 0)[..1].to_vec(),
            idempotency: Some(claim),
        })
        .await;
    assert!(
        matches!(&claimed, Err(StoreError::Backend { retryable: false, source }) if source.to_string().contains("IDEMPOTENCY_TABLE")),
        "{claimed:?}"
    );
    let offloaded = store
        .append(AppendBatch {
            job_id: fresh,
            expected_version: 0,
            events: vec![big_submission(fresh, &[], 350_000)],
            idempotency: None,
        })
        .await;
    assert!(
        matches!(&offloaded, Err(StoreError::Backend { retryable: false, source }) if source.to_string().contains("no payload bucket")),
        "{offloaded:?}"
    );
    assert!(store.load(fresh).await.expect("load").is_empty());
}

/// A fake DynamoDB endpoint that answers every request with `status` and `body`, so error
/// mapping can be tested for replies moto never gives (throttling, 5xx, transaction conflicts).
async fn fake_dynamodb(status: u16, body: &'static str) -> String {
    let server = FakeServer::start(move |_, _| {
        Reply::text(status, body).header("content-type", "application/x-amz-json-1.0")
    })
    .await;
    server.url()
}

fn store_at(endpoint: &str) -> DynamoEventStore {
    let config = moto::dynamo_config(endpoint)
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    DynamoEventStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        moto::s3_client(endpoint),
        EventsTables::new("events", "idempotency", "bucket"),
    )
}

#[tokio::test]
async fn throttling_server_errors_and_transaction_conflicts_are_retryable_backend_errors() {
    let job_id = JobId::new();
    let batch = AppendBatch {
        job_id,
        expected_version: 0,
        events: build_history(job_id, 0)[..1].to_vec(),
        idempotency: None,
    };
    let cases = [
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"slow down"}"#,
            true,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"too fast"}"#,
            true,
        ),
        (
            500,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"oops"}"#,
            true,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled","CancellationReasons":[{"Code":"TransactionConflict","Message":"conflict"}]}"#,
            true,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled","CancellationReasons":[{"Code":"ThrottlingError","Message":"slow"}]}"#,
            true,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled","CancellationReasons":[{"Code":"ValidationError","Message":"bad item"}]}"#,
            false,
        ),
        (
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"no table"}"#,
            false,
        ),
    ];
    for (status, body, retryable) in cases {
        let store = store_at(&fake_dynamodb(status, body).await);
        let result = tokio::time::timeout(Duration::from_secs(10), store.append(batch.clone()))
            .await
            .expect("append timed out");
        match result {
            Err(StoreError::Backend {
                retryable: r,
                source,
            }) => {
                assert_eq!(r, retryable, "{body}: {source}")
            }
            other => panic!("{body}: append gave {other:?}"),
        }
        if body.contains("TransactionCanceled") {
            continue;
        }
        let loaded = store.load(job_id).await;
        assert!(
            matches!(loaded, Err(StoreError::Backend { retryable: r, .. }) if r == retryable),
            "{body}: load gave {loaded:?}"
        );
    }
}
