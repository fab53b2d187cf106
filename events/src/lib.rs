//! The jobledger domain: the event envelope, the `Job` aggregate, the hash chain and the event stores.
//!
//! Everything in this crate except the stores is pure and synchronous: time, ids and random values
//! arrive inside commands, so `Job::decide` gives the same answer for the same history and command.
//!
//! See `job` for the state machine table and `docs/ledger-format.md` for the byte-exact hash chain.

pub mod chain;
pub mod command;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
pub mod envelope;
pub mod event;
pub mod execute;
pub mod ids;
pub mod job;
pub mod rejection;
pub mod spec;
pub mod sqlite;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upcast;
#[cfg(feature = "testing")]
pub mod workload;

pub use command::{Clock, Command};
#[cfg(feature = "dynamodb")]
pub use dynamo::{DynamoEventStore, EventsTables};
pub use envelope::{EventHead, Hash, RecordedEvent};
pub use event::JobEvent;
pub use execute::{CommandContext, ExecuteError, execute};
pub use ids::JobId;
pub use job::{Job, Status};
pub use rejection::Rejection;
pub use spec::{JobKind, JobSpec};
pub use sqlite::SqliteEventStore;
pub use store::{
    AppendBatch, ChangeFeed, EventStore, FeedEvent, IdempotencyRecord, JobHead, LoadedJob,
    StoreError,
};
