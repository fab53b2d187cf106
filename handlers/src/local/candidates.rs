//! `LedgerCandidates`: sweep candidates read straight from the ledger, for `jobledger dev` setups
//! without a read model. It follows the change feed (in memory, from the start) to know which jobs
//! are unfinished, and folds each of those from its history on every sweep.

use std::collections::BTreeSet;

use jobledger_events::{ChangeFeed, EventStore, JobId};

use crate::sweep::{CandidateSource, SweepCandidate};

/// Feed events read per page while catching up.
const PAGE: usize = 1000;

const TERMINAL: [&str; 3] = ["JobSucceeded", "JobFailed", "JobCancelled"];

/// Lists every unfinished job of a store as a sweep candidate.
pub struct LedgerCandidates<S> {
    store: S,
    /// Feed position read so far, and the jobs whose latest event is not terminal.
    seen: tokio::sync::Mutex<(u64, BTreeSet<JobId>)>,
}

impl<S: EventStore + ChangeFeed> LedgerCandidates<S> {
    /// A source over `store` (a cheap clone of the store is fine).
    pub fn new(store: S) -> Self {
        LedgerCandidates {
            store,
            seen: tokio::sync::Mutex::new((0, BTreeSet::new())),
        }
    }
}

impl<S: EventStore + ChangeFeed> CandidateSource for LedgerCandidates<S> {
    async fn candidates(
        &self,
    ) -> Result<Vec<SweepCandidate>, Box<dyn std::error::Error + Send + Sync>> {
        let mut seen = self.seen.lock().await;
        loop {
            let page = self.store.read_after(seen.0, PAGE).await?;
            let Some(last) = page.last() else { break };
            let last = last.seq;
            for f in page {
                // The feed is in commit order, so a manual retry after a terminal event re-adds the job.
                if TERMINAL.contains(&f.event.event_type.as_str()) {
                    seen.1.remove(&f.event.job_id);
                } else {
                    seen.1.insert(f.event.job_id);
                }
            }
            seen.0 = last;
        }
        let mut out = Vec::with_capacity(seen.1.len());
        for &job_id in &seen.1 {
            let history = self.store.load(job_id).await?;
            out.push(SweepCandidate::from_history(job_id, &history)?);
        }
        Ok(out)
    }
}
