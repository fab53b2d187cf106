//! The auditor's tool: history, state at any point, verify, rebuild, export.
//!
//! Every command reads through a [`source::HistorySource`] (the embedded SQLite ledger, an export
//! file, or with the `dynamodb` feature a DynamoDB events table) and decodes payloads only through
//! `events`' `upcast` (`RecordedEvent::decode`, or `upcast::decode_prefix` for a payload read in
//! place), so older schemas are upcast in one place. Nothing here calls a reactor: a rebuild never re-notifies.
//!
//! Embedding (as `jobledger replay`): flatten [`cli::SourceArgs`] and nest [`cli::ReplayCommand`]
//! as a subcommand, then `cli::run(cmd, source).await`.

pub mod cli;
pub mod drive;
#[cfg(feature = "dynamodb")]
pub mod dynamo_source;
pub mod fastline;
pub mod format;
pub mod history;
pub mod source;
pub mod sqlite_scan;
pub mod synth;
pub mod transfer;
pub mod verify;
pub mod views;

pub use cli::{ReplayCommand, SourceArgs, run, run_to_exit};
pub use format::{Entry, ExportWriter, Pin};
pub use source::{AnySource, FileSource, HistorySource, SourceError, SqliteSource};
pub use verify::{Finding, Verifier, VerifyReport, verify_source};
