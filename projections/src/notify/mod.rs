//! Pure renderers of a job's notifications: the Slack Block Kit message, the Notion page
//! properties and the one-line console notification.
//!
//! Renderers read a [`JobView`] (the job as of one version) and nothing else: no clock, no I/O.
//! What only the caller can know (a presigned results link, the current time) comes in as arguments,
//! so the same view always renders the same bytes and golden tests can pin them.

pub mod notion;
pub mod slack;

use chrono::{DateTime, SecondsFormat, Utc};
use jobledger_events::Status;

use crate::job_view::JobView;

pub use notion::{NOTION_TEXT_LIMIT, notion_properties};
pub use slack::{ResultLink, SlackMessage, slack_failure_reply, slack_message};

/// The emoji shortcode shown next to a status (Slack renders it; the console prints it as text).
pub fn status_emoji(status: Status) -> &'static str {
    match status {
        Status::New => ":grey_question:",
        Status::Submitted => ":inbox_tray:",
        Status::Queued => ":hourglass_flowing_sand:",
        Status::Launching => ":rocket:",
        Status::Running => ":gear:",
        Status::RetryWait => ":repeat:",
        Status::Succeeded => ":white_check_mark:",
        Status::Failed => ":x:",
        Status::Cancelling => ":octagonal_sign:",
        Status::Cancelled => ":no_entry_sign:",
    }
}

/// The error worth showing for the job's current status: the reason it failed, or why it is
/// waiting to retry. A succeeded job keeps an earlier attempt's error in its view; showing that
/// next to a success would mislead, so it is left out.
pub fn shown_error(view: &JobView) -> Option<&str> {
    match view.status {
        Status::Failed | Status::RetryWait => view.error.as_deref(),
        _ => None,
    }
}

/// Items in the job: the known total, or the items counted so far when the total is not known yet
/// (an `input_uri` job before its first progress report).
pub fn items_total(view: &JobView) -> u64 {
    view.progress
        .total
        .max(view.progress.done + view.progress.failed)
}

/// A duration in words a person reads at a glance: `45s`, `2m 05s`, `1h 02m`, `3d 4h`.
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A time as people read it in a notification: `2025-01-15 09:00:00 UTC`.
pub fn human_time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time as Notion's date property wants it: RFC 3339 with milliseconds, `Z`.
pub fn iso_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Cuts `text` to at most `max` characters, ending with `…` when something was cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One line per status change for the console sink (no sink configured):
/// `[jobledger] ✓ job 0194… meta_description SUCCEEDED v7 · 3 ok / 1 failed of 4 · 2m 05s · $0.0125`.
pub fn console_line(view: &JobView) -> String {
    let mut line = format!(
        "[jobledger] job {} {} {} (v{}, attempt {}) · {} ok / {} failed of {}",
        view.job_id,
        view.kind,
        view.status,
        view.last_version,
        view.attempt,
        view.progress.done,
        view.progress.failed,
        items_total(view),
    );
    if let Some(d) = view.duration() {
        line.push_str(&format!(" · {}", human_duration(d)));
    }
    if view.cost_usd > 0.0 {
        line.push_str(&format!(" · ${:.4}", view.cost_usd));
    }
    if let Some(uri) = &view.result_uri {
        line.push_str(&format!(" · {uri}"));
    }
    if let Some(error) = shown_error(view) {
        // One line means one line: an error with newlines is flattened.
        let flat = error.split_whitespace().collect::<Vec<_>>().join(" ");
        line.push_str(&format!(" · error: {}", truncate_chars(&flat, 200)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        let s = chrono::Duration::seconds;
        assert_eq!(human_duration(s(45)), "45s");
        assert_eq!(human_duration(s(125)), "2m 05s");
        assert_eq!(human_duration(s(3720)), "1h 02m");
        assert_eq!(human_duration(s(3 * 86400 + 4 * 3600)), "3d 4h");
        assert_eq!(human_duration(s(-5)), "0s");
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(truncate_chars("héllo!", 5), "héll…");
        assert_eq!(truncate_chars("ééééé", 3).chars().count(), 3);
    }
}
