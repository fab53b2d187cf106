//! The Slack Block Kit message of a job, and the threaded reply that carries a failure's error.
//!
//! Limits kept (Block Kit reference): a section's text is at most 3,000 characters, a field's
//! at most 2,000, a section holds at most 10 fields, and a button's `url` at most 3,000 characters.

use chrono::{DateTime, Duration, Utc};
use jobledger_events::Status;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{human_duration, human_time, items_total, shown_error, status_emoji, truncate_chars};
use crate::job_view::JobView;

/// Longest text of a section block.
const SECTION_TEXT_LIMIT: usize = 3000;
/// Longest `url` of a button element.
const BUTTON_URL_LIMIT: usize = 3000;
/// Longest error text shown in the message itself; the threaded reply carries more.
const ERROR_IN_MESSAGE: usize = 500;

/// A presigned link to a job's results and how long it stays valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLink {
    /// The URL a person can download the results from.
    pub url: String,
    /// How long the URL stays valid from the time of rendering.
    pub expires_in: Duration,
}

/// A Slack message: the notification text (shown where blocks cannot be) and the blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlackMessage {
    /// Plain fallback text (notifications, screen readers).
    pub text: String,
    /// Block Kit blocks.
    pub blocks: Vec<Value>,
}

/// Renders the message of a job as of its view's version.
///
/// `link` is the presigned results URL (only shown for a succeeded job); `now` is when the message
/// is rendered, from which the link's expiry time is stated.
pub fn slack_message(
    view: &JobView,
    link: Option<&ResultLink>,
    now: DateTime<Utc>,
) -> SlackMessage {
    let emoji = status_emoji(view.status);
    let text = format!(
        "{emoji} {} job {} is {}",
        view.kind, view.job_id, view.status
    );
    let mut blocks = vec![json!({
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": format!("{emoji} *{}* job `{}` is *{}*", view.kind, view.job_id, view.status),
        },
    })];
    blocks.push(json!({
        "type": "section",
        "fields": fields(view),
    }));
    if let Some(error) = shown_error(view) {
        let label = if view.status == Status::Failed {
            "Reason"
        } else {
            "Last error"
        };
        // Backticks would end the code span early; they are swapped for look-alike quotes.
        let error = truncate_chars(&error.replace("```", "'''"), ERROR_IN_MESSAGE);
        blocks.push(json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": truncate_chars(&format!("*{label}*\n```{error}```"), SECTION_TEXT_LIMIT),
            },
        }));
    }
    if view.status == Status::Succeeded
        && let Some(link) = link
    {
        let expires_at = now + link.expires_in;
        let expiry = format!(
            "Download link expires in {} (at {}).",
            human_duration(link.expires_in),
            human_time(&expires_at)
        );
        if link.url.chars().count() <= BUTTON_URL_LIMIT {
            blocks.push(json!({
                "type": "actions",
                "elements": [{
                    "type": "button",
                    "action_id": "download_results",
                    "text": {"type": "plain_text", "text": "Download results"},
                    "url": link.url,
                }],
            }));
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": expiry}],
            }));
        } else {
            // A button cannot hold it; the API's /jobs/{id}/result gives the same link.
            blocks.push(json!({
                "type": "context",
                "elements": [{
                    "type": "mrkdwn",
                    "text": format!("Results link too long for Slack: GET /jobs/{}/result", view.job_id),
                }],
            }));
        }
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!(
                "Submitted {} · updated {} · version {}",
                human_time(&view.created_at),
                human_time(&view.updated_at),
                view.last_version
            ),
        }],
    }));
    SlackMessage { text, blocks }
}

/// The label/value fields of the summary section (at most 10).
fn fields(view: &JobView) -> Vec<Value> {
    let field = |label: &str, value: String| json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")});
    let duration = match view.duration() {
        Some(d) => human_duration(d),
        None => format!(
            "{} so far",
            human_duration(view.updated_at - view.created_at)
        ),
    };
    vec![
        field(
            "Status",
            format!("{} {}", status_emoji(view.status), view.status),
        ),
        field("Kind", view.kind.to_string()),
        field(
            "Items",
            format!(
                "{} ok · {} failed · {} in all",
                view.progress.done,
                view.progress.failed,
                items_total(view)
            ),
        ),
        field("Duration", duration),
        field("Cost", format!("${:.4}", view.cost_usd)),
        field(
            "Attempts",
            format!("{} (up to {} may fail)", view.attempt, view.max_attempts),
        ),
    ]
}

/// The threaded reply posted under a failed job's message: the whole error (within Slack's limit).
/// `None` unless the job has failed.
pub fn slack_failure_reply(view: &JobView) -> Option<String> {
    if view.status != Status::Failed {
        return None;
    }
    let error = view.error.as_deref().unwrap_or("no reason recorded");
    let error = truncate_chars(&error.replace("```", "'''"), SECTION_TEXT_LIMIT);
    Some(format!(
        "{} Job `{}` failed after {} attempt(s):\n```{error}```",
        status_emoji(Status::Failed),
        view.job_id,
        view.attempt
    ))
}
