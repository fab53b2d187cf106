//! Calling a model robustly: a timeout per call, retries with exponential backoff on throttling
//! and server errors (honouring `Retry-After`, with a cap on the total wait), and a concurrency
//! limit per backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why one model call failed, classified for retrying.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    /// 429 / `ThrottlingException`: retried after `retry_after` (or backoff).
    #[error("throttled by the model API")]
    Throttled {
        /// What the server asked for.
        retry_after: Option<Duration>,
    },
    /// 5xx / `ServiceUnavailableException` / `InternalServerException`: retried.
    #[error("model API server error: {message}")]
    Server {
        /// Status and body excerpt.
        message: String,
        /// What the server asked for.
        retry_after: Option<Duration>,
    },
    /// The call took longer than the per-call timeout: retried.
    #[error("model call timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed: retried.
    #[error("cannot reach the model API: {0}")]
    Transport(String),
    /// The request was refused because of this item (400, `ValidationException`): the item fails.
    #[error("the model API refused the item: {0}")]
    Rejected(String),
    /// Configuration or permission (401, 403, 404): no retry helps, the attempt fails.
    #[error("model API: {0}")]
    Fatal(String),
}

impl CallError {
    fn transient(&self) -> bool {
        matches!(
            self,
            CallError::Throttled { .. }
                | CallError::Server { .. }
                | CallError::Timeout(_)
                | CallError::Transport(_)
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Throttled { retry_after } | CallError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Parses a `Retry-After` value: delay seconds (HTTP-date values are rare from model APIs and are
/// treated as absent, so backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// How a backend calls its model.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    /// Longest one call may take.
    pub timeout: Duration,
    /// Retries after the first try.
    pub max_retries: u32,
    /// First backoff delay; doubled each retry.
    pub base_delay: Duration,
    /// Most time spent waiting between tries for one item (a longer `Retry-After` gives up).
    pub max_total_wait: Duration,
    /// Calls in flight at once, shared by every item of the process.
    pub permits: Arc<Semaphore>,
}

impl CallPolicy {
    /// A policy with `max_concurrency` permits and the given timeout, retries and wait cap.
    pub fn new(
        timeout: Duration,
        max_concurrency: usize,
        max_retries: u32,
        max_total_wait: Duration,
    ) -> CallPolicy {
        CallPolicy {
            timeout,
            max_retries,
            base_delay: Duration::from_millis(500),
            max_total_wait,
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    /// Runs `call` under the concurrency limit and the timeout, retrying transient failures.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut waited = Duration::ZERO;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = {
                // The permit is held only during the call, never while backing off, so a throttled
                // item does not block others that may succeed.
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| CallError::Fatal("backend closed".into()))?;
                match tokio::time::timeout(self.timeout, call()).await {
                    Ok(r) => r,
                    Err(_) => Err(CallError::Timeout(self.timeout)),
                }
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if e.transient() && tries <= self.max_retries => e,
                Err(e) => return Err(e),
            };
            let backoff = self.base_delay.saturating_mul(1 << (tries - 1).min(16));
            // Jitter spreads retries of concurrent items so they do not hit the API together.
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
            let delay = err.retry_after().unwrap_or(backoff + jitter);
            if waited + delay > self.max_total_wait {
                tracing::warn!(error = %err, ?delay, ?waited, "giving up: retry wait cap reached");
                return Err(err);
            }
            tracing::info!(error = %err, ?delay, try_ = tries, "retrying model call");
            tokio::time::sleep(delay).await;
            waited += delay;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(retries: u32, cap_ms: u64) -> CallPolicy {
        CallPolicy {
            base_delay: Duration::from_millis(5),
            ..CallPolicy::new(
                Duration::from_millis(200),
                2,
                retries,
                Duration::from_millis(cap_ms),
            )
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_fatal_ones_are_not() {
        let n = AtomicU32::new(0);
        let out = policy(3, 1000)
            .run(|| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k < 2 {
                        Err(CallError::Server {
                            message: "503".into(),
                            retry_after: None,
                        })
                    } else {
                        Ok(k)
                    }
                }
            })
            .await;
        assert_eq!(out, Ok(2));
        let n = AtomicU32::new(0);
        let out: Result<(), _> = policy(3, 1000)
            .run(|| {
                n.fetch_add(1, Ordering::SeqCst);
                async { Err(CallError::Fatal("401".into())) }
            })
            .await;
        assert_eq!(out, Err(CallError::Fatal("401".into())));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_wait_cap_gives_up_at_once() {
        let n = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let out: Result<(), _> = policy(5, 100)
            .run(|| {
                n.fetch_add(1, Ordering::SeqCst);
                async {
                    Err(CallError::Throttled {
                        retry_after: Some(Duration::from_secs(30)),
                    })
                }
            })
            .await;
        assert!(matches!(out, Err(CallError::Throttled { .. })));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_slow_call_times_out() {
        let out: Result<(), _> = policy(0, 0)
            .run(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert_eq!(out, Err(CallError::Timeout(Duration::from_millis(200))));
    }
}
