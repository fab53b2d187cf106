//! Replay throughput on a generated ledger (~1,000,000 events, ~100,000 jobs). Prints figures;
//! asserts nothing. Each phase runs in a child process so its peak memory is its own.
//!
//! `cargo run --release -p jobledger-replay --example replay_bench [-- --events N] [--no-writes]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use jobledger_events::Job;
use jobledger_projections::{Period, SqliteViewStore};
use jobledger_replay::format::{ExportWriter, Item};
use jobledger_replay::synth::Synth;
use jobledger_replay::views::{Projection, rebuild, rebuild_embedded, stats};
use jobledger_replay::{FileSource, HistorySource, SqliteSource, verify_source};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Prints a phase's figures. The machine may be shared, so the rate per CPU second (all threads
/// of this process) is printed next to the wall-clock rate.
fn report(phase: &str, events: u64, secs: f64) {
    let cpu = jobledger_events::workload::process_cpu().as_secs_f64();
    println!(
        "{phase:<34} {events:>8} ev {secs:>6.2} s wall {:>9.0} ev/s | {cpu:>6.2} s CPU {:>9.0} ev/CPU-s | peak RSS {:>6.1} MB",
        events as f64 / secs,
        events as f64 / cpu.max(1e-9),
        peak_rss_mb()
    );
}

async fn phase(name: &str, dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("ledger.jsonl");
    let ledger = dir.join("ledger.sqlite3");
    let started = Instant::now();
    match name {
        "generate" => {
            let target: u64 = arg("--events")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            let mut synth = Synth::new(7);
            let mut w = ExportWriter::create(&file)?;
            while w.events < target {
                w.write_job(&synth.job())?;
            }
            let (events, jobs) = (w.events, w.jobs);
            w.finish()?;
            report(
                &format!("generate ({jobs} jobs)"),
                events,
                started.elapsed().as_secs_f64(),
            );
        }
        "fold-export" => {
            // Split in parts of whole jobs: each core parses, decodes (upcasts) and folds its own.
            struct Fold {
                job: Job,
                current: Option<jobledger_events::JobId>,
                events: u64,
                succeeded: u64,
            }
            let src = FileSource::open(&file)?;
            let make = || Fold {
                job: Job::default(),
                current: None,
                events: 0,
                succeeded: 0,
            };
            let folds = jobledger_replay::drive::drive_parts(
                &src,
                false,
                false,
                "fold",
                jobledger_replay::drive::default_parts(),
                make,
                |f, item| {
                    if let Item::Event(e) = item {
                        if f.current != Some(e.head.job_id) {
                            f.succeeded +=
                                u64::from(f.job.status == jobledger_events::Status::Succeeded);
                            f.current = Some(e.head.job_id);
                            f.job = Job::default();
                        }
                        if let Ok(ev) = e.decode() {
                            f.job.absorb(ev);
                        }
                        f.events += 1;
                    }
                },
            )
            .await?;
            let fold = folds.into_iter().fold(make(), |mut all, f| {
                all.events += f.events;
                all.succeeded += f.succeeded;
                all
            });
            report(
                "fold export (Job)",
                fold.events,
                started.elapsed().as_secs_f64(),
            );
        }
        "views-export" => {
            let (s, summary) = stats(&FileSource::open(&file)?, Period::ALL, false).await?;
            report(
                "fold export (JobView+stats)",
                summary.events,
                started.elapsed().as_secs_f64(),
            );
            println!(
                "    {} jobs, {} succeeded",
                s.jobs,
                s.by_status.get("SUCCEEDED").copied().unwrap_or(0)
            );
        }
        "verify-export" => {
            let r = verify_source(&FileSource::open(&file)?, None, false).await?;
            report(
                "verify --all (export)",
                r.events,
                started.elapsed().as_secs_f64(),
            );
            println!("    {} findings", r.total_findings);
        }
        "import" => {
            let _ = std::fs::remove_file(&ledger);
            let s = jobledger_replay::transfer::import(&file, &ledger, true, false).await?;
            report(
                "import (no pre-verify)",
                s.events,
                started.elapsed().as_secs_f64(),
            );
        }
        "verify-sqlite" => {
            let r = verify_source(&SqliteSource::open(&ledger)?, None, false).await?;
            report(
                "verify --all (SQLite)",
                r.events,
                started.elapsed().as_secs_f64(),
            );
            println!("    {} findings", r.total_findings);
        }
        "fold-sqlite" => {
            let src = SqliteSource::open(&ledger)?;
            let (_, summary) = stats(&src, Period::ALL, false).await?;
            report(
                "rebuild fold (SQLite, no writes)",
                summary.events,
                started.elapsed().as_secs_f64(),
            );
        }
        "rebuild-dry" => {
            let views = SqliteViewStore::open(dir.join("views.sqlite3"))?;
            let r = rebuild(
                &SqliteSource::open(&ledger)?,
                &views,
                Projection::All,
                true,
                false,
            )
            .await?;
            report(
                "rebuild --dry-run (SQLite)",
                r.fold.events,
                started.elapsed().as_secs_f64(),
            );
            println!("    {} differences", r.diff_count);
        }
        "rebuild" => {
            let r = rebuild_embedded(
                &SqliteSource::open(&ledger)?,
                &dir.join("views.sqlite3"),
                Projection::All,
                false,
                false,
            )
            .await?;
            report(
                "rebuild (SQLite, writes)",
                r.fold.events,
                started.elapsed().as_secs_f64(),
            );
            println!("    {} views written", r.written);
        }
        "extent" => {
            let n = SqliteSource::open(&ledger)?.extent().await?;
            println!("    ledger head seq {n}");
        }
        other => anyhow::bail!("unknown phase {other}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let (Some(name), Some(dir)) = (arg("--phase"), arg("--dir")) {
        return phase(&name, &PathBuf::from(dir)).await;
    }
    let dir = tempfile_dir()?;
    let mut phases = vec![
        "generate",
        "fold-export",
        "views-export",
        "verify-export",
        "import",
        "extent",
        "verify-sqlite",
        "fold-sqlite",
        "rebuild-dry",
    ];
    if !std::env::args().any(|a| a == "--no-writes") {
        phases.push("rebuild");
    }
    let me = std::env::current_exe()?;
    for p in phases {
        let mut cmd = Command::new(&me);
        cmd.args(["--phase", p, "--dir"]).arg(&dir);
        if let Some(n) = arg("--events") {
            cmd.args(["--events", &n]);
        }
        let status = cmd.status()?;
        if !status.success() {
            anyhow::bail!("phase {p} failed: {status}");
        }
    }
    println!("(files in {}; removed)", dir.display());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("replay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
