//! The notifier of `jobledger dev`: one loop per sink, each following the change feed with its own
//! checkpoint (`notify-<sink>`), so a failing sink never holds back another sink, the projector or
//! the dispatcher. Also the dead-letter redrive the CLI calls.

use std::sync::Arc;
use std::time::Duration;

use jobledger_events::store::{ChangeFeed, EventStore};
use jobledger_projections::JobView;
use jobledger_workers::ObjectStore;
use tokio::sync::watch;

use super::clock::{NotifyClock, SystemClock};
use super::config::{ConfigError, NotifierConfig, RetryPolicy};
use super::console::ConsoleSink;
use super::core::{NotifyEnv, Outcome, ViewCache, notify_one};
use super::error::NotifyError;
use super::http::{HttpSender, RateLimiter};
use super::notion::{NOTION_REQUESTS_PER_SECOND, NotionSink};
use super::sink::{Delivery, NotifyOn, Sink};
use super::slack::{SlackBotSink, SlackWebhookSink};
use super::state::{DeadLetterStore, NewDeadLetter, NotifyStateStore, SinkState, StateBuffer};

/// Feed events read per batch by a sink loop.
pub const FEED_BATCH: usize = 100;
/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Any configured sink (one type, so a notifier can hold a list of them).
#[derive(Clone, Debug)]
pub enum AnySink {
    /// Console lines.
    Console(ConsoleSink),
    /// Slack incoming webhook.
    SlackWebhook(SlackWebhookSink),
    /// Slack bot.
    SlackBot(SlackBotSink),
    /// Notion database.
    Notion(NotionSink),
}

impl Sink for AnySink {
    fn name(&self) -> &str {
        match self {
            AnySink::Console(s) => s.name(),
            AnySink::SlackWebhook(s) => s.name(),
            AnySink::SlackBot(s) => s.name(),
            AnySink::Notion(s) => s.name(),
        }
    }

    fn on(&self) -> NotifyOn {
        match self {
            AnySink::Console(s) => s.on(),
            AnySink::SlackWebhook(s) => s.on(),
            AnySink::SlackBot(s) => s.on(),
            AnySink::Notion(s) => s.on(),
        }
    }

    fn wants(&self, view: &JobView) -> bool {
        match self {
            AnySink::Console(s) => s.wants(view),
            AnySink::SlackWebhook(s) => s.wants(view),
            AnySink::SlackBot(s) => s.wants(view),
            AnySink::Notion(s) => s.wants(view),
        }
    }

    fn needs_link(&self) -> bool {
        match self {
            AnySink::Console(s) => s.needs_link(),
            AnySink::SlackWebhook(s) => s.needs_link(),
            AnySink::SlackBot(s) => s.needs_link(),
            AnySink::Notion(s) => s.needs_link(),
        }
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        match self {
            AnySink::Console(s) => s.step(d, state).await,
            AnySink::SlackWebhook(s) => s.step(d, state).await,
            AnySink::SlackBot(s) => s.step(d, state).await,
            AnySink::Notion(s) => s.step(d, state).await,
        }
    }
}

/// The change-feed consumer name of a sink.
pub fn consumer_name(sink: &str) -> String {
    format!("notify-{sink}")
}

