//! The jobledger worker runtime, job kinds and AI backends.
//!
//! - [`runtime::run_attempt`]: one attempt of one job, from claim to results (what the `worker`
//!   binary and `jobledger dev` run).
//! - [`kinds`]: reading and checking items, and the builtin heuristics of each job kind.
//! - [`backend`]: the `Backend` port model backends implement, and the offline `BuiltinBackend`.
//! - [`backends`]: the OpenAI-compatible and Bedrock backends, prompts, retries and prices.
//! - [`objects`]: the `ObjectStore` port for results, checkpoints and large inputs.

#[cfg(feature = "aws")]
pub mod aws_clients;
pub mod backend;
pub mod backends;
pub mod config;
pub mod kinds;
pub mod objects;
pub mod process;
pub mod runtime;
#[cfg(feature = "aws")]
pub mod s3;

pub use backend::{Backend, BuiltinBackend, Generated, ItemError, ItemUsage};
pub use config::{AiConfig, BackendKind, ConfigError, WorkerConfig, WorkerEnv};
pub use objects::{FsObjectStore, ObjectError, ObjectStore};
pub use runtime::{AttemptOutcome, ResultLine, WorkerError, run_attempt, run_attempt_with};
#[cfg(feature = "aws")]
pub use s3::S3ObjectStore;
