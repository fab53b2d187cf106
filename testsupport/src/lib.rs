//! Setup shared by the jobledger crates' tests, so each test file says only what it tests.
//!
//! - [`moto`] (feature `moto`): clients for the moto server `scripts/with-moto` starts, fresh
//!   resource names, the events table with its deployed key schema, seeding and reading its items.
//! - [`streams`] (feature `streams`): a DynamoDB stream read back as the Lambda event a function
//!   receives, and items turned into that event's JSON images.
//! - [`http`] (feature `http`): a local HTTP server that answers from a script and records every
//!   request (model APIs, throttling endpoints, Slack).
//!
//! A dev-dependency only: helpers panic on failure, which is how a test fails.

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "moto")]
pub mod moto;
#[cfg(feature = "streams")]
pub mod streams;
