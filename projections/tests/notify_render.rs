//! The Slack message, Notion properties and console line rendered from recorded histories
//! (`tests/fixtures/*.jsonl`), compared byte for byte with `tests/golden/<fixture>.json`.
//!
//! After an intended change to a renderer, rewrite the goldens with
//! `UPDATE_GOLDEN=1 cargo test -p jobledger-projections --test notify_render` and review the diff.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chrono::{Duration, TimeZone, Utc};
use jobledger_events::{RecordedEvent, Status};
use jobledger_projections::JobView;
use jobledger_projections::notify::{
    NOTION_TEXT_LIMIT, ResultLink, console_line, notion_properties, slack_failure_reply,
    slack_message,
};
use serde_json::{Value, json};

const FIXTURES: [&str; 5] = [
    "succeeded_first_attempt",
    "failed_after_retries",
    "cancelled_then_retried",
    "legacy_progress_schema_1",
    "retried_and_interrupted_then_succeeded",
];

fn load(name: &str) -> Vec<RecordedEvent> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn link() -> ResultLink {
    ResultLink {
        url: "https://results.example/results/job.jsonl?X-Amz-Signature=abc".into(),
        expires_in: Duration::hours(24),
    }
}

/// Everything rendered for one fixture: the final state, plus the console line of every version.
fn render(name: &str) -> Value {
    let events = load(name);
    let now = Utc.with_ymd_and_hms(2025, 1, 15, 12, 0, 0).unwrap();
    let view = JobView::fold(&events).unwrap().unwrap();
    let timeline: Vec<String> = (1..=events.len())
        .map(|n| console_line(&JobView::fold(&events[..n]).unwrap().unwrap()))
        .collect();
    json!({
        "slack": slack_message(&view, Some(&link()), now),
        "slack_failure_reply": slack_failure_reply(&view),
        "notion_properties": notion_properties(&view),
        "console_timeline": timeline,
    })
}

#[test]
fn rendered_notifications_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatched = Vec::new();
    for name in FIXTURES {
        let rendered = format!("{}\n", serde_json::to_string_pretty(&render(name)).unwrap());
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
        if update {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        if golden != rendered {
            mismatched.push(format!(
                "{name}:\n--- golden\n{golden}\n--- rendered\n{rendered}"
            ));
        }
    }
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}

#[test]
fn a_succeeded_job_gets_a_download_button_with_its_expiry_and_no_reason() {
    let view = JobView::fold(&load("succeeded_first_attempt"))
        .unwrap()
        .unwrap();
    let now = Utc.with_ymd_and_hms(2025, 1, 15, 12, 0, 0).unwrap();
    let msg = serde_json::to_value(slack_message(&view, Some(&link()), now)).unwrap();
    let blocks = msg["blocks"].as_array().unwrap();
    let button = blocks
        .iter()
        .find(|b| b["type"] == "actions")
        .map(|b| &b["elements"][0])
        .unwrap();
    assert_eq!(button["type"], "button");
    assert_eq!(button["text"]["text"], "Download results");
    assert_eq!(button["url"], link().url);
    let text = msg.to_string();
    assert!(
        text.contains("expires in 1d 0h (at 2025-01-16 12:00:00 UTC)"),
        "{text}"
    );
    assert!(!text.contains("Reason"));
    assert!(slack_failure_reply(&view).is_none());
}

#[test]
fn an_unfinished_job_has_no_button_even_with_a_link() {
    let events = load("succeeded_first_attempt");
    let view = JobView::fold(&events[..3]).unwrap().unwrap();
    assert_ne!(view.status, Status::Succeeded);
    let msg = serde_json::to_value(slack_message(&view, Some(&link()), Utc::now())).unwrap();
    assert!(!msg.to_string().contains("Download results"));
}

#[test]
fn a_failed_job_states_its_reason_in_the_message_and_the_thread() {
    let view = JobView::fold(&load("failed_after_retries"))
        .unwrap()
        .unwrap();
    assert_eq!(view.status, Status::Failed);
    let reason = view.error.clone().unwrap();
    let msg = serde_json::to_value(slack_message(&view, None, Utc::now())).unwrap();
    assert!(msg.to_string().contains("*Reason*"));
    assert!(msg.to_string().contains(&reason));
    assert!(slack_failure_reply(&view).unwrap().contains(&reason));
    let props = notion_properties(&view);
    assert_eq!(
        props["Error"]["rich_text"][0]["text"]["content"],
        reason.as_str()
    );
}

#[test]
fn a_long_error_is_cut_to_notions_and_slacks_limits() {
    let mut view = JobView::fold(&load("failed_after_retries"))
        .unwrap()
        .unwrap();
    view.error = Some("é".repeat(10_000));
    let props = notion_properties(&view);
    let content = props["Error"]["rich_text"][0]["text"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(content.chars().count(), NOTION_TEXT_LIMIT);
    assert!(content.ends_with('…'));
    let msg = slack_message(&view, None, Utc::now());
    for block in &msg.blocks {
        if let Some(text) = block["text"]["text"].as_str() {
            assert!(
                text.chars().count() <= 3000,
                "section text over 3000 characters"
            );
        }
    }
    assert!(slack_failure_reply(&view).unwrap().chars().count() <= 3100);
}

#[test]
fn notion_properties_have_the_documented_types() {
    for name in FIXTURES {
        let view = JobView::fold(&load(name)).unwrap().unwrap();
        let props = notion_properties(&view);
        let kinds = [
            ("Job ID", "title"),
            ("Status", "select"),
            ("Kind", "select"),
            ("Items", "number"),
            ("Failed items", "number"),
            ("Attempts", "number"),
            ("Duration s", "number"),
            ("Cost USD", "number"),
            ("Submitted", "date"),
            ("Completed", "date"),
            ("Result", "url"),
            ("Error", "rich_text"),
        ];
        assert_eq!(props.as_object().unwrap().len(), kinds.len(), "{name}");
        for (prop, kind) in kinds {
            let value = &props[prop][kind];
            let ok = match kind {
                "title" | "rich_text" => value.is_array(),
                "select" => value["name"].is_string(),
                "number" => value.is_number() || value.is_null(),
                "date" => value.is_null() || value["start"].is_string(),
                "url" => value.is_string() || value.is_null(),
                _ => false,
            };
            assert!(ok, "{name}: {prop} is not a {kind}: {}", props[prop]);
        }
        assert_eq!(
            props["Job ID"]["title"][0]["text"]["content"],
            view.job_id.to_string()
        );
        assert_eq!(props["Status"]["select"]["name"], view.status.as_str());
        assert_eq!(
            props["Completed"]["date"].is_null(),
            view.finished_at.is_none(),
            "{name}"
        );
    }
}
