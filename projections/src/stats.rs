//! `Stats`: figures over a set of jobs, folded from their views (used by `replay stats` and `jobledger cost`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job_view::JobView;

/// Which jobs count: those created in `[from, to)`; an open end is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// First instant included.
    pub from: Option<DateTime<Utc>>,
    /// First instant excluded.
    pub to: Option<DateTime<Utc>>,
}

impl Period {
    /// Every job, whenever created.
    pub const ALL: Period = Period {
        from: None,
        to: None,
    };

    /// Whether a creation time falls in the period.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

/// Figures over the jobs created in a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The period the figures cover.
    pub period: Period,
    /// Jobs counted.
    pub jobs: u64,
    /// Jobs per status wire name (e.g. `SUCCEEDED`); statuses with no job are left out.
    pub by_status: BTreeMap<String, u64>,
    /// Jobs per kind wire name (e.g. `image_alt`).
    pub by_kind: BTreeMap<String, u64>,
    /// Attempts beyond the first, summed over jobs (`attempt - 1`).
    pub retries: u64,
    /// Worker interruptions (Spot reclaims), summed over the jobs' whole lives.
    pub interruptions: u64,
    /// Jobs in a terminal status (succeeded, failed, cancelled).
    pub finished: u64,
    /// Median submit-to-finish wall time of finished jobs, in milliseconds (nearest rank).
    pub p50_duration_ms: Option<u64>,
    /// 95th percentile submit-to-finish wall time of finished jobs, in milliseconds (nearest rank).
    pub p95_duration_ms: Option<u64>,
    /// Money spent on the counted jobs.
    pub total_cost_usd: f64,
    /// Events folded into the counted jobs (their `last_version`s summed).
    pub events: u64,
}

impl Stats {
    /// Folds the views of the jobs created in `period`.
    pub fn from_views<'a>(views: impl IntoIterator<Item = &'a JobView>, period: Period) -> Stats {
        let mut builder = StatsBuilder::new(period);
        for view in views {
            builder.add(view);
        }
        builder.finish()
    }
}

/// Accumulates `Stats` one view at a time (for streaming over a large view store).
#[derive(Clone, Debug)]
pub struct StatsBuilder {
    stats: Stats,
    durations_ms: Vec<u64>,
}

impl StatsBuilder {
    /// An empty accumulator for `period`.
    pub fn new(period: Period) -> Self {
        StatsBuilder {
            stats: Stats {
                period,
                ..Stats::default()
            },
            durations_ms: Vec::new(),
        }
    }

    /// Counts one job if it was created in the period.
    pub fn add(&mut self, view: &JobView) {
        let s = &mut self.stats;
        if !s.period.contains(view.created_at) {
            return;
        }
        s.jobs += 1;
        count(&mut s.by_status, view.status.as_str());
        count(&mut s.by_kind, view.kind.as_str());
        s.retries += u64::from(view.attempt.saturating_sub(1));
        s.interruptions += u64::from(view.total_interruptions);
        s.total_cost_usd += view.cost_usd;
        s.events += view.last_version;
        if view.status.is_terminal() {
            s.finished += 1;
            if let Some(d) = view.duration() {
                // A clock step backwards between two events would make this negative: count it as 0.
                self.durations_ms
                    .push(u64::try_from(d.num_milliseconds()).unwrap_or(0));
            }
        }
    }

    /// Adds the jobs another builder counted (a fold split in parts). Every figure is as if one
    /// builder had counted them all, except `total_cost_usd`, a float sum whose last bits depend
    /// on the order of adding.
    pub fn merge(&mut self, other: StatsBuilder) {
        let (s, o) = (&mut self.stats, other.stats);
        s.jobs += o.jobs;
        for (key, n) in o.by_status {
            *s.by_status.entry(key).or_default() += n;
        }
        for (key, n) in o.by_kind {
            *s.by_kind.entry(key).or_default() += n;
        }
        s.retries += o.retries;
        s.interruptions += o.interruptions;
        s.finished += o.finished;
        s.total_cost_usd += o.total_cost_usd;
        s.events += o.events;
        self.durations_ms.extend(other.durations_ms);
    }

    /// The figures.
    pub fn finish(mut self) -> Stats {
        self.durations_ms.sort_unstable();
        self.stats.p50_duration_ms = percentile(&self.durations_ms, 50);
        self.stats.p95_duration_ms = percentile(&self.durations_ms, 95);
        self.stats
    }
}

