//! `jobledger`: the whole stack on one machine (`dev`), and the client commands for people.

mod client;
mod cost;
mod dev;
mod notify;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use client::Client;

/// Runs AI batch jobs and keeps each job's whole life as a verifiable ledger of events.
#[derive(Parser)]
#[command(name = "jobledger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the whole stack in one process: API, ledger, queue, workers (no AWS needed).
    Dev(dev::DevArgs),
    /// Submit a job from a JSON request body or a folder of images or texts.
    Submit(SubmitArgs),
    /// Show one job.
    Status(JobArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show a job's event history as a timeline.
    Events(JobArgs),
    /// Show where to download a finished job's results (a presigned URL on AWS).
    Result(JobArgs),
    /// Cancel a job.
    Cancel(JobArgs),
    /// Estimate a month of jobs on AWS (Fargate Spot/on-demand + model tokens) against an always-on EC2 worker.
    Cost(cost::CostArgs),
    /// The auditor's tool: history, state, verify, rebuild, export, import, stats.
    Replay(ReplayArgs),
    /// Notifications a sink gave up on (`jobledger dev`'s data folder, or the notifier Lambda's
    /// DynamoDB table): list them, redrive them.
    Notify(notify::NotifyArgs),
    /// Run one attempt of one job (JOB_ID, ATTEMPT, JOBLEDGER_DATA_DIR from the environment);
    /// what `jobledger dev --child-process-workers` starts.
    #[command(hide = true)]
    Worker,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    source: jobledger_replay::SourceArgs,
    #[command(subcommand)]
    command: jobledger_replay::ReplayCommand,
}

/// Where the API is.
#[derive(Args, Clone)]
struct Endpoint {
    /// API base URL (the dev server, or the API Gateway stage URL).
    #[arg(
        long,
        env = "JOBLEDGER_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// API key; defaults to the one `jobledger dev` saved in ./.jobledger/api-key.
    #[arg(long, env = "JOBLEDGER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print raw JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

impl Endpoint {
    fn client(&self) -> Result<Client> {
        let key = match &self.api_key {
            Some(key) => key.clone(),
            None => dev::read_saved_api_key(&PathBuf::from(dev::DEFAULT_DATA_DIR)).context(
                "no API key: pass --api-key or set JOBLEDGER_API_KEY (jobledger dev prints one)",
            )?,
        };
        Client::new(&self.endpoint, &key)
    }
}

#[derive(Args)]
struct SubmitArgs {
    /// A JSON request body (as POST /jobs takes) or a folder of images / .txt / .md / .html files.
    path: PathBuf,
    /// Job kind: image_alt, meta_description, content_analysis, noop (guessed for folders).
    #[arg(long)]
    kind: Option<String>,
    /// Idempotency-Key header: resubmitting with the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job to finish, with a progress bar.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Args)]
struct JobArgs {
    /// The job id.
    job_id: String,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Args)]
struct JobsArgs {
    /// Only jobs with this status (e.g. RUNNING, FAILED).
    #[arg(long)]
    status: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Commands::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Commands::Submit(args) => {
            let client = args.endpoint.client()?;
            let body = submit::request_body(&args.path, args.kind.as_deref())?;
            let accepted = client
                .submit(&body, args.idempotency_key.as_deref())
                .await?;
            let job_id = accepted["job_id"].as_str().unwrap_or_default().to_string();
            if !args.wait {
                print_value(&accepted, args.endpoint.json, |v| {
                    format!(
                        "{} {}",
                        v["job_id"].as_str().unwrap_or("?"),
                        v["status"].as_str().unwrap_or("?")
                    )
                });
                return Ok(ExitCode::SUCCESS);
            }
            let view = wait_for(&client, &job_id).await?;
            print_value(&view, args.endpoint.json, summary);
            Ok(exit_for(&view))
        }
        Commands::Status(args) => {
            let view = args.endpoint.client()?.job(&args.job_id).await?;
            print_value(&view, args.endpoint.json, summary);
            Ok(ExitCode::SUCCESS)
        }
        Commands::Jobs(args) => {
            let mut query = vec![("limit", args.limit.to_string())];
            if let Some(s) = args.status {
                query.push(("status", s));
            }
            if let Some(k) = args.kind {
                query.push(("kind", k));
            }
            let page = args.endpoint.client()?.jobs(&query).await?;
            print_value(&page, args.endpoint.json, |p| {
                p["jobs"]
                    .as_array()
                    .map(|jobs| jobs.iter().map(summary).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
            Ok(ExitCode::SUCCESS)
        }
        Commands::Events(args) => {
            let events = args.endpoint.client()?.events(&args.job_id).await?;
            if args.endpoint.json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                for e in &events {
                    println!("{}", timeline_line(e));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Result(args) => {
            let result = args.endpoint.client()?.result(&args.job_id).await?;
            print_value(&result, args.endpoint.json, |v| {
                v["url"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            });
            Ok(ExitCode::SUCCESS)
        }
        Commands::Cancel(args) => {
            let view = args
                .endpoint
                .client()?
                .cancel(&args.job_id, "cancelled from the CLI")
                .await?;
            print_value(&view, args.endpoint.json, summary);
            Ok(ExitCode::SUCCESS)
        }
        Commands::Cost(args) => cost::run(args).map(|()| ExitCode::SUCCESS),
        Commands::Replay(args) => {
            Ok(jobledger_replay::run_to_exit(args.command, args.source).await)
        }
        Commands::Notify(args) => notify::run(args).await,
        Commands::Worker => {
            dev::init_logging("info");
            Ok(jobledger_workers::process::main_from_env().await)
        }
    }
}

fn print_value(v: &Value, json: bool, human: impl Fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

/// One line per job: id, status, kind, progress, cost.
fn summary(v: &Value) -> String {
    let p = &v["progress"];
    let mut line = format!(
        "{}  {:<10}  {:<16}  attempt {}  {}/{} done, {} failed",
        v["job_id"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["attempt"],
        p["done"],
        p["total"],
        p["failed"],
    );
    if let Some(cost) = v.pointer("/usage/cost_usd").and_then(Value::as_f64) {
        line.push_str(&format!("  ${cost:.6}"));
    }
    if let Some(uri) = v["result_uri"].as_str() {
        line.push_str(&format!("\n  result: {uri}"));
    }
    if let Some(err) = v["error"].as_str() {
        line.push_str(&format!("\n  error: {err}"));
    }
    line
}

fn timeline_line(e: &Value) -> String {
    let data = &e["data"];
    let mut keys: Vec<String> = data
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "items" | "metadata" | "notify"))
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    keys.truncate(6);
    format!(
        "{:>4}  {}  {:<18}  {:<24}  {}",
        e["version"],
        e["at"].as_str().unwrap_or("?"),
        e["type"].as_str().unwrap_or("?"),
        e["actor"].as_str().unwrap_or("?"),
        keys.join(" ")
    )
}

/// Polls the job until it finishes, showing progress.
async fn wait_for(client: &Client, job_id: &str) -> Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} items ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let view = client.job(job_id).await?;
        let status = view["status"].as_str().unwrap_or("?").to_string();
        let p = &view["progress"];
        bar.set_length(p["total"].as_u64().unwrap_or(0));
        bar.set_position(p["done"].as_u64().unwrap_or(0) + p["failed"].as_u64().unwrap_or(0));
        bar.set_message(status.clone());
        if matches!(status.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED") {
            bar.finish_and_clear();
            return Ok(view);
        }
        if status == "?" {
            bail!("unexpected answer for job {job_id}: {view}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exit_for(view: &Value) -> ExitCode {
    if view["status"] == "SUCCEEDED" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
