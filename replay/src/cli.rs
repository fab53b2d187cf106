//! The `replay` command line, shared by the `replay` binary and `jobledger replay`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{ArgGroup, Args, Subcommand};
use jobledger_events::JobId;
use jobledger_projections::Period;

use crate::history::{Until, events_of, render, state_at, timeline};
use crate::source::{AnySource, FileSource, HistorySource, SqliteSource};
use crate::transfer::ImportRefused;
use crate::views::Projection;

/// Where replay reads from (flatten into a parent command with `#[command(flatten)]`).
#[derive(Args, Clone, Debug)]
pub struct SourceArgs {
    /// Data folder of the embedded stack: ledger at `<dir>/ledger.sqlite3`, views at `<dir>/views.sqlite3`.
    #[arg(
        long,
        env = "JOBLEDGER_DATA_DIR",
        default_value = ".jobledger",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Read histories from an export file (.jsonl or .jsonl.zst) instead of the ledger.
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        conflicts_with = "dynamodb_table"
    )]
    pub from: Option<PathBuf>,
    /// Read histories from this DynamoDB events table (region, credentials and endpoint from
    /// the standard AWS environment; needs the `dynamodb` feature).
    #[arg(long, value_name = "TABLE", global = true)]
    pub dynamodb_table: Option<String>,
    /// Segments of the parallel Scan that reads a whole DynamoDB table.
    #[arg(long, value_name = "N", global = true, default_value_t = 4)]
    pub dynamodb_segments: u32,
}

impl SourceArgs {
    /// The ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite3")
    }

    /// The view store file.
    pub fn views_path(&self) -> PathBuf {
        self.data_dir.join("views.sqlite3")
    }

    /// Opens the chosen source.
    pub async fn open(&self) -> anyhow::Result<AnySource> {
        if let Some(table) = &self.dynamodb_table {
            return open_dynamo(table, self.dynamodb_segments).await;
        }
        Ok(match &self.from {
            Some(file) => AnySource::File(FileSource::open(file)?),
            None => AnySource::Sqlite(SqliteSource::open(&self.ledger_path())?),
        })
    }
}

/// Rebuilds the DynamoDB read model (`rebuild --views-table`).
#[cfg(feature = "dynamodb")]
async fn rebuild_dynamo_views(
    src: &AnySource,
    table: &str,
    projection: Projection,
    show: bool,
) -> anyhow::Result<crate::views::RebuildReport> {
    use anyhow::Context as _;
    let sdk = jobledger_workers::aws_clients::sdk_config().await;
    let views =
        jobledger_projections::DynamoJobViews::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    // Fail now, naming the table, before anything is cleared.
    jobledger_projections::ViewStore::load_stats(&views)
        .await
        .with_context(|| format!("reading the DynamoDB jobs table {table}"))?;
    crate::views::rebuild(src, &views, projection, false, show).await
}

#[cfg(not(feature = "dynamodb"))]
async fn rebuild_dynamo_views(
    _src: &AnySource,
    table: &str,
    _projection: Projection,
    _show: bool,
) -> anyhow::Result<crate::views::RebuildReport> {
    bail!("cannot rebuild DynamoDB table {table}: replay was built without its `dynamodb` feature")
}

#[cfg(feature = "dynamodb")]
async fn open_dynamo(table: &str, segments: u32) -> anyhow::Result<AnySource> {
    let src = crate::dynamo_source::DynamoSource::from_env(table, segments).await;
    // Fail now, naming the table, rather than in the middle of a command.
    src.extent().await?;
    Ok(AnySource::Dynamo(src))
}

#[cfg(not(feature = "dynamodb"))]
async fn open_dynamo(table: &str, _segments: u32) -> anyhow::Result<AnySource> {
    bail!("cannot read DynamoDB table {table}: replay was built without its `dynamodb` feature")
}

impl SourceArgs {}

/// Parses RFC 3339 (`2025-01-31T12:00:00Z`) or a plain date (midnight UTC).
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"))
}