/// Adds one to `key`'s count, allocating its name only the first time (a rebuild adds every job).
fn count(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of values at or below it.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (n * p.min(100) as usize).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use jobledger_events::spec::Notify;
    use jobledger_events::{JobId, JobKind, Status};

    use super::*;
    use crate::job_view::Progress;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    fn view(
        kind: JobKind,
        status: Status,
        created_min: i64,
        took_s: Option<i64>,
        attempt: u32,
        cost: f64,
    ) -> JobView {
        let created_at = t0() + Duration::minutes(created_min);
        JobView {
            job_id: JobId::new(),
            kind,
            status,
            attempt,
            progress: Progress::default(),
            created_at,
            updated_at: created_at,
            result_uri: None,
            result_sha256: None,
            usage: None,
            last_version: 5,
            error: None,
            notify: Notify::default(),
            metadata: serde_json::Map::new(),
            failures: 0,
            interruptions: 0,
            total_interruptions: attempt - 1,
            attempt_started_at: None,
            heartbeat_at: None,
            launched_at: None,
            finished_at: took_s.map(|s| created_at + Duration::seconds(s)),
            timeout_s: 60,
            max_attempts: 3,
            not_before: None,
            priority: 0,
            task_arn: None,
            capacity: None,
            checkpoint_uri: None,
            cost_usd: cost,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&v, 100), Some(20));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn figures_on_a_known_set_of_jobs() {
        use JobKind::*;
        use Status::*;
        let views = vec![
            view(ImageAlt, Succeeded, 0, Some(10), 1, 0.5),
            view(ImageAlt, Succeeded, 1, Some(30), 2, 0.25),
            view(MetaDescription, Failed, 2, Some(20), 3, 0.0),
            view(MetaDescription, Cancelled, 3, Some(40), 1, 0.0),
            view(ContentAnalysis, Running, 4, None, 2, 0.0),
            // Outside the period on both sides.
            view(ImageAlt, Succeeded, -1, Some(1000), 5, 100.0),
            view(ImageAlt, Succeeded, 60, Some(1000), 5, 100.0),
        ];
        let period = Period {
            from: Some(t0()),
            to: Some(t0() + Duration::minutes(60)),
        };
        let stats = Stats::from_views(&views, period);
        assert_eq!(stats.jobs, 5);
        assert_eq!(stats.by_status["SUCCEEDED"], 2);
        assert_eq!(stats.by_status["FAILED"], 1);
        assert_eq!(stats.by_status["CANCELLED"], 1);
        assert_eq!(stats.by_status["RUNNING"], 1);
        assert_eq!(stats.by_status.get("QUEUED"), None);
        assert_eq!(stats.by_kind["image_alt"], 2);
        assert_eq!(stats.by_kind["meta_description"], 2);
        assert_eq!(stats.by_kind["content_analysis"], 1);
        assert_eq!(stats.retries, 1 + 2 + 1);
        assert_eq!(stats.interruptions, 4);
        assert_eq!(stats.finished, 4);
        // Finished durations 10, 20, 30, 40 s: nearest-rank p50 is the 2nd, p95 the 4th.
        assert_eq!(stats.p50_duration_ms, Some(20_000));
        assert_eq!(stats.p95_duration_ms, Some(40_000));
        assert_eq!(stats.total_cost_usd, 0.75);
        assert_eq!(stats.events, 25);
        assert_eq!(stats.period, period);

        let everything = Stats::from_views(&views, Period::ALL);
        assert_eq!(everything.jobs, 7);
        assert_eq!(everything.total_cost_usd, 200.75);

        // Counted in two parts and merged: the same figures.
        for split in 0..=views.len() {
            let mut first = StatsBuilder::new(period);
            let mut second = StatsBuilder::new(period);
            views[..split].iter().for_each(|v| first.add(v));
            views[split..].iter().for_each(|v| second.add(v));
            first.merge(second);
            assert_eq!(first.finish(), stats, "split at {split}");
        }
    }

    #[test]
    fn no_jobs_give_zero_figures_and_no_percentiles() {
        let stats = Stats::from_views(&[], Period::ALL);
        assert_eq!(stats.jobs, 0);
        assert_eq!(stats.p50_duration_ms, None);
        assert!(stats.by_status.is_empty());
    }
}
