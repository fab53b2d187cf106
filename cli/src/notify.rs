//! `jobledger notify`: the notifier's dead-letter list — show it, and deliver its records again
//! once the sink works (`redrive`).
//!
//! The list lives in one of two places:
//! - `jobledger dev`'s data folder (`--data-dir`, the default). Redrive configures the sinks as
//!   `jobledger dev` does (`SLACK_*`, `NOTION_*`, `NOTIFY_*` from the environment).
//! - On AWS, the `notifier` Lambda's DynamoDB table (`--dynamodb-table`, feature `dynamodb`;
//!   region, credentials and endpoint from the standard AWS environment). Redrive configures the
//!   sinks exactly as that Lambda does, from its variables (`terraform output
//!   lambda_environments`): `SLACK_CHANNEL` + `SLACK_SECRET_ARN`, `NOTION_DATABASE_ID` +
//!   `NOTION_SECRET_ARN` (tokens read from Secrets Manager, never from plain variables),
//!   `SLACK_API_BASE`, `NOTION_API_BASE`, `NOTIFY_*`, and the events table and results bucket
//!   (`--events-table` or `EVENTS_TABLE`, `--results-bucket` or `RESULTS_BUCKET`).
//!
//! Either way redrive uses the sink's own per-job state, so a record is delivered at most once
//! more, and one older than what the sink has shown since simply leaves the list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use jobledger_events::{EventStore, SqliteEventStore};
use jobledger_handlers::notify::{
    DeadLetter, DeadLetterStore, Notifier, NotifyStateStore, Outcome, RedriveError,
    SqliteNotifyStore,
};
use jobledger_workers::{FsObjectStore, ObjectStore};

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
    /// The `notifier` Lambda's DynamoDB state table (`NOTIFIER_STATE_TABLE`) instead of the data
    /// folder; region, credentials and endpoint from the standard AWS environment (needs the
    /// `dynamodb` feature).
    #[arg(long, value_name = "TABLE", global = true, conflicts_with = "data_dir")]
    dynamodb_table: Option<String>,
    /// With --dynamodb-table, for redrive: the events table histories are read from (default
    /// `EVENTS_TABLE`).
    #[arg(long, value_name = "TABLE", global = true)]
    events_table: Option<String>,
    /// With --dynamodb-table, for redrive: the bucket results are linked from (default
    /// `RESULTS_BUCKET`).
    #[arg(long, value_name = "BUCKET", global = true)]
    results_bucket: Option<String>,
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

/// What a redrive needs besides the list: the sinks, the ledger, the results.
struct Redriver<S, O> {
    notifier: Notifier,
    store: S,
    objects: O,
    /// How to configure a sink that is missing, in this setting.
    configure: &'static str,
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
    states: &impl DeadLetterStore,
    place: &str,
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
        .with_context(|| format!("reading the dead-letter list in {place}"))?
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
    if let Some(table) = args.dynamodb_table.clone() {
        return on_aws(table, args).await;
    }
    // (Not clap's `requires`: it does not see a global argument given before the subcommand.)
    if args.events_table.is_some() || args.results_bucket.is_some() {
        bail!("--events-table and --results-bucket go with --dynamodb-table (the notifier on AWS)");
    }
    let dir = args.data_dir;
    let states = open_states(&dir)?;
    let place = dir.join(NOTIFY_FILE).display().to_string();
    execute(&states, &place, args.command, async || {
        Ok(Redriver {
            notifier: Notifier::from_env().context("notifier configuration (SLACK_*, NOTION_*)")?,
            store: SqliteEventStore::open(dir.join(LEDGER_FILE)).context("opening the ledger")?,
            objects: FsObjectStore::new(dir.join(OBJECTS_DIR))
                .context("opening the object store")?,
            configure: "set its SLACK_* / NOTION_* variables",
        })
    })
    .await
}

/// Lists or redrives the dead letters of `states` (`place` names it in errors); `redriver` is
/// only called when there is something to redrive, so listing needs no sink configuration.
async fn execute<N, S, O>(
    states: &N,
    place: &str,
    command: NotifyCommand,
    redriver: impl AsyncFnOnce() -> Result<Redriver<S, O>>,
) -> Result<ExitCode>
where
    N: NotifyStateStore + DeadLetterStore,
    S: EventStore,
    O: ObjectStore,
{
    match command {
        NotifyCommand::DeadLetters { sink, json } => {
            let letters = selected(states, place, None, sink.as_deref()).await?;
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
            let letters = selected(states, place, job.as_deref(), sink.as_deref()).await?;
            if letters.is_empty() {
                println!("no dead letters to redrive");
                return Ok(ExitCode::SUCCESS);
            }
            let r = redriver().await?;
            let mut failed = 0;
            for l in &letters {
                let what = format!("{} {} v{}", l.sink, l.job_id, l.version);
                match r.notifier.redrive(&r.store, states, &r.objects, l.id).await {
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
                            "skipped    {what}: sink {name} is not configured ({})",
                            r.configure
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

/// The `notifier` Lambda's dead letters in DynamoDB; a redrive configured as that Lambda is.
#[cfg(feature = "dynamodb")]
async fn on_aws(table: String, args: NotifyArgs) -> Result<ExitCode> {
    use std::sync::Arc;

    use jobledger_events::DynamoEventStore;
    use jobledger_handlers::aws::config::NotifierLambdaConfig;
    use jobledger_handlers::notify::secrets::lambda_notifier_config;
    use jobledger_handlers::notify::{DynamoNotifyStore, SystemClock};
    use jobledger_workers::S3ObjectStore;
    use jobledger_workers::aws_clients::{s3_client, sdk_config};

    let sdk = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let states = DynamoNotifyStore::new(dynamo.clone(), &table);
    let place = format!("the DynamoDB table {table}");
    let NotifyArgs {
        command,
        events_table,
        results_bucket,
        ..
    } = args;
    execute(&states, &place, command, async || {
        let env = |name: &str| std::env::var(name).ok();
        let config = NotifierLambdaConfig::from_lookup(|name| match name {
            "NOTIFIER_STATE_TABLE" => Some(table.clone()),
            "EVENTS_TABLE" => events_table.clone().or_else(|| env(name)),
            "RESULTS_BUCKET" => results_bucket.clone().or_else(|| env(name)),
            _ => env(name),
        })
        .context(
            "the notifier Lambda's settings (--events-table or EVENTS_TABLE, --results-bucket \
             or RESULTS_BUCKET, SLACK_CHANNEL + SLACK_SECRET_ARN, NOTION_DATABASE_ID + \
             NOTION_SECRET_ARN)",
        )?;
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let notify = lambda_notifier_config(&config, &secrets).await?;
        let s3 = s3_client(&sdk);
        Ok(Redriver {
            notifier: Notifier::from_config(&notify, Arc::new(SystemClock))
                .context("notifier configuration")?,
            store: DynamoEventStore::events_only(dynamo.clone(), s3.clone(), config.events_table),
            objects: S3ObjectStore::new(s3, config.results_bucket),
            configure: "set SLACK_CHANNEL + SLACK_SECRET_ARN or NOTION_DATABASE_ID + \
                        NOTION_SECRET_ARN, as the notifier Lambda has them",
        })
    })
    .await
}

/// Without the `dynamodb` feature there is no DynamoDB client: say so.
#[cfg(not(feature = "dynamodb"))]
async fn on_aws(table: String, _args: NotifyArgs) -> Result<ExitCode> {
    bail!("--dynamodb-table {table}: this jobledger was built without the `dynamodb` feature")
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
