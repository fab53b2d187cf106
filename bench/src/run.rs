//! Runs the plan's child processes, collects their figures and assembles the report.

use std::fmt::Write;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use crate::figures::{self, Samples};
use crate::machine;
use crate::plan::{self, Plan, Side};
use crate::table;

/// The binaries a run needs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `jobledger` (release), for the dev stack.
    pub jobledger: PathBuf,
    /// This binary, for `measure …`.
    pub bench: PathBuf,
    /// `bench-peers`.
    pub peers: PathBuf,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    /// Machine, durability notes and the table.
    pub markdown: String,
    /// Steps that failed, with why.
    pub failures: Vec<String>,
}

/// Runs one child; its figure lines go into `samples`, everything else to stderr.
fn run_step(step: &plan::Step, bins: &Binaries, samples: &mut Samples) -> anyhow::Result<()> {
    let bin = match step.side {
        Side::Jobledger => &bins.bench,
        Side::Peers => &bins.peers,
    };
    let mut child = Command::new(bin)
        .args(&step.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match figures::parse(&line) {
            Some(f) => samples.add(f),
            None => eprintln!("  {line}"),
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "exited with {status}");
    Ok(())
}

/// Runs every step `plan.runs` times (whole rounds, so that drift in the machine's load hits
/// every side alike) and renders the report.
pub fn run(plan: &Plan, bins: &Binaries) -> anyhow::Result<Report> {
    for bin in [&bins.jobledger, &bins.peers] {
        anyhow::ensure!(
            bin.exists(),
            "{} not found: build it first (scripts/bench does)",
            bin.display()
        );
    }
    let steps = plan::steps(plan, &bins.jobledger);
    let mut samples = Samples::default();
    let mut failures = Vec::new();
    let started = Instant::now();
    for round in 1..=plan.runs {
        for step in &steps {
            eprintln!("[run {round}/{}] {}", plan.runs, step.label);
            let t = Instant::now();
            if let Err(e) = run_step(step, bins, &mut samples) {
                eprintln!("  FAILED: {e:#}");
                failures.push(format!("run {round}, {}: {e:#}", step.label));
            } else {
                eprintln!("  ({:.1} s)", t.elapsed().as_secs_f64());
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine::describe(&bins.peers) {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- run: {} round(s), {} clients, caps {:?}, {:.0} s in all\n",
        plan.runs,
        plan.clients,
        plan.caps,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(md, "## Durability\n");
    for (side, how) in machine::DURABILITY {
        let _ = writeln!(md, "- {side}: {how}");
    }
    let _ = writeln!(md, "\n## Figures (medians)\n");
    md.push_str(&table::render(&table::rows(plan), &samples));
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailed measurements:\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    Ok(Report {
        markdown: md,
        failures,
    })
}