/// The configured sinks and how they are driven.
#[derive(Clone)]
pub struct Notifier {
    /// The sinks, each run by its own loop.
    pub sinks: Vec<AnySink>,
    /// Now and sleeping (backoff, rate limiting).
    pub clock: Arc<dyn NotifyClock>,
    /// Validity of results links.
    pub link_ttl: Duration,
    /// Record retries and dead-lettering.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("sinks", &self.sinks)
            .field("link_ttl", &self.link_ttl)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Why a dead letter could not be redriven.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// No dead letter has that id.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// The dead letter's sink is not configured in this notifier.
    #[error("sink {0} is not configured")]
    SinkNotConfigured(String),
    /// The ledger no longer holds the event.
    #[error("job {job_id} has no version {version}")]
    EventMissing {
        /// The job.
        job_id: jobledger_events::JobId,
        /// The version.
        version: u64,
    },
    /// Delivering failed again (the dead letter stays, with one more try counted).
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

impl Notifier {
    /// Builds the sinks `config` names (the console sink when it names none).
    pub fn from_config(
        config: &NotifierConfig,
        clock: Arc<dyn NotifyClock>,
    ) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ConfigError::Invalid {
                var: "HTTP client",
                message: e.to_string(),
            })?;
        let sender = |service, limiter| {
            HttpSender::new(
                service,
                client.clone(),
                Arc::clone(&clock),
                config.http,
                limiter,
            )
        };
        let mut sinks = Vec::new();
        if let Some(url) = &config.slack_webhook_url {
            sinks.push(AnySink::SlackWebhook(SlackWebhookSink::new(
                sender("slack", None),
                url.clone(),
                config.webhook_on,
            )));
        }
        if let Some(bot) = &config.slack_bot {
            sinks.push(AnySink::SlackBot(SlackBotSink::new(
                sender("slack", None),
                bot.token.clone(),
                bot.channel.clone(),
                bot.api_base.clone(),
                config.bot_on,
            )));
        }
        if let Some(notion) = &config.notion {
            sinks.push(AnySink::Notion(NotionSink::new(
                sender(
                    "notion",
                    Some(RateLimiter::per_second(NOTION_REQUESTS_PER_SECOND)),
                ),
                notion.token.clone(),
                notion.database_id.clone(),
                notion.api_base.clone(),
                config.notion_on,
            )));
        }
        if sinks.is_empty() {
            sinks.push(AnySink::Console(ConsoleSink::new(NotifyOn::StatusChange)));
        }
        Ok(Notifier {
            sinks,
            clock,
            link_ttl: config.link_ttl,
            retry: config.retry,
        })
    }

    /// Reads the environment and builds the sinks with the system clock.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_config(&NotifierConfig::from_env()?, Arc::new(SystemClock))
    }

    /// Delivers a dead letter again now; on success it leaves the list. A record older than what the
    /// sink has shown since is simply dropped from the list: the sink already shows a later state.
    pub async fn redrive<S, N, O>(
        &self,
        store: &S,
        states: &N,
        objects: &O,
        id: i64,
    ) -> Result<Outcome, RedriveError>
    where
        S: EventStore,
        N: NotifyStateStore + DeadLetterStore,
        O: ObjectStore,
    {
        let letters = states.list(None).await.map_err(NotifyError::from)?;
        let letter = letters
            .into_iter()
            .find(|l| l.id == id)
            .ok_or(RedriveError::NotFound(id))?;
        let sink = self
            .sinks
            .iter()
            .find(|s| s.name() == letter.sink)
            .ok_or_else(|| RedriveError::SinkNotConfigured(letter.sink.clone()))?;
        let history = store.load(letter.job_id).await.map_err(NotifyError::from)?;
        let event = history.iter().find(|e| e.version == letter.version).ok_or(
            RedriveError::EventMissing {
                job_id: letter.job_id,
                version: letter.version,
            },
        )?;
        let env = NotifyEnv {
            store,
            states,
            objects,
            clock: self.clock.as_ref(),
            link_ttl: self.link_ttl,
        };
        match notify_one(&env, sink, &mut ViewCache::default(), event).await {
            Ok(outcome) => {
                states.remove(id).await.map_err(NotifyError::from)?;
                Ok(outcome)
            }
            Err(e) => {
                let again = NewDeadLetter {
                    sink: letter.sink,
                    job_id: letter.job_id,
                    version: letter.version,
                    event_id: letter.event_id,
                    seq: letter.seq,
                    error: e.to_string(),
                    tries: 1,
                    failed_at: self.clock.now(),
                };
                if let Err(add) = states.add(again).await {
                    tracing::warn!(error = %add, id, "cannot count a failed redrive");
                }
                Err(e.into())
            }
        }
    }
}

