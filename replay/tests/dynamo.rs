//! Replay reading a DynamoDB events table on moto: a long history (over 1 MB, so every read
//! pages) verified and rebuilt, and tampered items caught.
//!
//! Run through `scripts/with-moto cargo nextest run -p jobledger-replay --all-features`.
#![cfg(feature = "dynamodb")]

use std::collections::HashMap;
use std::process::ExitCode;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use jobledger_events::dynamo::event_item;
use jobledger_events::testing::build_history;
use jobledger_events::{JobId, RecordedEvent};
use jobledger_projections::{JobView, SqliteViewStore, ViewStore};
use jobledger_replay::dynamo_source::DynamoSource;
use jobledger_replay::synth::Synth;
use jobledger_replay::verify::rules;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{HistorySource, ReplayCommand, SourceArgs, run, verify_source};

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: these tests need a moto server; run them as \
             `scripts/with-moto cargo nextest run -p jobledger-replay --all-features`"
        )
    })
}

fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

fn clients() -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    let endpoint = endpoint();
    let credentials = Credentials::new("test", "test", None, None, "moto");
    let dynamo = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new(region()))
        .credentials_provider(credentials.clone())
        .build();
    let s3 = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_sdk_s3::config::Region::new(region()))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    (
        aws_sdk_dynamodb::Client::from_conf(dynamo),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// A new events table with the deployed key schema (no stream: moto keeps every stream record).
async fn events_table(dynamo: &aws_sdk_dynamodb::Client) -> String {
    let table = format!("events-{}", uuid::Uuid::now_v7().simple());
    let attribute = |name: &str, kind| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .expect("attribute")
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key")
    };
    dynamo
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("job_id", ScalarAttributeType::S))
        .attribute_definitions(attribute("version", ScalarAttributeType::N))
        .key_schema(key("job_id", KeyType::Hash))
        .key_schema(key("version", KeyType::Range))
        .send()
        .await
        .expect("create the events table");
    table
}

/// Seeds with `BatchWriteItem`: moto's transactions copy the whole table each time.
async fn seed(dynamo: &aws_sdk_dynamodb::Client, table: &str, events: &[RecordedEvent]) {
    for chunk in events.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|e| {
                let put = PutRequest::builder()
                    .set_item(Some(event_item(e).expect("item")))
                    .build()
                    .expect("put");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        while !requests.is_empty() {
            let out = dynamo
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .expect("batch write");
            requests = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
        }
    }
}

