//! The notifier core: one record, one sink. Exactly once in effect: the sink's per-job state says
//! which version it last delivered, so a duplicate, an old record or a replay changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use jobledger_events::store::EventStore;
use jobledger_events::{JobId, RecordedEvent, Status};
use jobledger_projections::JobView;
use jobledger_projections::notify::ResultLink;
use jobledger_workers::ObjectStore;

use super::clock::NotifyClock;
use super::error::NotifyError;
use super::sink::{Delivery, Sink};
use super::state::NotifyStateStore;

/// Most external calls one delivery may take (create, adopt, update, reply); a bound against a
/// sink that never settles.
const MAX_STEPS: u32 = 8;
/// Views kept between records before the cache is dropped.
const CACHE_LIMIT: usize = 10_000;

/// What a notifier core works with.
pub struct NotifyEnv<'a, S, N, O> {
    /// The ledger (histories are folded from it, never from arrival order).
    pub store: &'a S,
    /// The sinks' per-job state.
    pub states: &'a N,
    /// Where results are, for presigned links.
    pub objects: &'a O,
    /// Now and sleeping.
    pub clock: &'a dyn NotifyClock,
    /// How long a results link stays valid.
    pub link_ttl: Duration,
}

/// What one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rendered and sent, with this many external calls.
    Delivered {
        /// External calls made.
        calls: u32,
    },
    /// At or below the last version delivered: a duplicate, an old record or a replay.
    AlreadyDelivered,
    /// The job opted out of this sink.
    OptedOut,
    /// The sink does not react to this event.
    NotNotable,
}

/// Views of recently seen jobs at their last folded version, so consecutive records of a job do
/// not reload its history.
#[derive(Debug, Default)]
pub struct ViewCache(HashMap<JobId, JobView>);

/// The job's view before and after `event`, from the cache when it is one version behind, else
/// folded from the ledger.
async fn views_around<S: EventStore>(
    store: &S,
    cache: &mut ViewCache,
    event: &RecordedEvent,
) -> Result<(Option<JobView>, JobView), NotifyError> {
    if let Some(before) = cache.0.remove(&event.job_id)
        && before.last_version + 1 == event.version
        && let Some(after) = JobView::apply(Some(before.clone()), event)?
    {
        return Ok((Some(before), after));
    }
    let history = store.load(event.job_id).await?;
    let head = history.last().map_or(0, |e| e.version);
    let n = usize::try_from(event.version).unwrap_or(usize::MAX);
    let behind = NotifyError::Behind {
        job_id: event.job_id,
        version: event.version,
        head,
    };
    if head < event.version || n == 0 {
        return Err(behind);
    }
    let before = JobView::fold(&history[..n - 1])?;
    match JobView::fold(&history[..n])? {
        Some(after) => Ok((before, after)),
        None => Err(behind),
    }
}

/// Delivers one record to one sink.
///
/// The job's view as of the record's version is rendered (order comes from `version`, never from
/// arrival). The sink's state is saved after every external call, and `last_version` at the end.
pub async fn notify_one<S, N, O, K>(
    env: &NotifyEnv<'_, S, N, O>,
    sink: &K,
    cache: &mut ViewCache,
    event: &RecordedEvent,
) -> Result<Outcome, NotifyError>
where
    S: EventStore,
    N: NotifyStateStore,
    O: ObjectStore,
    K: Sink,
{
    let mut state = env.states.get(sink.name(), event.job_id).await?;
    if event.version <= state.last_version {
        return Ok(Outcome::AlreadyDelivered);
    }
    let (before, after) = views_around(env.store, cache, event).await?;
    if cache.0.len() >= CACHE_LIMIT {
        cache.0.clear();
    }
    // A finished job rarely gets another event: only unfinished jobs' views stay in memory.
    if !after.status.is_terminal() {
        cache.0.insert(after.job_id, after.clone());
    }
    if !sink.wants(&after) {
        return Ok(Outcome::OptedOut);
    }
    if !sink.on().matches(before.as_ref(), &after) {
        return Ok(Outcome::NotNotable);
    }
    let now = env.clock.now();
    let link = match (
        &after.result_uri,
        sink.needs_link() && after.status == Status::Succeeded,
    ) {
        (Some(uri), true) => match env.objects.presign_get(uri, env.link_ttl).await {
            Ok(url) => Some(ResultLink {
                url,
                expires_in: chrono::Duration::from_std(env.link_ttl)
                    .unwrap_or(chrono::Duration::zero()),
            }),
            Err(e) => {
                // The message is still worth sending; it just has no button.
                tracing::warn!(job_id = %after.job_id, error = %e, "no results link for the notification");
                None
            }
        },
        _ => None,
    };
    let delivery = Delivery {
        view: &after,
        link: link.as_ref(),
        now,
    };
    let mut calls = 0;
    while calls < MAX_STEPS {
        match sink.step(&delivery, &state).await? {
            Some(next) => {
                calls += 1;
                env.states.put(sink.name(), event.job_id, &next).await?;
                state = next;
            }
            None => break,
        }
    }
    state.last_version = event.version;
    env.states.put(sink.name(), event.job_id, &state).await?;
    Ok(Outcome::Delivered { calls })
}