/// Runs every sink of `notifier`, each in its own task, until `shutdown` turns true.
///
/// `jobledger dev` calls it with its ledger, object store and a `SqliteNotifyStore`; a sink loop
/// that cannot even read its checkpoint logs the error and stops without touching the others.
pub async fn run_notifier<S, N, O>(
    store: S,
    objects: O,
    states: N,
    notifier: Notifier,
    shutdown: watch::Receiver<bool>,
) where
    S: EventStore + ChangeFeed + Clone + 'static,
    N: NotifyStateStore + DeadLetterStore + Clone + 'static,
    O: ObjectStore + Clone + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for sink in notifier.sinks.clone() {
        let (store, objects, states, rx) = (
            store.clone(),
            objects.clone(),
            states.clone(),
            shutdown.clone(),
        );
        let (clock, link_ttl, retry) = (
            Arc::clone(&notifier.clock),
            notifier.link_ttl,
            notifier.retry,
        );
        tasks.spawn(async move {
            let env = NotifyEnv {
                store: &store,
                states: &states,
                objects: &objects,
                clock: clock.as_ref(),
                link_ttl,
            };
            if let Err(e) = run_sink(&env, &sink, &retry, rx).await {
                tracing::error!(sink = sink.name(), error = %e, "notifier sink stopped");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Follows the change feed for one sink until `shutdown` turns true (or its sender is dropped).
///
/// Records are delivered in feed order. A failing record is retried with backoff
/// ([`RetryPolicy::backoff`] on the notifier's clock) and holds back only this sink; after
/// `max_tries` tries, or at once when retrying cannot help, it goes to the dead-letter list and the
/// loop moves on. Sink states go through a [`StateBuffer`]: written once per batch, before the
/// checkpoint moves past their records. Returns an error only if the checkpoint cannot be read at
/// start.
pub async fn run_sink<S, N, O, K>(
    env: &NotifyEnv<'_, S, N, O>,
    sink: &K,
    retry: &RetryPolicy,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NotifyError>
where
    S: EventStore + ChangeFeed,
    N: NotifyStateStore + DeadLetterStore,
    O: ObjectStore,
    K: Sink,
{
    let consumer = consumer_name(sink.name());
    let mut checkpoint = env.store.checkpoint(&consumer).await?;
    // States are written once per batch, before the checkpoint that moves past their records.
    let states = StateBuffer::new(env.states, sink.name());
    let env = &NotifyEnv {
        store: env.store,
        states: &states,
        objects: env.objects,
        clock: env.clock,
        link_ttl: env.link_ttl,
    };
    // (feed position, tries) of the record that failed last.
    let mut failing: (u64, u32) = (0, 0);
    let mut cache = ViewCache::default();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let feed = match env.store.read_after(checkpoint, FEED_BATCH).await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(sink = sink.name(), error = %e, "notifier cannot read the change feed");
                failing = (checkpoint + 1, failing.1 + 1);
                if pause(env.clock, retry.backoff(failing.1), &mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        if feed.is_empty() {
            tokio::select! {
                _ = env.store.wait_after(checkpoint) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            continue;
        }
        let mut stalled = false;
        for f in &feed {
            match notify_one(env, sink, &mut cache, &f.event).await {
                Ok(outcome) => {
                    tracing::debug!(sink = sink.name(), job_id = %f.event.job_id, version = f.event.version, ?outcome, "notified");
                    checkpoint = f.seq;
                }
                Err(error) => {
                    let tries = if failing.0 == f.seq { failing.1 + 1 } else { 1 };
                    failing = (f.seq, tries);
                    if error.is_retryable() && tries < retry.max_tries {
                        tracing::warn!(sink = sink.name(), job_id = %f.event.job_id, version = f.event.version,
                            tries, error = %error, "notification will be retried");
                        stalled = true;
                        break;
                    }
                    let letter = NewDeadLetter {
                        sink: sink.name().to_string(),
                        job_id: f.event.job_id,
                        version: f.event.version,
                        event_id: f.event.event_id,
                        seq: f.seq,
                        error: error.to_string(),
                        tries,
                        failed_at: env.clock.now(),
                    };
                    if let Err(e) = env.states.add(letter).await {
                        // Moving on without the record listed would lose it: try again later.
                        tracing::warn!(sink = sink.name(), error = %e, "cannot dead-letter a notification");
                        stalled = true;
                        break;
                    }
                    tracing::error!(sink = sink.name(), job_id = %f.event.job_id, version = f.event.version,
                        tries, error = %error, "notification dead-lettered");
                    checkpoint = f.seq;
                }
            }
        }
        // The position is also kept in memory: a failed save only means replaying a little after a
        // restart, which the per-job state turns into no calls. States not flushed keep the saved
        // position behind their records, so a crash re-sends them rather than losing them.
        match states.flush().await {
            Ok(_) => {
                if let Err(e) = env.store.save_checkpoint(&consumer, checkpoint).await {
                    tracing::warn!(sink = sink.name(), error = %e, "notifier cannot save its checkpoint");
                }
            }
            Err(e) => {
                tracing::warn!(sink = sink.name(), error = %e, pending = states.pending(), "notifier cannot save its sink states; will retry");
                failing = (checkpoint, failing.1 + 1);
                stalled = true;
            }
        }
        if stalled && pause(env.clock, retry.backoff(failing.1), &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Sleeps for `delay` on the notifier's clock; returns true if shutdown was asked for meanwhile.
async fn pause(
    clock: &dyn NotifyClock,
    delay: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = clock.sleep(delay) => {}
        _ = shutdown.wait_for(|stop| *stop) => return true,
    }
    *shutdown.borrow()
}
