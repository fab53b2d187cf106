//! The line protocol between the driver and the processes it measures: each measuring process
//! prints `FIGURE {json}` lines on stdout; the driver collects them and takes medians.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of a figure line; anything else on stdout is passed through as a log line.
pub const PREFIX: &str = "FIGURE ";

/// One measured value, e.g. `dev.1000.jobs_per_s = 812.0`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Stable key the table looks figures up by.
    pub key: String,
    /// The value, in the unit the key implies.
    pub value: f64,
}

/// Prints one figure line for the driver.
pub fn emit(key: impl Into<String>, value: f64) {
    let figure = Figure {
        key: key.into(),
        value,
    };
    match serde_json::to_string(&figure) {
        Ok(json) => println!("{PREFIX}{json}"),
        // A figure is two plain fields: serialising cannot fail, but never panic over a print.
        Err(e) => eprintln!("cannot encode figure {}: {e}", figure.key),
    }
}

/// Parses a figure line; `None` for log lines and malformed figures.
pub fn parse(line: &str) -> Option<Figure> {
    serde_json::from_str(line.strip_prefix(PREFIX)?).ok()
}

/// Every value seen per key, over all runs.
#[derive(Debug, Default)]
pub struct Samples(BTreeMap<String, Vec<f64>>);

impl Samples {
    /// Records one figure.
    pub fn add(&mut self, figure: Figure) {
        self.0.entry(figure.key).or_default().push(figure.value);
    }

    /// Median of a key's values (the lower middle for an even count); `None` if never measured.
    pub fn median(&self, key: &str) -> Option<f64> {
        let mut values = self.0.get(key)?.clone();
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(values[(values.len() - 1) / 2])
    }

    /// How many values a key has.
    pub fn count(&self, key: &str) -> usize {
        self.0.get(key).map_or(0, Vec::len)
    }

    /// The largest value of a key (used for "how many submits were refused").
    pub fn max(&self, key: &str) -> Option<f64> {
        self.0
            .get(key)?
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .max_by(f64::total_cmp)
    }

    /// The smallest value of a key (used for "how many jobs finished" under a time cap).
    pub fn min(&self, key: &str) -> Option<f64> {
        self.0
            .get(key)?
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .min_by(f64::total_cmp)
    }
}

/// Percentile of sorted durations in milliseconds (nearest rank).
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Peak resident set size of a process in MB (`VmHWM`), if `/proc` has it. It counts mapped file
/// pages too (jobledger's ledger connections map up to 256 MiB of the file).
pub fn peak_rss_mb(pid: &str) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// Anonymous resident memory of a process in MB now (`RssAnon`: heap and stacks, no file pages).
pub fn anon_rss_mb(pid: &str) -> Option<f64> {
    status_mb(pid, "RssAnon:")
}

/// A `kB` line of `/proc/<pid>/status`, in MB.
fn status_mb(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_mb(&status, field)
}

fn parse_status_mb(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_mb_and_a_missing_one_is_none() {
        let status = "Name:\tjobledger\nVmHWM:\t  262144 kB\nRssAnon:\t   51200 kB\n";
        assert_eq!(parse_status_mb(status, "VmHWM:"), Some(256.0));
        assert_eq!(parse_status_mb(status, "RssAnon:"), Some(50.0));
        assert_eq!(parse_status_mb(status, "RssFile:"), None);
        assert!(anon_rss_mb(&std::process::id().to_string()).is_some_and(|mb| mb > 0.0));
    }

    #[test]
    fn a_figure_line_round_trips_and_log_lines_are_not_figures() {
        let line = format!(
            "{PREFIX}{}",
            serde_json::to_string(&Figure {
                key: "dev.1000.jobs_per_s".into(),
                value: 812.5
            })
            .expect("encode")
        );
        assert_eq!(
            parse(&line),
            Some(Figure {
                key: "dev.1000.jobs_per_s".into(),
                value: 812.5
            })
        );
        assert_eq!(parse("jobledger dev: listening on http://x"), None);
        assert_eq!(parse("FIGURE {not json"), None);
    }

    #[test]
    fn the_median_ignores_non_finite_values_and_takes_the_lower_middle() {
        let mut s = Samples::default();
        for v in [5.0, 1.0, f64::NAN, 3.0, 4.0] {
            s.add(Figure {
                key: "k".into(),
                value: v,
            });
        }
        assert_eq!(s.median("k"), Some(3.0));
        s.add(Figure {
            key: "k".into(),
            value: 2.0,
        });
        assert_eq!(s.median("k"), Some(3.0));
        assert_eq!(s.median("missing"), None);
        assert_eq!(s.min("k"), Some(1.0));
        assert_eq!(s.count("k"), 6);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let d: Vec<_> = (1..=100).map(std::time::Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 0.5), 51.0);
        assert_eq!(percentile_ms(&d, 0.99), 99.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }
}
