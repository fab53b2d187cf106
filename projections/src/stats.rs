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
    /// Median submit-to-finish wall time of finished jobs, in milliseconds (nearest rank; exact
    /// below 2,048 ms, otherwise at most 0.1% high).
    pub p50_duration_ms: Option<u64>,
    /// 95th percentile submit-to-finish wall time of finished jobs, in milliseconds (as the median).
    pub p95_duration_ms: Option<u64>,
    /// Money spent on the counted jobs: summed in 2^-64 USD fixed point, then rounded once, so the
    /// same in any order.
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

/// Accumulates `Stats` one view at a time, in memory that does not grow with the jobs counted
/// (a rebuild streams millions of them). Parts counted apart and merged give the same figures as
/// one builder that counted every view, in any order.
#[derive(Clone, Debug)]
pub struct StatsBuilder {
    stats: Stats,
    durations: DurationHistogram,
    cost: CostSum,
}

impl StatsBuilder {
    /// An empty accumulator for `period`.
    pub fn new(period: Period) -> Self {
        StatsBuilder {
            stats: Stats {
                period,
                ..Stats::default()
            },
            durations: DurationHistogram::default(),
            cost: CostSum::default(),
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
        self.cost.add(view.cost_usd);
        s.events += view.last_version;
        if view.status.is_terminal() {
            s.finished += 1;
            if let Some(d) = view.duration() {
                // A clock step backwards between two events would make this negative: count it as 0.
                self.durations
                    .add(u64::try_from(d.num_milliseconds()).unwrap_or(0));
            }
        }
    }

    /// Adds the jobs another builder counted (a fold split in parts).
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
        s.events += o.events;
        self.cost.merge(other.cost);
        self.durations.merge(other.durations);
    }

