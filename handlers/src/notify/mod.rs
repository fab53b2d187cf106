//! The notifier: Slack and Notion (or the console) told about each job, exactly once in effect.
//!
//! - [`Sink`]s: [`SlackWebhookSink`], [`SlackBotSink`], [`NotionSink`], [`ConsoleSink`]; the messages
//!   themselves are rendered by the pure renderers of `jobledger_projections::notify`.
//! - [`notify_one`]: one record, one sink. Per sink and job, [`SinkState`] keeps the last version
//!   delivered and what was created (Slack `ts`, Notion page id), so duplicates, late records and
//!   replays of the whole log make no calls. State ports: [`NotifyStateStore`], [`DeadLetterStore`];
//!   [`FailureCounter`] (tries of a record across Lambda invocations); adapters
//!   [`SqliteNotifyStore`] (local) and `DynamoNotifyStore` (feature `aws`, see `dynamo`).
//! - [`run_notifier`]: `jobledger dev`'s loops, one per sink with its own change-feed checkpoint;
//!   [`Notifier::redrive`] and [`DeadLetterStore::list`] for the CLI.
//! - Configuration from the environment: see [`config`]; on AWS the tokens come from Secrets
//!   Manager (`secrets`, feature `aws`) and the `notifier` Lambda drives [`notify_one`] from the
//!   events table's stream (`aws::glue::notify_stream`).

pub mod clock;
pub mod config;
pub mod console;
pub mod core;
#[cfg(feature = "aws")]
pub mod dynamo;
pub mod error;
pub mod http;
pub mod notion;
pub mod runner;
#[cfg(feature = "aws")]
pub mod secrets;
pub mod sink;
pub mod slack;
pub mod state;

pub use clock::{NotifyClock, SystemClock};
pub use config::{ConfigError, NotifierConfig, NotionConfig, RetryPolicy, SlackBotConfig};
pub use console::ConsoleSink;
pub use core::{NotifyEnv, Outcome, ViewCache, notify_one};
#[cfg(feature = "aws")]
pub use dynamo::DynamoNotifyStore;
pub use error::NotifyError;
pub use http::{HttpRetry, HttpSender, RateLimiter, Secret};
pub use notion::{NOTION_VERSION, NotionSink};
pub use runner::{AnySink, Notifier, RedriveError, consumer_name, run_notifier, run_sink};
pub use sink::{Delivery, NotifyOn, Sink};
pub use slack::{SlackBotSink, SlackWebhookSink};
pub use state::{
    DeadLetter, DeadLetterStore, FailureCounter, NewDeadLetter, NotifyStateStore, SinkState,
    SqliteNotifyStore, StateBuffer, StateError,
};
