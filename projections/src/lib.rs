//! Read models folded from jobledger events, and their view stores.
//!
//! `JobView::apply` is a pure fold (no I/O, no clock); `ViewStore` keeps views with a
//! version-guarded write so duplicate or late events change nothing; `Stats` folds views into figures.

#[cfg(feature = "dynamodb")]
pub mod dynamo;
pub mod job_view;
pub mod notify;
pub mod sqlite;
pub mod sqlite_replace;
pub mod stats;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod view_json;

/// The view of the fixture history every unit test here starts from.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn fixture_view() -> JobView {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/succeeded_first_attempt.jsonl");
    let events: Vec<jobledger_events::RecordedEvent> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    JobView::fold(&events).unwrap().unwrap()
}

/// The listing indexes every view store file ends up with, by name.
#[cfg(test)]
const ALL_LISTING_INDEXES: [&str; 3] = [
    "jobs_kind_updated_at",
    "jobs_status_updated_at",
    "jobs_updated_at",
];

/// The listing indexes of the view store file at `path`, by name.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn listing_indexes(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(|n| n.unwrap())
        .collect()
}

#[cfg(feature = "dynamodb")]
pub use dynamo::DynamoJobViews;
pub use job_view::{JobView, Progress, ProjectionError};
pub use sqlite::SqliteViewStore;
pub use sqlite_replace::Replacement;
pub use stats::{Period, Stats, StatsBuilder};
pub use store::{ListQuery, MAX_LIST_LIMIT, Page, ViewError, ViewStore};
