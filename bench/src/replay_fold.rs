//! Replay throughput through the replay crate's public API: fold a generated export of ~N events
//! (~10 events per job) into each job's aggregate, verify it, and rebuild the read models from a
//! SQLite ledger holding the same events.

use std::path::Path;
use std::time::Instant;

use jobledger_events::{Job, JobId};
use jobledger_projections::SqliteViewStore;
use jobledger_replay::format::{Entry, ExportWriter};
use jobledger_replay::synth::Synth;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{FileSource, SqliteSource, verify_source};

use crate::figures::emit;

/// The aggregate fold's running state: one job at a time, as the export is ordered by job.
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
    let fold = Fold {
        job: Job::default(),
        current: None,
        events: 0,
        undecodable: 0,
    };
    let src = FileSource::open(&file)?;
    let fold = jobledger_replay::drive::drive(&src, false, false, "fold", fold, |f, entry| {
        if let Entry::Event(e) = entry {
            if f.current != Some(e.event.job_id) {
                f.current = Some(e.event.job_id);
                f.job = Job::default();
            }
            match e.event.decode() {
                Ok(ev) => f.job = std::mem::take(&mut f.job).evolve(&ev),
                Err(_) => f.undecodable += 1,
            }
            f.events += 1;
        }
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        fold.events == written && fold.undecodable == 0,
        "folded {} events ({} undecodable) of {written}",
        fold.events,
        fold.undecodable
    );
    emit("replay.fold.eps", fold.events as f64 / secs);

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
