//! What one benchmark run measures: sizes, caps and the child processes that measure each part.

use std::path::PathBuf;
use std::time::Duration;

/// Sizes and repetitions of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// End-to-end job counts (jobledger dev and apalis).
    pub job_counts: Vec<usize>,
    /// Concurrent submitters.
    pub clients: usize,
    /// Wall-clock cap of one end-to-end measurement at each job count.
    pub caps: Vec<Duration>,
    /// Jobs of the commands/s figures (× 3 commands each).
    pub command_jobs: usize,
    /// Cap of one commands/s measurement.
    pub command_cap: Duration,
    /// Loads of the 10,000-event aggregate per run (the run's figure is their median).
    pub loads: usize,
    /// Events of the replay export.
    pub replay_events: u64,
    /// Repetitions; the table shows medians.
    pub runs: usize,
}

impl Plan {
    /// The sizes the issue asks for: 1,000 / 10,000 / 100,000 jobs, 10,000 × 3 commands,
    /// 1,000,000 events, 3 runs.
    pub fn full() -> Self {
        Plan {
            job_counts: vec![1_000, 10_000, 100_000],
            clients: 64,
            caps: vec![
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(180),
            ],
            command_jobs: 10_000,
            command_cap: Duration::from_secs(120),
            loads: 11,
            replay_events: 1_000_000,
            runs: 3,
        }
    }

    /// A smoke run of a few minutes: 1,000 and 10,000 jobs, 1,000 × 3 commands, 100,000
    /// events, one run.
    pub fn quick() -> Self {
        Plan {
            job_counts: vec![1_000, 10_000],
            clients: 64,
            caps: vec![Duration::from_secs(30), Duration::from_secs(60)],
            command_jobs: 1_000,
            command_cap: Duration::from_secs(60),
            loads: 5,
            replay_events: 100_000,
            runs: 1,
        }
    }

    /// The cap for the `i`-th job count (the last cap repeats).
    pub fn cap(&self, i: usize) -> Duration {
        self.caps
            .get(i)
            .or(self.caps.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }
}

/// Which binary measures a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This binary, `measure …` (jobledger).
    Jobledger,
    /// `bench-peers …` (apalis, cqrs-es).
    Peers,
}

/// One child process of a run.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the progress line says.
    pub label: String,
    /// Which binary.
    pub side: Side,
    /// Its arguments.
    pub args: Vec<String>,
}

fn step(label: String, side: Side, args: &[&str]) -> Step {
    Step {
        label,
        side,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// The steps of one repetition, jobledger and its peer next to each other so that both see
/// the same machine state.
pub fn steps(plan: &Plan, jobledger_bin: &std::path::Path) -> Vec<Step> {
    let mut out = Vec::new();
    let clients = plan.clients.to_string();
    for (i, &jobs) in plan.job_counts.iter().enumerate() {
        let (n, cap) = (jobs.to_string(), plan.cap(i).as_secs().to_string());
        let bin = jobledger_bin.display().to_string();
        out.push(step(
            format!("jobledger dev, {jobs} jobs"),
            Side::Jobledger,
            &[
                "measure",
                "dev",
                "--jobs",
                &n,
                "--clients",
                &clients,
                "--cap-s",
                &cap,
                "--bin",
                &bin,
            ],
        ));
        for durability in ["default", "full"] {
            out.push(step(
                format!("apalis ({durability}), {jobs} jobs"),
                Side::Peers,
                &[
                    "apalis",
                    "--jobs",
                    &n,
                    "--clients",
                    &clients,
                    "--cap-s",
                    &cap,
                    "--durability",
                    durability,
                ],
            ));
        }
    }
    let (jobs, cap) = (
        plan.command_jobs.to_string(),
        plan.command_cap.as_secs().to_string(),
    );
    let loads = plan.loads.to_string();
    for c in ["1", clients.as_str()] {
        out.push(step(
            format!("jobledger commands, {c} client(s)"),
            Side::Jobledger,
            &[
                "measure",
                "commands",
                "--clients",
                c,
                "--jobs",
                &jobs,
                "--cap-s",
                &cap,
            ],
        ));
        for durability in ["default", "full"] {
            out.push(step(
                format!("cqrs-es ({durability}) commands, {c} client(s)"),
                Side::Peers,
                &[
                    "cqrs-commands",
                    "--clients",
                    c,
                    "--jobs",
                    &jobs,
                    "--cap-s",
                    &cap,
                    "--durability",
                    durability,
                ],
            ));
        }
    }
    out.push(step(
        "jobledger load of a 10,000-event job".into(),
        Side::Jobledger,
        &["measure", "load", "--loads", &loads],
    ));
    for durability in ["default", "full"] {
        out.push(step(
            format!("cqrs-es ({durability}) load of a 10,000-event aggregate"),
            Side::Peers,
            &["cqrs-load", "--loads", &loads, "--durability", durability],
        ));
    }
    out.push(step(
        format!("jobledger replay, {} events", plan.replay_events),
        Side::Jobledger,
        &[
            "measure",
            "replay",
            "--events",
            &plan.replay_events.to_string(),
        ],
    ));
    out
}

/// Where the release binaries are: next to this one.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
