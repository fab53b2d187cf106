//! The one table a run prints: each figure, its peer's at default and at equal durability, the
//! ratio jobledger/peer, and the target named in the issues.

use std::fmt::Write;

use crate::figures::Samples;
use crate::plan::Plan;

/// One row: where its figures come from.
#[derive(Clone, Debug)]
pub struct Row {
    /// What is measured, with its unit.
    pub figure: String,
    /// jobledger's key.
    pub ours: String,
    /// The peer's name and its keys at default and at equal (FULL) durability.
    pub peer: Option<(&'static str, String, String)>,
    /// Target from the issues, as text.
    pub target: &'static str,
    /// Whether a higher value is better (for the reader; the ratio is always ours/peer).
    pub higher_is_better: bool,
}

fn row(
    figure: String,
    ours: String,
    peer: Option<(&'static str, String, String)>,
    target: &'static str,
    higher: bool,
) -> Row {
    Row {
        figure,
        ours,
        peer,
        target,
        higher_is_better: higher,
    }
}

/// The rows of a plan.
pub fn rows(plan: &Plan) -> Vec<Row> {
    let mut out = Vec::new();
    let apalis = |n: usize, what: &str| {
        Some((
            "apalis",
            format!("apalis.default.{n}.{what}"),
            format!("apalis.full.{n}.{what}"),
        ))
    };
    for &n in &plan.job_counts {
        let target = if n == 10_000 { "≥ 10,000" } else { "" };
        out.push(row(
            format!("end to end jobs/s, {n} jobs"),
            format!("dev.{n}.jobs_per_s"),
            apalis(n, "jobs_per_s"),
            target,
            true,
        ));
        out.push(row(
            format!("jobs finished within the cap, of {n}"),
            format!("dev.{n}.done"),
            apalis(n, "done"),
            "",
            true,
        ));
        out.push(row(
            format!("submits refused, of {n}"),
            format!("dev.{n}.refused"),
            apalis(n, "refused"),
            "",
            false,
        ));
        out.push(row(
            format!("submit latency p50 ms, {n} jobs"),
            format!("dev.{n}.p50_ms"),
            apalis(n, "p50_ms"),
            "",
            false,
        ));
        out.push(row(
            format!("submit latency p99 ms, {n} jobs"),
            format!("dev.{n}.p99_ms"),
            apalis(n, "p99_ms"),
            "",
            false,
        ));
        let rss_target = if n == 10_000 { "≤ 64" } else { "" };
        out.push(row(
            format!("peak RSS MB, {n} jobs"),
            format!("dev.{n}.rss_mb"),
            apalis(n, "rss_mb"),
            rss_target,
            false,
        ));
        out.push(row(
            format!("peak anonymous RSS MB (no mapped file pages), {n} jobs"),
            format!("dev.{n}.anon_mb"),
            None,
            "",
            false,
        ));
    }
    let cqrs = |what: &str| {
        Some((
            "cqrs-es",
            format!("cqrs.default.{what}"),
            format!("cqrs.full.{what}"),
        ))
    };
    let jobs = plan.command_jobs;
    out.push(row(
        format!("commands/s, {jobs} jobs × 3, 1 client"),
        "ledger.commands.1.per_s".into(),
        cqrs("commands.1.per_s"),
        "",
        true,
    ));
    let c = plan.clients;
    out.push(row(
        format!("commands/s, {jobs} jobs × 3, {c} clients"),
        format!("ledger.commands.{c}.per_s"),
        cqrs(&format!("commands.{c}.per_s")),
        "≥ 25,000",
        true,
    ));
    for clients in [1, c] {
        out.push(row(
            format!("commands per CPU-second, {clients} client(s) (whole process)"),
            format!("ledger.commands.{clients}.per_cpu_s"),
            None,
            "",
            true,
        ));
    }
    out.push(row(
        "load + fold of a 10,000-event aggregate, ms".into(),
        "ledger.load10k.ms".into(),
        cqrs("load10k.ms"),
        "≤ 5",
        false,
    ));
    out.push(row(
        "CPU ms per load + fold of that aggregate (all threads)".into(),
        "ledger.load10k.cpu_ms".into(),
        None,
        "",
        false,
    ));
    out.push(row(
        "load of that job's 10,000 events (every event, no fold), ms".into(),
        "ledger.load10k_history.ms".into(),
        None,
        "",
        false,
    ));
    let ev = plan.replay_events;
    out.push(row(
        format!("replay: fold an export, events/s ({ev} events)"),
        "replay.fold.eps".into(),
        None,
        "≥ 2,000,000",
        true,
    ));
    out.push(row(
        "replay: verify the export, events/s".into(),
        "replay.verify.eps".into(),
        None,
        "≥ 1,000,000",
        true,
    ));
    out.push(row(
        "replay: import the export into SQLite, events/s".into(),
        "replay.import.eps".into(),
        None,
        "",
        true,
    ));
    out.push(row(
        "replay: rebuild --dry-run from SQLite (fold + compare), events/s".into(),
        "replay.rebuild_dry.eps".into(),
        None,
        "",
        true,
    ));
    out.push(row(
        "replay: rebuild read models from SQLite (writes), events/s".into(),
        "replay.rebuild.eps".into(),
        None,
        "≥ 500,000",
        true,
    ));
    out
}

/// Formats a figure: thousands separators for large values, two decimals for small ones.
pub fn number(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    // Counts (and any whole figure) print without decimals; only fractions are rounded by size.
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.is_finite()) {
        let digits = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if v < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(ours: Option<f64>, peer: Option<f64>) -> String {
    match (ours, peer) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// Renders the table as Markdown; "done" rows show the smallest count over the runs and
/// "refused" rows the largest (the worst run either way).
pub fn render(rows: &[Row], samples: &Samples) -> String {
    let value = |key: &str| {
        if key.ends_with(".done") {
            samples.min(key)
        } else if key.ends_with(".refused") {
            samples.max(key)
        } else {
            samples.median(key)
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | better | jobledger | peer | peer, defaults | jobledger / peer | peer, synchronous=FULL | jobledger / peer (FULL) | target | runs |"
    );
    let _ = writeln!(out, "|---|---|--:|---|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let ours = value(&r.ours);
        let (name, default, full) = match &r.peer {
            Some((name, d, f)) => (*name, value(d), value(f)),
            None => ("—", None, None),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {name} | {} | {} | {} | {} | {} | {} |",
            r.figure,
            if r.higher_is_better {
                "higher"
            } else {
                "lower"
            },
            number(ours),
            number(default),
            ratio(ours, default),
            number(full),
            ratio(ours, full),
            r.target,
            samples.count(&r.ours),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Figure;

    #[test]
    fn numbers_are_grouped_or_rounded_by_size() {
        assert_eq!(number(Some(1_234_567.4)), "1,234,567");
        assert_eq!(number(Some(100.0)), "100");
        assert_eq!(number(Some(12.345)), "12.3");
        assert_eq!(number(Some(4.567)), "4.57");
        assert_eq!(number(Some(-2_500.0)), "-2,500");
        assert_eq!(number(Some(0.0)), "0");
        assert_eq!(number(Some(7.0)), "7");
        assert_eq!(number(None), "—");
    }

    #[test]
    fn a_row_shows_medians_ratios_and_dashes_for_what_was_not_measured() {
        let mut s = Samples::default();
        for (k, v) in [
            ("dev.1000.jobs_per_s", 100.0),
            ("dev.1000.jobs_per_s", 300.0),
            ("dev.1000.jobs_per_s", 200.0),
            ("apalis.default.1000.jobs_per_s", 400.0),
        ] {
            s.add(Figure {
                key: k.into(),
                value: v,
            });
        }
        let plan = Plan::quick();
        let table = render(&rows(&plan), &s);
        let line = table
            .lines()
            .find(|l| l.starts_with("| end to end jobs/s, 1000 jobs"))
            .expect("row present");
        assert_eq!(
            line,
            "| end to end jobs/s, 1000 jobs | higher | 200 | apalis | 400 | 0.50× | — | — |  | 3 |"
        );
        assert!(
            table.contains("| replay: fold an export, events/s (100000 events) | higher | — | — |")
        );
    }

    #[test]
    fn refused_and_done_rows_show_the_worst_run() {
        let mut s = Samples::default();
        for (k, v) in [
            ("dev.1000.refused", 0.0),
            ("dev.1000.done", 1000.0),
            ("apalis.default.1000.refused", 3.0),
            ("apalis.default.1000.refused", 40.0),
            ("apalis.default.1000.refused", 0.0),
            ("apalis.default.1000.done", 960.0),
            ("apalis.default.1000.done", 1000.0),
        ] {
            s.add(Figure {
                key: k.into(),
                value: v,
            });
        }
        let table = render(&rows(&Plan::quick()), &s);
        let find = |prefix: &str| {
            table
                .lines()
                .find(|l| l.starts_with(prefix))
                .expect("row present")
                .to_string()
        };
        assert!(find("| submits refused, of 1000 |").contains("| 0 | apalis | 40 |"));
        assert!(
            find("| jobs finished within the cap, of 1000 |").contains("| 1,000 | apalis | 960 |")
        );
    }
}
