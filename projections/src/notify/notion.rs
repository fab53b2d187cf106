//! The Notion page properties of a job, for a database with these properties (name: type):
//! `Job ID`: title · `Status`, `Kind`: select · `Items`, `Failed items`, `Attempts`, `Duration s`,
//! `Cost USD`: number · `Submitted`, `Completed`: date · `Result`: url · `Error`: rich text.
//!
//! Shapes follow the Notion API (version 2022-06-28) page property values; an unset number,
//! date or url is `null`, which clears the property on update.

use serde_json::{Value, json};

use super::{iso_time, items_total, shown_error, truncate_chars};
use crate::job_view::JobView;

/// Most characters in one rich text object's `text.content` (Notion's request limit).
pub const NOTION_TEXT_LIMIT: usize = 2000;

/// One rich text array of a single plain text object.
fn rich_text(content: &str) -> Value {
    json!([{"type": "text", "text": {"content": truncate_chars(content, NOTION_TEXT_LIMIT)}}])
}

/// Renders the page properties of a job as of its view's version.
///
/// `Result` is the durable `result_uri` (a presigned link would expire while the page lives on);
/// `Duration s` stays empty until the job ends.
pub fn notion_properties(view: &JobView) -> Value {
    json!({
        "Job ID": {"title": rich_text(&view.job_id.to_string())},
        "Status": {"select": {"name": view.status.as_str()}},
        "Kind": {"select": {"name": view.kind.as_str()}},
        "Items": {"number": items_total(view)},
        "Failed items": {"number": view.progress.failed},
        "Attempts": {"number": view.attempt},
        "Duration s": {"number": view.duration().map(|d| d.num_milliseconds() as f64 / 1000.0)},
        "Cost USD": {"number": view.cost_usd},
        "Submitted": {"date": {"start": iso_time(&view.created_at)}},
        "Completed": view.finished_at.map_or(json!({"date": null}), |at| json!({"date": {"start": iso_time(&at)}})),
        "Result": {"url": view.result_uri},
        "Error": {"rich_text": shown_error(view).map_or(json!([]), rich_text)},
    })
}
