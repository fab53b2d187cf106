//! Read models folded from jobledger events, and their view stores.
//!
//! `JobView::apply` is a pure fold (no I/O, no clock); `ViewStore` keeps views with a
//! version-guarded write so duplicate or late events change nothing; `Stats` folds views into figures.

#[cfg(feature = "dynamodb")]
pub mod dynamo;
pub mod job_view;
pub mod notify;
pub mod sqlite;
pub mod stats;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod view_json;

#[cfg(feature = "dynamodb")]
pub use dynamo::DynamoJobViews;
pub use job_view::{JobView, Progress, ProjectionError};
pub use sqlite::SqliteViewStore;
pub use stats::{Period, Stats, StatsBuilder};
pub use store::{ListQuery, MAX_LIST_LIMIT, Page, ViewError, ViewStore};
