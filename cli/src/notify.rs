//! `jobledger notify`: the notifier's dead-letter list in `jobledger dev`'s data folder — show it,
//! and deliver its records again once the sink works (`redrive`).
//!
//! Redrive uses the same sink configuration as `jobledger dev` (`SLACK_*`, `NOTION_*`, `NOTIFY_*`
//! from the environment) and the same per-job state, so a record is delivered at most once more,
//! and one older than what the sink has shown since simply leaves the list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use jobledger_events::SqliteEventStore;
use jobledger_handlers::notify::{
    DeadLetter, DeadLetterStore, Notifier, Outcome, RedriveError, SqliteNotifyStore,
};
use jobledger_workers::FsObjectStore;

use crate::dev;

// The files of `jobledger dev`'s data folder this command reads (see `dev::run`).
const LEDGER_FILE: &str = "ledger.sqlite3";
const NOTIFY_FILE: &str = "notify.sqlite3";
const OBJECTS_DIR: &str = "objects";

/// Options of `jobledger notify`.
#[derive(Args, Debug)]
pub struct NotifyArgs {
    /// The data folder of `jobledger dev`.
    #[arg(long, global = true, default_value = dev::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: NotifyCommand,
}

/// What to do with the dead-letter list.
#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// List the notifications a sink gave up on: job, sink, version, tries, last error, when.
    DeadLetters {
        /// Only this sink: `slack` (webhook and bot), `notion`, or a sink's full name.
        #[arg(long)]
        sink: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead letters again (all of them, or those of one job and/or sink); delivered ones
    /// leave the list, failing ones stay with one more try counted.
    Redrive {
        /// Only this job's dead letters.
        #[arg(long)]
        job: Option<String>,
        /// Only this sink's: `slack` (webhook and bot), `notion`, or a sink's full name.
        #[arg(long)]
        sink: Option<String>,
    },
}

/// Whether `filter` (`slack`, `notion` or a full name) selects the sink called `name`.
fn sink_matches(filter: &str, name: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('-'))
}

fn open_states(dir: &Path) -> Result<SqliteNotifyStore> {
    let path = dir.join(NOTIFY_FILE);
    if !path.exists() {
        bail!(
            "no notifier state in {} (has `jobledger dev --data-dir {}` run there?)",
            dir.display(),
            dir.display()
        );
    }
    SqliteNotifyStore::open(&path).with_context(|| format!("opening {}", path.display()))
}

async fn selected(
    states: &SqliteNotifyStore,
    job: Option<&str>,
    sink: Option<&str>,
) -> Result<Vec<DeadLetter>> {
    let job = job
        .map(|j| {
            j.parse::<jobledger_events::JobId>()
                .map_err(|_| anyhow::anyhow!("--job {j:?} is not a job id"))
        })
        .transpose()?;
    Ok(states
        .list(None)
        .await
        .context("reading the dead-letter list")?
        .into_iter()
        .filter(|l| job.is_none_or(|j| l.job_id == j))
        .filter(|l| sink.is_none_or(|s| sink_matches(s, &l.sink)))
        .collect())
}

/// One line of the dead-letter table.
fn row(l: &DeadLetter) -> String {
    let error: String = l.error.replace('\n', " ").chars().take(100).collect();
    format!(
        "{:<6} {}  {:<13} {:>7} {:>5}  {}  {}",
        l.id,
        l.job_id,
        l.sink,
        l.version,
        l.tries,
        l.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
        error
    )
}

/// Runs `jobledger notify …`.
pub async fn run(args: NotifyArgs) -> Result<ExitCode> {
    dev::init_logging("warn");
    let dir = &args.data_dir;
    match args.command {
        NotifyCommand::DeadLetters { sink, json } => {
            let states = open_states(dir)?;
            let letters = selected(&states, None, sink.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:<6} {:<36}  {:<13} {:>7} {:>5}  {:<20}  LAST ERROR",
                    "ID", "JOB", "SINK", "VERSION", "TRIES", "FAILED AT"
                );
                for l in &letters {
                    println!("{}", row(l));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Redrive { job, sink } => {
            let states = open_states(dir)?;
            let letters = selected(&states, job.as_deref(), sink.as_deref()).await?;
            if letters.is_empty() {
                println!("no dead letters to redrive");
                return Ok(ExitCode::SUCCESS);
            }
            let notifier =
                Notifier::from_env().context("notifier configuration (SLACK_*, NOTION_*)")?;
            let store =
                SqliteEventStore::open(dir.join(LEDGER_FILE)).context("opening the ledger")?;
            let objects =
                FsObjectStore::new(dir.join(OBJECTS_DIR)).context("opening the object store")?;
            let mut failed = 0;
            for l in &letters {
                let what = format!("{} {} v{}", l.sink, l.job_id, l.version);
                match notifier.redrive(&store, &states, &objects, l.id).await {
                    Ok(Outcome::Delivered { calls }) => {
                        println!("delivered  {what} ({calls} calls)")
                    }
                    Ok(Outcome::AlreadyDelivered) => {
                        println!("dropped    {what} (the sink already shows a later state)")
                    }
                    Ok(other) => println!("dropped    {what} ({other:?})"),
                    Err(RedriveError::SinkNotConfigured(name)) => {
                        failed += 1;
                        println!(
                            "skipped    {what}: sink {name} is not configured (set its SLACK_* / NOTION_* variables)"
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        println!("failed     {what}: {e}");
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_sink_name_selects_every_sink_of_that_service() {
        assert!(sink_matches("slack", "slack-webhook"));
        assert!(sink_matches("slack", "slack-bot"));
        assert!(sink_matches("notion", "notion"));
        assert!(sink_matches("slack-bot", "slack-bot"));
        assert!(!sink_matches("slack", "notion"));
        assert!(!sink_matches("slack-bot", "slack-webhook"));
        assert!(!sink_matches("slac", "slack-bot"));
    }
}
