//! HTTP to Slack and Notion: secrets that never print, retries of 429 (honouring `Retry-After`),
//! 5xx and transport errors with capped exponential backoff, and a client-side rate limiter.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;

use super::clock::NotifyClock;
use super::error::NotifyError;

/// A token or secret URL. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Retries of one HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRetry {
    /// Tries of one request, the first included.
    pub tries: u32,
    /// Pause after the first failure; doubled per failure.
    pub base: Duration,
    /// Longest pause between tries.
    pub cap: Duration,
    /// Longest `Retry-After` waited for in place; a longer one fails the request (retryable), and
    /// the record is retried later by the sink's loop.
    pub max_retry_after: Duration,
}

impl Default for HttpRetry {
    fn default() -> Self {
        HttpRetry {
            tries: 4,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Spaces requests at least `interval` apart, counted from the previous request's start and from
/// its answer, so requests never reach the service closer than `interval` whatever the network
/// delays (Notion allows an average of about 3 requests per second).
pub struct RateLimiter {
    interval: chrono::Duration,
    next: Mutex<Option<DateTime<Utc>>>,
}

impl RateLimiter {
    /// At most `per_second` request starts per second.
    pub fn per_second(per_second: u32) -> Self {
        let ms = 1000 / i64::from(per_second.max(1)) + 1;
        RateLimiter {
            interval: chrono::Duration::milliseconds(ms),
            next: Mutex::new(None),
        }
    }

    /// Waits for this caller's slot.
    async fn acquire(&self, clock: &dyn NotifyClock) {
        let now = clock.now();
        let wait = match self.next.lock() {
            Ok(mut next) => {
                let start = next.map_or(now, |n| n.max(now));
                *next = Some(start + self.interval);
                start - now
            }
            // A poisoned lock only loses spacing; Notion's own 429s still slow us down.
            Err(_) => chrono::Duration::zero(),
        };
        if let Ok(wait) = wait.to_std()
            && !wait.is_zero()
        {
            clock.sleep(wait).await;
        }
    }

    /// Records that a request got its answer (or failed): the next one waits `interval` from now.
    fn finished(&self, clock: &dyn NotifyClock) {
        let done = clock.now() + self.interval;
        if let Ok(mut next) = self.next.lock() {
            *next = Some(next.map_or(done, |n| n.max(done)));
        }
    }
}

/// A response worth looking at: anything but 429, 5xx and transport errors (those are retried).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as text.
    pub body: String,
}

/// Sends requests with retries on one service's behalf.
#[derive(Clone)]
pub struct HttpSender {
    service: &'static str,
    client: reqwest::Client,
    clock: Arc<dyn NotifyClock>,
    retry: HttpRetry,
    limiter: Option<Arc<RateLimiter>>,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender")
            .field("service", &self.service)
            .field("retry", &self.retry)
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

/// Seconds of a `Retry-After` header (Slack and Notion send whole seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl HttpSender {
    /// A sender for `service` ("slack", "notion"), optionally rate limited.
    pub fn new(
        service: &'static str,
        client: reqwest::Client,
        clock: Arc<dyn NotifyClock>,
        retry: HttpRetry,
        limiter: Option<RateLimiter>,
    ) -> Self {
        HttpSender {
            service,
            client,
            clock,
            retry,
            limiter: limiter.map(Arc::new),
        }
    }

    /// Sends the request `build` makes (once per try), retrying 429, 5xx and transport errors.
    /// Any other status is returned for the caller to interpret.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Reply, NotifyError> {
        let mut tries = 0;
        loop {
            tries += 1;
            if let Some(limiter) = &self.limiter {
                limiter.acquire(self.clock.as_ref()).await;
            }
            let backoff = self
                .retry
                .base
                .saturating_mul(1 << (tries - 1).min(16))
                .min(self.retry.cap);
            let sent = build(&self.client).send().await;
            if let Some(limiter) = &self.limiter {
                limiter.finished(self.clock.as_ref());
            }
            let (error, wait) = match sent {
                Err(e) => {
                    // The URL can hold a secret (a webhook's path): it is dropped from the message.
                    let error = NotifyError::Transport {
                        service: self.service,
                        message: e.without_url().to_string(),
                    };
                    (error, backoff)
                }
                Ok(response) => {
                    let status = response.status();
                    let after = retry_after(response.headers());
                    let body = response.text().await.unwrap_or_default();
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Ok(Reply { status, body });
                    }
                    let error = NotifyError::Remote {
                        service: self.service,
                        status: status.as_u16(),
                        code: if status == StatusCode::TOO_MANY_REQUESTS {
                            "rate_limited".into()
                        } else {
                            "server_error".into()
                        },
                        message: body.chars().take(300).collect(),
                        retryable: true,
                    };
                    match after {
                        Some(after) if after > self.retry.max_retry_after => return Err(error),
                        Some(after) => (error, after),
                        None => (error, backoff),
                    }
                }
            };
            if tries >= self.retry.tries {
                return Err(error);
            }
            tracing::debug!(service = self.service, tries, ?wait, error = %error, "retrying a request");
            self.clock.sleep(wait).await;
        }
    }
}