/// The auditor's commands.
#[derive(Subcommand, Clone, Debug)]
pub enum ReplayCommand {
    /// A job's timeline: time, version, event, actor, key fields, time spent in each status.
    History {
        /// The job id.
        job: JobId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The job as it stood at a version or a time (aggregate state and read-model view, as JSON).
    #[command(group(ArgGroup::new("point").required(true).args(["at_version", "at"])))]
    State {
        /// The job id.
        job: JobId,
        /// Replay up to and including this version.
        #[arg(long)]
        at_version: Option<u64>,
        /// Replay the events recorded at or before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_when)]
        at: Option<DateTime<Utc>>,
    },
    /// Recomputes the hash chain and checks every invariant; exit 0 only when all hold.
    #[command(group(ArgGroup::new("scope").required(true).args(["job", "all"])))]
    Verify {
        /// One job.
        job: Option<JobId>,
        /// Every job.
        #[arg(long)]
        all: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recomputes read models into the view store (never notifies anyone).
    Rebuild {
        /// Which read models.
        #[arg(long, value_enum, default_value = "all")]
        projection: Projection,
        /// Write nothing; report how the current read model differs (exit 1 when it does).
        #[arg(long)]
        dry_run: bool,
        /// Rebuild the AWS read model, this DynamoDB jobs table, instead of `<data-dir>/views.sqlite3`
        /// (region, credentials and endpoint from the standard AWS environment; needs the
        /// `dynamodb` feature). It is emptied first and refilled in place.
        #[arg(long, value_name = "TABLE")]
        views_table: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writes histories to a .jsonl (or .jsonl.zst) file with each job's head pin.
    #[command(group(ArgGroup::new("scope").required(true).args(["job", "all"])))]
    Export {
        /// One job.
        job: Option<JobId>,
        /// Every job.
        #[arg(long)]
        all: bool,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Loads an export file into an empty ledger at `<data-dir>/ledger.sqlite3` (verified first).
    Import {
        /// The export file.
        file: PathBuf,
        /// Import even if verification finds problems (unreadable lines are skipped).
        #[arg(long)]
        force: bool,
    },
    /// Counts by status and kind, retries, interruptions, p50/p95 durations and cost of jobs created in a period.
    Stats {
        /// First instant included (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_when)]
        since: Option<DateTime<Utc>>,
        /// First instant excluded (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_when)]
        until: Option<DateTime<Utc>>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs one command as a process does: an error is printed and exits 2, so a script can tell
/// "the command could not run" from "findings were reported" (1).
pub async fn run_to_exit(cmd: ReplayCommand, source: SourceArgs) -> ExitCode {
    match run(cmd, source).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one command. Exit code 0: done and (for `verify`) every rule held; 1: findings or
/// differences were reported; errors (unreadable source, bad arguments) come back as `Err`.
pub async fn run(cmd: ReplayCommand, source: SourceArgs) -> anyhow::Result<ExitCode> {
    let show = std::io::stderr().is_terminal();
    match cmd {
        ReplayCommand::History { job, json } => {
            let src = source.open().await?;
            let (events, problems) = events_of(src.job(job, false).await?);
            if events.is_empty() && problems.is_empty() {
                bail!("job {job} is not in {}", src.describe());
            }
            let t = timeline(job, &events, problems);
            if json {
                print_json(&t)?;
            } else {
                print!("{}", render(&t));
            }
            Ok(ExitCode::SUCCESS)
        }
        ReplayCommand::State {
            job,
            at_version,
            at,
        } => {
            let src = source.open().await?;
            let (events, problems) = events_of(src.job(job, false).await?);
            if let Some(p) = problems.first() {
                bail!("job {job}: {p}; run verify");
            }
            if events.is_empty() {
                bail!("job {job} is not in {}", src.describe());
            }
            let until = match (at_version, at) {
                (Some(v), _) => Until::Version(v),
                (None, Some(t)) => Until::Time(t),
                (None, None) => bail!("give --at-version or --at"),
            };
            print_json(&state_at(job, &events, until)?)?;
            Ok(ExitCode::SUCCESS)
        }
        ReplayCommand::Verify { job, all: _, json } => {
            let src = source.open().await?;
            let started = std::time::Instant::now();
            let report = crate::verify::verify_source(&src, job, show).await?;
            let secs = started.elapsed().as_secs_f64();
            if json {
                print_json(&report)?;
            } else {
                for f in &report.findings {
                    println!("{f}");
                }
                if report.total_findings > report.findings.len() as u64 {
                    println!(
                        "… and {} more finding(s)",
                        report.total_findings - report.findings.len() as u64
                    );
                }
                println!(
                    "{}: {} job(s), {} event(s) in {secs:.2}s; {} finding(s); results: {} checked, {} unreachable here",
                    src.describe(),
                    report.jobs,
                    report.events,
                    report.total_findings,
                    report.results_checked,
                    report.results_unreachable
                );
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ReplayCommand::Rebuild {
            projection,
            dry_run,
            views_table,
            json,
        } => {
            if let (Some(table), true) = (&views_table, dry_run) {
                // A dry run walks the read model in job id order; a DynamoDB table can only be
                // scanned whole, once per page of that walk.
                bail!(
                    "--dry-run cannot compare against the DynamoDB table {table}: run it against an \
                     embedded read model, or rebuild the table"
                );
            }
            let src = source.open().await?;
            let started = std::time::Instant::now();
            let report = match &views_table {
                Some(table) => rebuild_dynamo_views(&src, table, projection, show).await?,
                None => {
                    crate::views::rebuild_embedded(
                        &src,
                        &source.views_path(),
                        projection,
                        dry_run,
                        show,
                    )
                    .await?
                }
            };
            let secs = started.elapsed().as_secs_f64();
            if json {
                print_json(&report)?;
            } else {
                for e in &report.fold.errors {
                    println!("error: {e}");
                }
                for d in &report.diffs {
                    println!("{} {}", d.change, d.job_id);
                    for (field, (stored, rebuilt)) in &d.fields {
                        println!("    {field}: {stored} -> {rebuilt}");
                    }
                }
                for (field, (stored, rebuilt)) in &report.stats_diff {
                    println!("stats {field}: {stored} -> {rebuilt}");
                }
                if dry_run && !report.stats_saved && projection != Projection::Jobs {
                    println!(
                        "stats: none saved yet (only a rebuild saves them); nothing to compare"
                    );
                }
                println!(
                    "{} event(s), {} job(s) folded in {secs:.2}s ({:.0} events/s); {} view(s) written; {} difference(s); {} error(s)",
                    report.fold.events,
                    report.fold.jobs,
                    report.fold.events as f64 / secs.max(1e-9),
                    report.written,
                    report.diff_count + report.stats_diff.len() as u64,
                    report.fold.error_count
                );
            }
            let clean = report.fold.error_count == 0
                && report.diff_count == 0
                && report.stats_diff.is_empty();
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ReplayCommand::Export { job, all: _, out } => {
            let src = source.open().await?;
            let s = crate::transfer::export(&src, job, &out, show).await?;
            eprintln!(
                "exported {} job(s), {} event(s) to {}",
                s.jobs,
                s.events,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ReplayCommand::Import { file, force } => {
            match crate::transfer::import(&file, &source.ledger_path(), force, show).await {
                Ok(s) => {
                    eprintln!(
                        "imported {} job(s), {} event(s) into {}",
                        s.jobs,
                        s.events,
                        source.ledger_path().display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => match e.downcast::<ImportRefused>() {
                    Ok(ImportRefused::NotVerified(report)) => {
                        for f in report.findings.iter().take(50) {
                            println!("{f}");
                        }
                        eprintln!(
                            "{} finding(s) in {}; nothing imported (--force to import anyway)",
                            report.total_findings,
                            file.display()
                        );
                        Ok(ExitCode::from(1))
                    }
                    Ok(other) => Err(other.into()),
                    Err(e) => Err(e),
                },
            }
        }
        ReplayCommand::Stats { since, until, json } => {
            let src = source.open().await?;
            let period = Period {
                from: since,
                to: until,
            };
            let (stats, summary) = crate::views::stats(&src, period, show).await?;
            if json {
                print_json(&stats)?;
            } else {
                println!(
                    "jobs created in [{}, {}): {}",
                    since.map_or("-∞".into(), |t| t.to_rfc3339()),
                    until.map_or("+∞".into(), |t| t.to_rfc3339()),
                    stats.jobs
                );
                println!("by status: {}", fmt_counts(&stats.by_status));
                println!("by kind:   {}", fmt_counts(&stats.by_kind));
                println!(
                    "retries: {}  interruptions: {}  finished: {}",
                    stats.retries, stats.interruptions, stats.finished
                );
                println!(
                    "duration p50: {}  p95: {}",
                    stats
                        .p50_duration_ms
                        .map_or("-".into(), |m| format!("{:.1}s", m as f64 / 1000.0)),
                    stats
                        .p95_duration_ms
                        .map_or("-".into(), |m| format!("{:.1}s", m as f64 / 1000.0))
                );
                println!("total cost: ${:.4}", stats.total_cost_usd);
                for e in &summary.errors {
                    println!("error: {e}");
                }
            }
            Ok(if summary.error_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn fmt_counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
