//! The `Sink` port: one notification target, driven one external call at a time so its state can
//! be recorded after every call (what a crash repeats depends on how the state store writes it:
//! the `jobledger dev` loop writes a created object's id at once and the rest once per batch).

use std::future::Future;

use chrono::{DateTime, Utc};
use jobledger_projections::JobView;
use jobledger_projections::notify::ResultLink;

use super::error::NotifyError;
use super::state::SinkState;

/// Which events a sink reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOn {
    /// Only events that end the job (`SUCCEEDED`, `FAILED`, `CANCELLED`).
    Terminal,
    /// Submission and every change of status.
    StatusChange,
    /// Every event, progress reports included.
    Every,
}

impl NotifyOn {
    /// Parses `terminal`, `status` or `all`.
    pub fn parse(s: &str) -> Option<NotifyOn> {
        match s.trim().to_ascii_lowercase().as_str() {
            "terminal" => Some(NotifyOn::Terminal),
            "status" => Some(NotifyOn::StatusChange),
            "all" => Some(NotifyOn::Every),
            _ => None,
        }
    }

    /// Whether the step from `before` (none for the first event) to `after` is worth a notification.
    pub fn matches(&self, before: Option<&JobView>, after: &JobView) -> bool {
        let changed = before.is_none_or(|b| b.status != after.status);
        match self {
            NotifyOn::Terminal => changed && after.status.is_terminal(),
            NotifyOn::StatusChange => changed,
            NotifyOn::Every => true,
        }
    }
}

/// What a sink renders: the job as of one version, the results link, and now.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The job as of the delivered version.
    pub view: &'a JobView,
    /// The presigned results link, for a succeeded job (if the sink asked for one).
    pub link: Option<&'a ResultLink>,
    /// When the delivery is rendered.
    pub now: DateTime<Utc>,
}

/// A notification target.
pub trait Sink: Send + Sync {
    /// Stable name: the state key and, as `notify-<name>`, the change-feed consumer.
    fn name(&self) -> &str;

    /// Which events it reacts to.
    fn on(&self) -> NotifyOn;

    /// Whether the job wants this sink (its `notify` opt-outs).
    fn wants(&self, view: &JobView) -> bool;

    /// Whether it shows a presigned results link.
    fn needs_link(&self) -> bool {
        false
    }

    /// Makes at most one external call towards showing `delivery` and returns the state after it,
    /// or `None` when nothing is left to do for this delivery.
    fn step(
        &self,
        delivery: &Delivery<'_>,
        state: &SinkState,
    ) -> impl Future<Output = Result<Option<SinkState>, NotifyError>> + Send;
}