async fn item(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    job_id: JobId,
    version: u64,
) -> HashMap<String, AttributeValue> {
    dynamo
        .get_item()
        .table_name(table)
        .key("job_id", AttributeValue::S(job_id.to_string()))
        .key("version", AttributeValue::N(version.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item exists")
}

fn args(table: &str) -> SourceArgs {
    SourceArgs {
        data_dir: std::env::temp_dir().join("replay-dynamo-unused"),
        from: None,
        dynamodb_table: Some(table.to_string()),
        dynamodb_segments: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_over_one_megabyte_in_dynamodb_is_verified_and_its_views_rebuilt() {
    let (dynamo, s3) = clients();
    let table = events_table(&dynamo).await;
    let long_job = JobId::new();
    let long = build_history(long_job, 2_996);
    let bytes: usize = long
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    assert!(bytes > 1 << 20, "the history is only {bytes} bytes");
    let mut synth = Synth::new(21);
    let jobs: Vec<Vec<RecordedEvent>> = (0..20).map(|_| synth.job()).collect();
    let mut all: Vec<RecordedEvent> = jobs.iter().flatten().cloned().collect();
    all.extend(long.iter().cloned());
    seed(&dynamo, &table, &all).await;

    let src = DynamoSource::new(dynamo.clone(), s3, &table, 3);
    // One job by Query, paging past 1 MB.
    let one = verify_source(&src, Some(long_job), false)
        .await
        .expect("verify the long job");
    assert!(one.ok(), "{:#?}", one.findings);
    assert_eq!(one.events, long.len() as u64);
    // Everything by a parallel Scan: each job whole and in version order.
    let report = verify_source(&src, None, false).await.expect("verify all");
    assert!(report.ok(), "{:#?}", report.findings);
    assert_eq!(report.events, all.len() as u64);
    assert_eq!(report.jobs, 21);

    let dir = tempfile::tempdir().expect("temp dir");
    let views = SqliteViewStore::open(dir.path().join("views.sqlite3")).expect("views");
    let rebuilt = rebuild(&src, &views, Projection::All, false, false)
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.fold.events, all.len() as u64);
    assert_eq!(rebuilt.fold.error_count, 0, "{:?}", rebuilt.fold.errors);
    assert_eq!(rebuilt.written, 21);
    for history in jobs.iter().chain(std::iter::once(&long)) {
        let expected = history
            .iter()
            .try_fold(None, JobView::apply)
            .expect("the history folds")
            .expect("a view");
        let stored = views.get(expected.job_id).await.expect("get view");
        assert_eq!(stored.as_ref(), Some(&expected));
    }
    // The command line reaches the same table through the standard AWS environment.
    let cmd = ReplayCommand::Verify {
        job: None,
        all: true,
        json: false,
    };
    assert_eq!(
        run(cmd, args(&table)).await.expect("run"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_deleted_item_in_dynamodb_is_caught_and_named() {
    let (dynamo, s3) = clients();
    let table = events_table(&dynamo).await;
    let mut synth = Synth::new(8);
    let jobs: Vec<Vec<RecordedEvent>> = (0..12).map(|_| synth.job()).collect();
    seed(&dynamo, &table, &jobs.concat()).await;
    let src = DynamoSource::new(dynamo.clone(), s3, &table, 2);
    assert!(verify_source(&src, None, false).await.expect("verify").ok());

    // One byte of one item's actor changed in place.
    let edited = jobs[3][1].job_id;
    let mut changed = item(&dynamo, &table, edited, 2).await;
    let Some(AttributeValue::S(actor)) = changed.get("actor").cloned() else {
        panic!("an item has an actor");
    };
    let forged = format!("{}X", &actor[..actor.len() - 1]);
    changed.insert("actor".into(), AttributeValue::S(forged));
    dynamo
        .put_item()
        .table_name(&table)
        .set_item(Some(changed))
        .send()
        .await
        .expect("put the edited item");
    // One item of another job deleted.
    let cut = jobs[7][0].job_id;
    dynamo
        .delete_item()
        .table_name(&table)
        .key("job_id", AttributeValue::S(cut.to_string()))
        .key("version", AttributeValue::N("3".into()))
        .send()
        .await
        .expect("delete an item");

    let report = verify_source(&src, None, false).await.expect("verify");
    let of = |job: JobId| -> Vec<&'static str> {
        report
            .findings
            .iter()
            .filter(|f| f.job_id == Some(job))
            .map(|f| f.rule)
            .collect()
    };
    assert!(of(edited).contains(&rules::HASH), "{:#?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.job_id == Some(edited) && f.version == Some(2)),
        "{:#?}",
        report.findings
    );
    assert!(of(cut).contains(&rules::VERSIONS), "{:#?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.job_id == Some(edited) || f.job_id == Some(cut)),
        "an untouched job was flagged: {:#?}",
        report.findings
    );
    let one = verify_source(&src, Some(edited), false)
        .await
        .expect("verify one");
    assert!(one.has_rule(rules::HASH));
    let clean = verify_source(&src, Some(jobs[0][0].job_id), false)
        .await
        .expect("verify an untouched job");
    assert!(clean.ok(), "{:#?}", clean.findings);
    let cmd = ReplayCommand::Verify {
        job: None,
        all: true,
        json: false,
    };
    assert_eq!(
        run(cmd, args(&table)).await.expect("run"),
        ExitCode::from(1)
    );
    // A table that is not there is an error naming it, not an empty ledger.
    let cmd = ReplayCommand::Verify {
        job: None,
        all: true,
        json: false,
    };
    let err = run(cmd, args("no-such-table"))
        .await
        .expect_err("missing table");
    assert!(format!("{err:#}").contains("no-such-table"), "{err:#}");
    assert!(src.extent().await.is_ok());
}
