//! The console sink: one line on stdout per job status change, when no other sink is configured.

use jobledger_projections::JobView;
use jobledger_projections::notify::console_line;

use super::error::NotifyError;
use super::sink::{Delivery, NotifyOn, Sink};
use super::state::SinkState;

/// Prints one line per notified event.
#[derive(Clone, Debug)]
pub struct ConsoleSink {
    on: NotifyOn,
}

impl ConsoleSink {
    /// A console sink reacting to `on`.
    pub fn new(on: NotifyOn) -> Self {
        ConsoleSink { on }
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    fn on(&self) -> NotifyOn {
        self.on
    }

    fn wants(&self, _view: &JobView) -> bool {
        // The console is the operator's own terminal, not a third party: opt-outs do not apply.
        true
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        if state.message_version >= d.view.last_version {
            return Ok(None);
        }
        println!("{}", console_line(d.view));
        Ok(Some(SinkState {
            message_version: d.view.last_version,
            ..state.clone()
        }))
    }
}
