//! `export` (a job or everything to a `.jsonl[.zst]` file with head pins) and `import` (a file into
//! an empty embedded ledger). A round trip is byte-identical: jobs are written in job id order
//! (UUID v7, so creation order) whatever order the store appended them in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jobledger_events::{AppendBatch, EventStore, JobId, RecordedEvent, SqliteEventStore};
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

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// A hidden file beside `path`, named for `what` and this process, that keeps `path`'s ending
/// (`.jsonl.zst` stays compressed): a sibling only this run writes, renamed onto `path` when done.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{what}-{}-{name}", std::process::id()))
}

/// Exports one job (`Some`) or every job to `out`.
///
/// The file is written beside `out` and renamed into place once complete and synced, so `out`
/// is either the whole export or untouched (an export that fails leaves no partial file).
pub async fn export<S: HistorySource>(
    src: &S,
    job: Option<JobId>,
    out: &Path,
    show: bool,
) -> anyhow::Result<TransferSummary> {
    if is_sqlite_file(out) {
        bail!(
            "{} is a SQLite database (a ledger or a read model?); export writes a .jsonl file: \
             choose another --out",
            out.display()
        );
    }
    let partial = sibling(out, "partial");
    let written = write_export(src, job, &partial, show).await;
    let renamed = written.and_then(|summary| {
        std::fs::rename(&partial, out)
            .with_context(|| format!("moving {} to {}", partial.display(), out.display()))?;
        Ok(summary)
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

fn is_sqlite_file(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == SQLITE_MAGIC
}

async fn write_export<S: HistorySource>(
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
    writer
        .finish()
        .with_context(|| format!("writing {}", out.display()))?;
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
    /// The (empty) ledger is open in another process.
    #[error(
        "the ledger {0} is open in another process (is `jobledger dev` running?); stop it and import again"
    )]
    InUse(String),
}

/// Whether `ledger` exists: refuses a file that is not an empty jobledger ledger.
fn check_target(ledger: &Path) -> anyhow::Result<bool> {
    if !ledger.exists() {
        return Ok(false);
    }
    if crate::sqlite_scan::holds_events(ledger)? {
        return Err(ImportRefused::NotEmpty(ledger.display().to_string()).into());
    }
    Ok(true)
}

/// [`settle_now`], trying again for up to `wait` while another connection has the file open.
async fn settle(path: &Path, wait: std::time::Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match settle_now(path) {
            Err(e)
                if matches!(e.downcast_ref(), Some(ImportRefused::InUse(_)))
                    && started.elapsed() < wait =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

/// Makes `path` a single, complete database file: folds its WAL in and leaves WAL mode, which
/// SQLite allows only when no other connection has it open.
fn settle_now(path: &Path) -> anyhow::Result<()> {
    let conn =
        rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                anyhow::Error::new(ImportRefused::InUse(path.display().to_string()))
            }
            _ => anyhow::Error::new(e).context(format!("settling {}", path.display())),
        })?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(ImportRefused::InUse(path.display().to_string()).into());
    }
    Ok(())
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Imports an export file into an empty ledger at `ledger`, after verifying it (unless `force`).
///
/// The events go into a new file beside `ledger`, which replaces it only once every event is in:
/// an import that fails leaves the ledger as it was, and can simply be run again.
pub async fn import(
    file: &Path,
    ledger: &Path,
    force: bool,
    show: bool,
) -> anyhow::Result<TransferSummary> {
    let replaces = check_target(ledger)?;
    let src = FileSource::open(file)?;
    if !force {
        let report = verify_source(&src, None, show).await?;
        if !report.ok() {
            return Err(ImportRefused::NotVerified(Box::new(report)).into());
        }
    }
    if let Some(dir) = ledger.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let importing = sibling(ledger, "importing");
    remove_database(&importing);
    let imported = async {
        let summary = import_into(&src, &importing, show).await?;
        // The store's threads close their connections as they wind down.
        settle(&importing, std::time::Duration::from_secs(10)).await?;
        if replaces {
            // Checked again now: the empty ledger must not be open while it is replaced.
            check_target(ledger)?;
            settle(ledger, std::time::Duration::ZERO).await?;
        }
        std::fs::rename(&importing, ledger)
            .with_context(|| format!("moving {} to {}", importing.display(), ledger.display()))?;
        Ok(summary)
    }
    .await;
    if imported.is_err() {
        remove_database(&importing);
    }
    imported
}

/// Appends every job of `src` to a new ledger at `path`, closed when this returns.
async fn import_into(src: &FileSource, path: &Path, show: bool) -> anyhow::Result<TransferSummary> {
    let store = SqliteEventStore::open(path)?;
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
    let mut group = drive(src, false, show, "import", group, |g, entry| match entry {
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
    drop(store);
    if skipped > 0 {
        eprintln!("warning: {skipped} unreadable line(s) skipped (--force)");
    }
    Ok(summary)
}
