//! The loops `jobledger dev` spawns to run the pipeline cores locally: the dispatcher follows the
//! change feed, the launcher drains the work queue, the sweeper times out lost attempts.
//!
//! Each loop runs until its `shutdown` future resolves, and survives errors by logging them and
//! trying again with a capped backoff: every step is idempotent, so cutting one short (shutdown) or
//! repeating it (after an error) is safe.

use std::future::Future;
use std::time::Duration;

use jobledger_events::{ChangeFeed, EventStore};

use crate::dispatch::{DispatchPolicy, StreamRecord, dispatch_batch_with};
use crate::launch::{LaunchPolicy, MessageResult, launch_groups};
use crate::ports::{JobQueue, QueueError, TaskLauncher, TimeSource};
use crate::sweep::{CandidateSource, SweepPolicy, sweep};

/// The dispatcher's consumer name for its change-feed checkpoint.
pub const DISPATCHER: &str = "dispatcher";

/// First pause after a failed step; doubled per failure in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Settings of [`run_dispatcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// The change-feed consumer whose checkpoint is kept.
    pub consumer: String,
    /// Feed events per batch.
    pub batch_size: usize,
    /// How long to wait, once new events arrive at the end of the feed, for more to join them:
    /// each round's messages share one durable queue transaction.
    pub linger: Duration,
    /// How the dispatch core learns job states (the local queue keeps deduplication ids after a
    /// delete, so fresh submissions need not be loaded).
    pub policy: DispatchPolicy,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            consumer: DISPATCHER.to_string(),
            // Most feed events are not requests; a large page gives each round many jobs to share
            // one queue transaction and the ledger's group commits.
            batch_size: 1000,
            linger: Duration::from_millis(2),
            policy: DispatchPolicy {
                trust_fresh_submissions: true,
            },
        }
    }
}

/// Follows the change feed from the consumer's checkpoint and dispatches each batch, saving the
/// checkpoint only past records that succeeded; a failed record is retried, in order, after a pause.
pub async fn run_dispatcher<S, Q, T>(
    store: &S,
    queue: &Q,
    time: &T,
    config: &DispatcherConfig,
    shutdown: impl Future<Output = ()>,
) where
    S: EventStore + ChangeFeed,
    Q: JobQueue,
    T: TimeSource + ?Sized,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut position: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let step = async {
            let from = match position {
                Some(seq) => seq,
                None => {
                    let seq = store.checkpoint(&config.consumer).await?;
                    position = Some(seq);
                    seq
                }
            };
            let page = store.read_after(from, config.batch_size.max(1)).await?;
            if page.is_empty() {
                store.wait_after(from).await;
                tokio::time::sleep(config.linger).await;
                return Ok(true);
            }
            let seqs: Vec<u64> = page.iter().map(|f| f.seq).collect();
            let records: Vec<StreamRecord> = page.into_iter().map(StreamRecord::from).collect();
            let report =
                dispatch_batch_with(store, queue, &records, time.now(), config.policy).await;
            if let Some(&seq) = report.succeeded.checked_sub(1).and_then(|i| seqs.get(i)) {
                store.save_checkpoint(&config.consumer, seq).await?;
                position = Some(seq);
            }
            match report.error {
                None => Ok(true),
                Some(e) => {
                    tracing::warn!(consumer = config.consumer, record = ?report.failed_ids.first(), error = %e, "dispatch failed; will retry");
                    Ok(false)
                }
            }
        };
        let ok = tokio::select! {
            _ = shutdown.as_mut() => return,
            result = step => result.unwrap_or_else(|e: jobledger_events::StoreError| {
                tracing::warn!(consumer = config.consumer, error = %e, "change feed failed; will retry");
                false
            }),
        };
        if !pause_after(ok, &mut failures, shutdown.as_mut()).await {
            return;
        }
    }
}

/// After a step: reset the failure count, or sleep a backoff. `false` if shutdown came first.
async fn pause_after(
    ok: bool,
    failures: &mut u32,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    if ok {
        *failures = 0;
        return true;
    }
    *failures += 1;
    tokio::select! {
        _ = shutdown => false,
        _ = tokio::time::sleep(backoff(*failures)) => true,
    }
}

