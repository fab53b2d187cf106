//! The driver's line protocol (`FIGURE {json}` on stdout), as in `bench/src/figures.rs`.

/// Prints one figure line for the driver.
pub fn emit(key: impl Into<String>, value: f64) {
    let line = serde_json::json!({ "key": key.into(), "value": value });
    println!("FIGURE {line}");
}

/// Percentile of sorted durations in milliseconds (nearest rank); NaN when empty.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// This process's peak resident set size in MB (`VmHWM`); NaN without `/proc`.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// How durable the peer's SQLite connections are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Exactly what the peer's documentation sets up.
    Default,
    /// WAL + `synchronous=FULL` on every connection, like jobledger.
    Full,
}

impl Durability {
    /// The key segment of its figures.
    pub fn key(self) -> &'static str {
        match self {
            Durability::Default => "default",
            Durability::Full => "full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank_and_nan_when_empty() {
        let d: Vec<_> = (1..=100).map(std::time::Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 0.5), 51.0);
        assert_eq!(percentile_ms(&d, 0.99), 99.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }
}
