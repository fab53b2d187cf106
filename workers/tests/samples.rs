//! The shipped `samples/demo-*.json` requests are valid jobs, and the builtin backend gives the
//! answers the README demo shows.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use jobledger_events::event::Capacity;
use jobledger_events::{Command, CommandContext, JobId, JobSpec, SqliteEventStore, execute};
use jobledger_workers::{
    AttemptOutcome, FsObjectStore, ObjectStore, ResultLine, WorkerConfig, run_attempt,
};
use serde_json::Value;
use tokio::sync::watch;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// Submits the sample request, runs attempt 1, returns (items_failed, outputs or errors by id).
async fn run_demo(name: &str) -> (u64, Vec<(String, Result<Value, String>)>) {
    let body = std::fs::read_to_string(samples().join(name)).unwrap();
    let spec: JobSpec = serde_json::from_str(&body).unwrap();
    spec.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let objects = FsObjectStore::new(dir.path().join("objects")).unwrap();
    let job = JobId::new();
    let ctx = CommandContext::new("api-key:demo", Utc::now());
    for cmd in [
        Command::Submit(spec),
        Command::MarkQueued {
            attempt: 1,
            message_id: "m".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "local".into(),
            capacity: Capacity::Local,
        },
    ] {
        execute(&store, job, &cmd, &ctx).await.unwrap();
    }
    let cfg = WorkerConfig {
        progress_every: Duration::from_secs(60),
        ..WorkerConfig::default()
    };
    let outcome = run_attempt(&store, &objects, job, 1, &cfg, watch::channel(false).1)
        .await
        .unwrap();
    let AttemptOutcome::Succeeded {
        result_uri,
        items_failed,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let bytes = objects.get(&result_uri).await.unwrap();
    let lines = String::from_utf8(bytes).unwrap();
    let results = lines
        .lines()
        .map(|l| {
            let r: ResultLine = serde_json::from_str(l).unwrap();
            let v = if r.ok {
                Ok(r.output.unwrap())
            } else {
                Err(r.error.unwrap())
            };
            (r.id, v)
        })
        .collect();
    (items_failed, results)
}

fn get<'a>(results: &'a [(String, Result<Value, String>)], id: &str) -> &'a Value {
    results
        .iter()
        .find(|(i, _)| i == id)
        .and_then(|(_, r)| r.as_ref().ok())
        .unwrap()
}

#[tokio::test]
async fn the_image_demo_describes_each_picture_and_fails_the_broken_one() {
    let (failed, results) = run_demo("demo-image-alt.json").await;
    assert_eq!(failed, 1);
    for (id, r) in &results {
        eprintln!("{id}: {r:?}");
    }
    let sunset = get(&results, "sunset");
    assert_eq!(
        (sunset["style"].as_str(), sunset["orientation"].as_str()),
        (Some("photo"), Some("landscape"))
    );
    let logo = get(&results, "logo");
    assert_eq!(
        logo["alt_text"],
        "Square flat graphic in white and blue (128×128 PNG)"
    );
    let banner = get(&results, "banner");
    assert_eq!(banner["likely_text"], true);
    for (_, r) in &results {
        if let Ok(v) = r {
            let alt = v["alt_text"].as_str().unwrap();
            assert!(alt.chars().count() <= 125 && !alt.to_lowercase().starts_with("image of"));
        }
    }
}

#[tokio::test]
async fn the_meta_description_demo_stays_under_155_characters() {
    let (failed, results) = run_demo("demo-meta-description.json").await;
    assert_eq!(failed, 0);
    for (id, r) in &results {
        eprintln!("{id}: {r:?}");
        let d = r.as_ref().unwrap()["description"].as_str().unwrap();
        assert!(d.chars().count() <= 155, "{id}: {d}");
    }
    let bakery = get(&results, "bakery")["description"].as_str().unwrap();
    assert!(
        bakery.starts_with("We bake naturally leavened sourdough"),
        "{bakery}"
    );
    assert!(!bakery.contains("dataLayer"));
}

#[tokio::test]
async fn the_content_analysis_demo_detects_languages_and_outlines() {
    let (failed, results) = run_demo("demo-content-analysis.json").await;
    assert_eq!(failed, 0);
    for (id, r) in &results {
        eprintln!(
            "{id}: {}",
            serde_json::to_string(r.as_ref().unwrap()).unwrap()
        );
    }
    assert_eq!(get(&results, "marche-lyon")["language"], "fr");
    assert_eq!(get(&results, "bakery")["language"], "en");
    let notes = get(&results, "release-notes");
    let outline: Vec<&str> = notes["outline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["text"].as_str().unwrap())
        .collect();
    assert_eq!(outline, ["jobledger 0.1", "Workers", "Job kinds"]);
}

#[tokio::test]
async fn the_noop_demo_echoes_every_id() {
    let (failed, results) = run_demo("demo-noop.json").await;
    assert_eq!((failed, results.len()), (0, 100));
    assert_eq!(results[41].1, Ok(serde_json::json!({"id": "n042"})));
}