/// Settings of [`run_launcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LauncherConfig {
    /// Messages per receive (at most the queue's [`JobQueue::max_receive`]: 10 on SQS).
    pub batch_size: usize,
    /// How long a received message stays hidden while it is handled; a message whose launch failed
    /// comes back after this.
    pub visibility: Duration,
    /// Long-polling wait per receive.
    pub wait: Duration,
    /// The launch core's policy.
    pub policy: LaunchPolicy,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            batch_size: 10,
            visibility: Duration::from_secs(60),
            wait: Duration::from_secs(20),
            policy: LaunchPolicy::default(),
        }
    }
}

/// Receives work messages and launches them, different jobs concurrently (see
/// [`launch_groups`]): messages handled are deleted in one batch, one that stopped its job's group
/// stays hidden (until its `not_before`, or for the visibility timeout after a failure), and the
/// group's later messages, never tried, are returned to the queue at once.
pub async fn run_launcher<S, Q, L, T>(
    store: &S,
    queue: &Q,
    launcher: &L,
    time: &T,
    config: &LauncherConfig,
    shutdown: impl Future<Output = ()>,
) where
    S: EventStore,
    Q: JobQueue,
    L: TaskLauncher,
    T: TimeSource + ?Sized,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let step = async {
            let messages = queue
                .receive(
                    config.batch_size.clamp(1, queue.max_receive().max(1)),
                    config.visibility,
                    config.wait,
                )
                .await?;
            if messages.is_empty() {
                return Ok::<_, QueueError>(true);
            }
            let results =
                launch_groups(store, queue, launcher, &messages, time, &config.policy).await;
            let mut handled = Vec::new();
            let mut untried = Vec::new();
            for (m, result) in messages.iter().zip(results) {
                match result {
                    MessageResult::Done => handled.push(m.receipt_handle.clone()),
                    MessageResult::Untried => untried.push(m),
                    MessageResult::Failed(error) if error.is_fault() => {
                        tracing::warn!(message_id = m.message_id, %error, "launch failed; message kept for redelivery")
                    }
                    MessageResult::Failed(error) => tracing::info!(%error, "launch deferred"),
                }
            }
            // One transaction for the whole batch. A receipt no longer current means the message
            // was delivered again meanwhile (a long launch): that delivery is skipped by the core.
            let deleted = queue.delete_batch(&handled).await?;
            if deleted < handled.len() {
                tracing::debug!(
                    stale = handled.len() - deleted,
                    "messages were delivered again before their delete"
                );
            }
            for m in untried {
                if let Err(e) = queue
                    .change_visibility(&m.receipt_handle, Duration::ZERO)
                    .await
                {
                    tracing::debug!(message_id = m.message_id, error = %e, "cannot return untried message");
                }
            }
            Ok(true)
        };
        let ok = tokio::select! {
            _ = shutdown.as_mut() => return,
            result = step => result.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "work queue failed; will retry");
                false
            }),
        };
        if !pause_after(ok, &mut failures, shutdown.as_mut()).await {
            return;
        }
    }
}

/// Settings of [`run_sweeper`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweeperConfig {
    /// Time between sweeps.
    pub every: Duration,
    /// The sweep core's policy.
    pub policy: SweepPolicy,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            every: Duration::from_secs(30),
            policy: SweepPolicy::default(),
        }
    }
}

/// Sweeps the candidates every `config.every` (the first sweep after one period).
pub async fn run_sweeper<S, C, T>(
    store: &S,
    source: &C,
    time: &T,
    config: &SweeperConfig,
    shutdown: impl Future<Output = ()>,
) where
    S: EventStore,
    C: CandidateSource,
    T: TimeSource + ?Sized,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + config.every, config.every);
    // After a long pause (a laptop asleep), sweep once, not once per missed tick.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = async {
            ticks.tick().await;
            let candidates = match source.candidates().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sweep candidates; will retry");
                    return;
                }
            };
            let report = sweep(store, &candidates, &config.policy, time).await;
            for (job_id, e) in &report.errors {
                tracing::warn!(%job_id, error = %e, "sweep failed for job; will retry");
            }
        };
        tokio::select! {
            _ = shutdown.as_mut() => return,
            () = step => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