    /// The figures.
    pub fn finish(mut self) -> Stats {
        self.stats.p50_duration_ms = self.durations.percentile(50);
        self.stats.p95_duration_ms = self.durations.percentile(95);
        self.stats.total_cost_usd = self.cost.total();
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

/// Significant bits a duration keeps in [`DurationHistogram`]: values below 2^11 ms are exact,
/// larger ones lose at most 1/1,024 (0.1%) of their value.
const DURATION_BITS: u32 = 11;

/// Durations counted per bucket, for percentiles in bounded memory: at most ~55,000 buckets
/// (`DURATION_BITS` significant bits of a `u64`), a few hundred for durations that cluster.
#[derive(Clone, Debug, Default)]
struct DurationHistogram {
    /// Bucket (its largest possible value) → durations in it and the largest of them.
    counts: BTreeMap<u64, (u64, u64)>,
    total: u64,
}

impl DurationHistogram {
    /// The bucket a duration falls in, named by the largest value it can hold.
    fn bucket(ms: u64) -> u64 {
        let dropped = (u64::BITS - ms.leading_zeros()).saturating_sub(DURATION_BITS);
        ms | ((1u64 << dropped) - 1)
    }

    /// Counts one duration.
    fn add(&mut self, ms: u64) {
        self.add_n(Self::bucket(ms), 1, ms);
    }

    fn add_n(&mut self, bucket: u64, n: u64, largest: u64) {
        let (count, max) = self.counts.entry(bucket).or_default();
        *count += n;
        *max = (*max).max(largest);
        self.total += n;
    }

    /// Adds another histogram's counts.
    fn merge(&mut self, other: DurationHistogram) {
        for (bucket, (n, largest)) in other.counts {
            self.add_n(bucket, n, largest);
        }
    }

    /// Nearest-rank percentile: the smallest value with at least `p`% of values at or below it.
    /// It is the largest duration seen in that value's bucket: exact below 2,048 ms or when the
    /// bucket holds one distinct value, and otherwise at most 0.1% high.
    fn percentile(&self, p: u32) -> Option<u64> {
        let rank = (self.total * u64::from(p.min(100))).div_ceil(100).max(1);
        let mut seen = 0;
        self.counts.values().find_map(|&(n, largest)| {
            seen += n;
            (seen >= rank).then_some(largest)
        })
    }
}

/// Money summed in fixed point, 2^-64 USD a unit: integer sums do not depend on the order of
/// adding, so parts folded on several cores give the very total one pass would.
#[derive(Clone, Copy, Debug, Default)]
struct CostSum(i128);

/// 2^64: units per dollar.
const COST_UNITS_PER_USD: f64 = 18_446_744_073_709_551_616.0;

impl CostSum {
    fn add(&mut self, usd: f64) {
        // Scaling by a power of two is exact; `as` saturates a value beyond the range and maps
        // NaN to 0, so a damaged cost cannot wrap the sum.
        self.0 = self
            .0
            .saturating_add((usd * COST_UNITS_PER_USD).round() as i128);
    }

    fn merge(&mut self, other: CostSum) {
        self.0 = self.0.saturating_add(other.0);
    }

    fn total(self) -> f64 {
        self.0 as f64 / COST_UNITS_PER_USD
    }
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

    fn histogram(values: impl IntoIterator<Item = u64>) -> DurationHistogram {
        let mut h = DurationHistogram::default();
        values.into_iter().for_each(|v| h.add(v));
        h
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let h = histogram(1..=20);
        assert_eq!(h.percentile(50), Some(10));
        assert_eq!(h.percentile(95), Some(19));
        assert_eq!(h.percentile(100), Some(20));
        assert_eq!(histogram([7]).percentile(95), Some(7));
        assert_eq!(histogram([3, 1, 2]).percentile(50), Some(2));
        assert_eq!(histogram([]).percentile(50), None);
    }

    #[test]
    fn percentiles_are_exact_below_2048_ms_and_within_a_thousandth_above() {
        let small: Vec<u64> = (0..2048).rev().collect();
        let h = histogram(small.iter().copied());
        assert_eq!(h.percentile(50), Some(1023));
        assert_eq!(h.percentile(95), Some(1945));
        // Spread over six orders of magnitude: compare with the exact nearest rank of sorted values.
        let mut values: Vec<u64> = (1..50_000u64).map(|i| i * i * 7 % 10_000_019).collect();
        let h = histogram(values.iter().copied());
        values.sort_unstable();
        for p in [1, 25, 50, 90, 95, 99, 100] {
            let exact = values[(values.len() * p as usize).div_ceil(100) - 1];
            let got = h.percentile(p).unwrap();
            assert!(
                got >= exact && got - exact <= exact / 1024,
                "p{p}: {got} vs {exact}"
            );
        }
        // A bucket holding one distinct value gives it exactly.
        assert_eq!(histogram([20_000, 1_000_001]).percentile(50), Some(20_000));
        assert_eq!(histogram([1_000_001]).percentile(100), Some(1_000_001));
        assert_eq!(histogram([u64::MAX]).percentile(50), Some(u64::MAX));
    }

    #[test]
    fn histogram_memory_is_bounded_by_buckets_not_values() {
        // 300,000 distinct values between 1 s and 5 min: 1,024 buckets per power of two.
        let h = histogram((0..2_000_000u64).map(|i| 1_000 + i % 300_000));
        assert!(
            h.counts.len() <= 1_048 + 8 * 1_024,
            "{} buckets",
            h.counts.len()
        );
        assert_eq!(h.total, 2_000_000);
    }

    #[test]
    fn the_cost_total_does_not_depend_on_the_order_of_adding() {
        let costs: Vec<f64> = (1..10_000)
            .map(|i| 0.0017 * f64::from(i % 97) + 1e-9)
            .collect();
        let mut forward = CostSum::default();
        costs.iter().for_each(|c| forward.add(*c));
        let mut backward = CostSum::default();
        costs.iter().rev().for_each(|c| backward.add(*c));
        let (mut odd, mut even) = (CostSum::default(), CostSum::default());
        for (i, c) in costs.iter().enumerate() {
            if i % 2 == 0 {
                even.add(*c)
            } else {
                odd.add(*c)
            }
        }
        odd.merge(even);
        assert_eq!(forward.total().to_bits(), backward.total().to_bits());
        assert_eq!(forward.total().to_bits(), odd.total().to_bits());
        let naive: f64 = costs.iter().sum();
        assert!((forward.total() - naive).abs() < 1e-9);
        // A damaged cost neither wraps nor poisons the sum.
        let mut damaged = CostSum::default();
        damaged.add(0.5);
        damaged.add(f64::NAN);
        assert_eq!(damaged.total(), 0.5);
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
