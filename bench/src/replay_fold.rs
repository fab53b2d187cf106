//! Replay throughput through the replay crate's public API: fold a generated export of ~N events
//! (~10 events per job) into each job's aggregate, verify it, and rebuild the read models from a
//! SQLite ledger holding the same events.

use std::path::Path;
use std::time::Instant;

use jobledger_events::{Job, JobId};
use jobledger_projections::SqliteViewStore;
use jobledger_replay::drive::{default_parts, drive_parts};
use jobledger_replay::format::{ExportWriter, Item};
use jobledger_replay::synth::Synth;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{FileSource, SqliteSource, verify_source};

use crate::figures::emit;

/// A part's fold state: one job at a time, as each part holds whole jobs in order.
#[derive(Default)]
struct Fold {
    job: Job,
    current: Option<JobId>,
    events: u64,
    undecodable: u64,
}

/// Writes a synthetic export of at least `events` events; returns how many it wrote.
fn generate(file: &Path, events: u64) -> anyhow::Result<u64> {
    let mut synth = Synth::new(7);
    let mut writer = ExportWriter::create(file)?;
    while writer.events < events {
        writer.write_job(&synth.job())?;
    }
    let written = writer.events;
    writer.finish()?;
    Ok(written)
}

/// Generates the export, then emits `replay.fold.eps`, `replay.verify.eps`,
/// `replay.import.eps`, `replay.rebuild_dry.eps` and `replay.rebuild.eps`.
pub async fn measure(dir: &Path, events: u64) -> anyhow::Result<()> {
    let file = dir.join("ledger.jsonl");
    let ledger = dir.join("ledger.sqlite3");
    let written = generate(&file, events)?;
    emit("replay.events", written as f64);

    let started = Instant::now();
    // Split in parts of whole jobs, as `replay` does: each core parses, decodes and folds its own.
    let folds = drive_parts(
        &FileSource::open(&file)?,
        false,
        false,
        "fold",
        default_parts(),
        Fold::default,
        |f, item| match item {
            Item::Event(e) => {
                if f.current != Some(e.head.job_id) {
                    f.current = Some(e.head.job_id);
                    f.job = Job::default();
                }
                match e.decode() {
                    Ok(ev) => f.job.absorb(ev),
                    Err(_) => f.undecodable += 1,
                }
                f.events += 1;
            }
            Item::Unreadable { .. } => f.undecodable += 1,
            Item::Pin(..) => {}
        },
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let (events, undecodable) = folds
        .iter()
        .fold((0, 0), |(n, bad), f| (n + f.events, bad + f.undecodable));
    anyhow::ensure!(
        events == written && undecodable == 0,
        "folded {events} events ({undecodable} undecodable) of {written}"
    );
    emit("replay.fold.eps", events as f64 / secs);

    let started = Instant::now();
    let report = verify_source(&FileSource::open(&file)?, None, false).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.total_findings == 0,
        "verify found {} problems in a generated export",
        report.total_findings
    );
    emit("replay.verify.eps", report.events as f64 / secs);

    let started = Instant::now();
    let imported = jobledger_replay::transfer::import(&file, &ledger, true, false).await?;
    emit(
        "replay.import.eps",
        imported.events as f64 / started.elapsed().as_secs_f64(),
    );

    let views = SqliteViewStore::open(dir.join("views.sqlite3"))?;
    // Dry run first (fold from SQLite and compare, no writes), then the real rebuild.
    let started = Instant::now();
    let dry = rebuild(
        &SqliteSource::open(&ledger)?,
        &views,
        Projection::All,
        true,
        false,
    )
    .await?;
    emit(
        "replay.rebuild_dry.eps",
        dry.fold.events as f64 / started.elapsed().as_secs_f64(),
    );
    let started = Instant::now();
    let rebuilt = rebuild(
        &SqliteSource::open(&ledger)?,
        &views,
        Projection::All,
        false,
        false,
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        rebuilt.fold.events == written,
        "rebuild folded {} of {written} events",
        rebuilt.fold.events
    );
    emit("replay.rebuild.eps", rebuilt.fold.events as f64 / secs);
    Ok(())
}
