//! Where the notifier's time comes from: "now" for rendering and rate limiting, and sleeping for
//! backoff. Behind a trait so tests can run a 10-minute outage without waiting 10 minutes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A boxed sleep, so the clock can be shared as `Arc<dyn NotifyClock>`.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Time for the notifier: wall-clock now and a sleep on the same clock.
pub trait NotifyClock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// The real clock: `Utc::now` and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl NotifyClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}
