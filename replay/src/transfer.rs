//! `export` (a job or everything to a `.jsonl[.zst]` file with head pins) and `import` (a file into
//! an empty embedded ledger). A round trip is byte-identical: jobs are written in job id order
//! (UUID v7, so creation order) whatever order the store appended them in.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, bail};
use jobledger_events::{
    AppendBatch, ChangeFeed, EventStore, JobId, RecordedEvent, SqliteEventStore,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::drive::drive;
use crate::format::{Entry, ExportWriter, Pin};
use crate::source::{FileSource, HistorySource};
use crate::verify::{VerifyReport, verify_source};

/// What an export or import moved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransferSummary {
    /// Jobs.
    pub jobs: u64,
    /// Events.
    pub events: u64,
}

fn readable(entries: Vec<Entry>, job_id: JobId) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Entry::Event(e) => events.push(e.event),
            Entry::Pin(..) => {}
            Entry::Unreadable {
                version,
                reason,
                pos,
                ..
            } => {
                bail!("job {job_id} version {version:?} is unreadable ({reason}) {pos}: run verify")
            }
        }
    }
    Ok(events)
}

/// Exports one job (`Some`) or every job to `out`.
pub async fn export<S: HistorySource>(
    src: &S,
    job: Option<JobId>,
    out: &Path,
    show: bool,
) -> anyhow::Result<TransferSummary> {
    let mut writer =
        ExportWriter::create(out).with_context(|| format!("creating {}", out.display()))?;
    match job {
        Some(job_id) => {
            let events = readable(src.job(job_id, false).await?, job_id)?;
            if events.is_empty() {
                bail!("job {job_id} is not in {}", src.describe());
            }
            writer.write_job(&events)?;
        }
        None if src.grouped() => {
            // Contiguous jobs: copy in one streaming pass, one job in memory at a time.
            struct Copy {
                writer: ExportWriter,
                last: Option<Pin>,
                error: Option<anyhow::Error>,
            }
            impl Copy {
                fn close(&mut self) -> std::io::Result<()> {
                    match self.last.take() {
                        Some(pin) => self.writer.write_pin(&pin),
                        None => Ok(()),
                    }
                }
                fn entry(&mut self, entry: Entry) -> anyhow::Result<()> {
                    match entry {
                        Entry::Event(e) => {
                            if self.last.is_some_and(|p| p.job_id != e.event.job_id) {
                                self.close()?;
                            }
                            self.writer.write_event(&e.event)?;
                            self.last = Pin::of(std::slice::from_ref(&e.event));
                        }
                        Entry::Pin(..) => self.close()?,
                        Entry::Unreadable {
                            job_id,
                            version,
                            reason,
                            pos,
                        } => bail!(
                            "job {job_id:?} version {version:?} is unreadable ({reason}) {pos}: run verify"
                        ),
                    }
                    Ok(())
                }
            }
            let copy = Copy {
                writer,
                last: None,
                error: None,
            };
            let mut copy = drive(src, false, show, "export", copy, |c, entry| {
                if c.error.is_none() {
                    c.error = c.entry(entry).err();
                }
            })
            .await?;
            if let Some(e) = copy.error {
                return Err(e);
            }
            copy.close()?;
            writer = copy.writer;
        }
        None => {
            // Interleaved jobs: list them in one pass, then write each whole, in job id order.
            let ids = drive(
                src,
                false,
                show,
                "listing jobs",
                BTreeSet::new(),
                |ids, entry| {
                    if let Some(id) = entry.job_id() {
                        ids.insert(id);
                    }
                },
            )
            .await?;
            for job_id in ids {
                let events = readable(src.job(job_id, false).await?, job_id)?;
                writer.write_job(&events)?;
            }
        }
    }
    let summary = TransferSummary {
        jobs: writer.jobs,
        events: writer.events,
    };
    writer.finish()?;
    Ok(summary)
}

/// Appends in flight at once: lets the store group commits instead of paying one fsync per job.
const IN_FLIGHT: usize = 64;

/// Why an import did not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefused {
    /// The file fails verification (pass `force` to import it anyway).
    #[error("{} finding(s) in the file; nothing imported", .0.total_findings)]
    NotVerified(Box<VerifyReport>),
    /// The ledger already holds events.
    #[error("the ledger {0} is not empty; import only into an empty ledger")]
    NotEmpty(String),
}

/// Imports an export file into an empty ledger at `ledger`, after verifying it (unless `force`).
pub async fn import(
    file: &Path,
    ledger: &Path,
    force: bool,
    show: bool,
) -> anyhow::Result<TransferSummary> {
    let src = FileSource::open(file)?;
    if !force {
        let report = verify_source(&src, None, show).await?;
        if !report.ok() {
            return Err(ImportRefused::NotVerified(Box::new(report)).into());
        }
    }
    if let Some(dir) = ledger.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = SqliteEventStore::open(ledger)?;
    if !store.read_after(0, 1).await?.is_empty() {
        return Err(ImportRefused::NotEmpty(ledger.display().to_string()).into());
    }
    let (tx, mut rx) = mpsc::channel::<Vec<RecordedEvent>>(IN_FLIGHT);
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let mut summary = TransferSummary::default();
            while let Some(events) = rx.recv().await {
                while tasks.len() >= IN_FLIGHT {
                    if let Some(done) = tasks.join_next().await {
                        done??;
                    }
                }
                let Some(first) = events.first() else {
                    continue;
                };
                summary.jobs += 1;
                summary.events += events.len() as u64;
                let batch = AppendBatch {
                    job_id: first.job_id,
                    expected_version: first.version.saturating_sub(1),
                    events,
                    idempotency: None,
                };
                let store = store.clone();
                tasks.spawn(async move { store.append(batch).await });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok::<_, anyhow::Error>(summary)
        })
    };
    struct Group {
        events: Vec<RecordedEvent>,
        tx: mpsc::Sender<Vec<RecordedEvent>>,
        skipped: u64,
    }
    impl Group {
        fn flush(&mut self) {
            if !self.events.is_empty() {
                // A closed channel means the appender failed; its error is reported when joined.
                let _ = self.tx.blocking_send(std::mem::take(&mut self.events));
            }
        }
    }
    let group = Group {
        events: Vec::new(),
        tx,
        skipped: 0,
    };
    let mut group = drive(&src, false, show, "import", group, |g, entry| match entry {
        Entry::Event(e) => {
            if g.events.last().is_some_and(|l| l.job_id != e.event.job_id) {
                g.flush();
            }
            g.events.push(e.event);
        }
        Entry::Pin(..) => g.flush(),
        Entry::Unreadable { .. } => g.skipped += 1,
    })
    .await?;
    group.flush();
    let skipped = group.skipped;
    drop(group);
    let summary = appender.await??;
    if skipped > 0 {
        eprintln!("warning: {skipped} unreadable line(s) skipped (--force)");
    }
    Ok(summary)
}
