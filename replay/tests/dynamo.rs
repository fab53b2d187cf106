//! Replay reading a DynamoDB events table on moto: a long history (over 1 MB, so every read
//! pages) verified and rebuilt, and tampered items caught.
//!
//! Run through `scripts/with-moto cargo nextest run -p jobledger-replay --all-features`.
#![cfg(feature = "dynamodb")]

use std::process::ExitCode;

use aws_sdk_dynamodb::types::AttributeValue;
use jobledger_events::execute::record;
use jobledger_events::testing::{build_history, noop_spec, test_context};
use jobledger_events::{
    AppendBatch, DynamoEventStore, EventStore, EventsTables, Hash, JobEvent, JobId, RecordedEvent,
};
use jobledger_projections::{DynamoJobViews, JobView, SqliteViewStore, ViewStore};
use jobledger_replay::dynamo_source::DynamoSource;
use jobledger_replay::format::Entry;
use jobledger_replay::synth::Synth;
use jobledger_replay::verify::rules;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{HistorySource, ReplayCommand, SourceArgs, run, verify_source};
use jobledger_testsupport::moto::{self, Moto, event_item_at, seed_events};

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str = "scripts/with-moto cargo nextest run -p jobledger-replay --all-features";

/// A new events table on moto, and the clients.
async fn events_table() -> (Moto, String) {
    let moto = Moto::connect(RUN_AS);
    let table = moto::unique("events");
    moto::create_events_table(&moto.dynamo, &table).await;
    (moto, table)
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
    let (Moto { dynamo, s3, .. }, table) = events_table().await;
    let long_job = JobId::new();
    let long = build_history(long_job, 2_996);
    let bytes: usize = long
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    assert!(bytes > 1 << 20, "the history is only {bytes} bytes");
    let jobs = Synth::new(21).jobs(20);
    let mut all: Vec<RecordedEvent> = jobs.iter().flatten().cloned().collect();
    all.extend(long.iter().cloned());
    seed_events(&dynamo, &table, &all).await;

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
    // And reads the long history's timeline, every page of it.
    let cmd = ReplayCommand::History {
        job: long_job,
        json: true,
    };
    assert_eq!(
        run(cmd, args(&table)).await.expect("history"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_read_model_is_rebuilt_from_the_dynamodb_ledger_by_the_command_line() {
    let (Moto { dynamo, .. }, table) = events_table().await;
    let jobs = Synth::new(31).jobs(15);
    seed_events(&dynamo, &table, &jobs.concat()).await;
    let views = DynamoJobViews::new(dynamo.clone(), moto::unique("jobs"));
    views.create_table().await.expect("jobs table");
    // A view of a job the ledger does not have, and a wrong one: the rebuild replaces both.
    let mut stray = jobs[0]
        .iter()
        .try_fold(None, JobView::apply)
        .expect("folds")
        .expect("a view");
    stray.job_id = JobId::new();
    views.upsert(&stray).await.expect("stray view");
    let mut wrong = jobs[1]
        .iter()
        .try_fold(None, JobView::apply)
        .expect("folds")
        .expect("a view");
    wrong.error = Some("edited".into());
    wrong.last_version += 10;
    views.upsert(&wrong).await.expect("wrong view");

    let rebuild = |dry_run, views_table: &str| ReplayCommand::Rebuild {
        projection: Projection::All,
        dry_run,
        views_table: Some(views_table.to_string()),
        json: false,
    };
    // A dry run against DynamoDB is refused, and changes nothing.
    let err = run(rebuild(true, views.table()), args(&table))
        .await
        .expect_err("dry run refused");
    assert!(err.to_string().contains("--dry-run"), "{err}");
    assert_eq!(
        views.get(stray.job_id).await.expect("get"),
        Some(stray.clone())
    );
    // A table that does not exist is named before anything is touched.
    let err = run(rebuild(false, "no-such-jobs-table"), args(&table))
        .await
        .expect_err("missing table");
    assert!(format!("{err:#}").contains("no-such-jobs-table"), "{err:#}");

    assert_eq!(
        run(rebuild(false, views.table()), args(&table))
            .await
            .expect("rebuild"),
        ExitCode::SUCCESS
    );
    let expected: Vec<JobView> = {
        let mut v: Vec<JobView> = jobs
            .iter()
            .map(|h| {
                h.iter()
                    .try_fold(None, JobView::apply)
                    .expect("folds")
                    .expect("a view")
            })
            .collect();
        v.sort_by_key(|v| v.job_id);
        v
    };
    assert_eq!(views.all().await.expect("all views"), expected);
    let stats = views.load_stats().await.expect("stats").expect("saved");
    assert_eq!(stats.jobs, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_deleted_item_in_dynamodb_is_caught_and_named() {
    let (Moto { dynamo, s3, .. }, table) = events_table().await;
    let jobs = Synth::new(8).jobs(12);
    seed_events(&dynamo, &table, &jobs.concat()).await;
    let src = DynamoSource::new(dynamo.clone(), s3, &table, 2);
    assert!(verify_source(&src, None, false).await.expect("verify").ok());

    // One byte of one item's actor changed in place.
    let edited = jobs[3][1].job_id;
    let mut changed = event_item_at(&dynamo, &table, edited, 2).await;
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

/// A payload moved to S3 (over 300 KB) is read back by the source the command line opens, with
/// its clients built from the standard AWS environment (`jobledger_workers::aws_clients`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_offloaded_to_s3_is_read_through_the_standard_aws_environment() {
    let (Moto { dynamo, s3, .. }, table) = events_table().await;
    let bucket = moto::unique("payloads");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create the bucket");
    let store = DynamoEventStore::new(
        dynamo.clone(),
        s3.clone(),
        EventsTables {
            events: table.clone(),
            idempotency: None,
            payload_bucket: Some(bucket.clone()),
        },
    );
    let job_id = JobId::new();
    let mut spec = noop_spec(1);
    spec.metadata
        .insert("blob".into(), "ü✓ payload ".repeat(30_000).into());
    let submitted = record(
        job_id,
        0,
        Hash::ZERO,
        &[JobEvent::JobSubmitted(spec)],
        &test_context("api-key:big"),
    );
    store
        .append(AppendBatch {
            job_id,
            expected_version: 0,
            events: submitted.clone(),
            idempotency: None,
        })
        .await
        .expect("append");
    let item = event_item_at(&dynamo, &table, job_id, 1).await;
    assert!(
        item.contains_key("data_uri"),
        "the payload was not offloaded"
    );

    let src = DynamoSource::from_env(&table, 1).await;
    let entries = src.job(job_id, true).await.expect("read the job");
    let [Entry::Event(read)] = entries.as_slice() else {
        panic!("not one readable event: {entries:#?}");
    };
    assert_eq!(read.event, submitted[0], "the payload read back from S3");
    // The payload is whole: verify sees its oversized metadata (the api would have refused it),
    // which it could only do by reading the payload back from S3.
    let report = verify_source(&src, Some(job_id), false)
        .await
        .expect("verify");
    assert_eq!(report.events, 1);
    assert!(
        !report.findings.is_empty(),
        "the oversized metadata is a finding"
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.rule == rules::LEGAL && f.detail.contains("metadata")),
        "{:#?}",
        report.findings
    );
}
