//! `jobledger dev`: the whole stack in one process — API, ledger, change feed, queue, launcher,
//! workers, projector, sweeper — on SQLite files and local folders. No AWS needed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use jobledger_events::{JobId, SqliteEventStore};
use jobledger_handlers::api::{self, ApiKeys, ApiState, Authenticator};
use jobledger_handlers::local::{
    ChildProcessLauncher, DispatcherConfig, InProcessLauncher, LauncherConfig, LedgerCandidates,
    QueueConfig, SHARED_FEED_EVENTS, SharedFeed, SqliteJobQueue, SweeperConfig, WorkFn,
    run_dispatcher, run_launcher, run_sweeper,
};
use jobledger_handlers::notify::{Notifier, SqliteNotifyStore, run_notifier};
use jobledger_handlers::ports::{SystemTime, TaskLauncher};
use jobledger_handlers::project::run_projector;
use jobledger_projections::SqliteViewStore;
use jobledger_workers::config::AiConfig;
use jobledger_workers::{FsObjectStore, WorkerConfig, run_attempt};
use serde_json::Value;
use tokio::sync::watch;

use crate::client::Client;

/// Where `jobledger dev` keeps its state unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = ".jobledger";
const API_KEY_FILE: &str = "api-key";
const API_KEY_ID: &str = "dev";
/// Messages the local launcher takes per receive: more than SQS's 10, so one queue transaction
/// (and one ledger group commit) serves many jobs.
const LOCAL_RECEIVE_BATCH: usize = 256;

/// The demo batches `--demo` submits: one of each kind, from `samples/`.
const DEMO_JOBS: [(&str, &str); 3] = [
    (
        "image_alt",
        include_str!("../../samples/demo-image-alt.json"),
    ),
    (
        "meta_description",
        include_str!("../../samples/demo-meta-description.json"),
    ),
    (
        "content_analysis",
        include_str!("../../samples/demo-content-analysis.json"),
    ),
];

/// Options of `jobledger dev`.
#[derive(Args, Clone, Debug)]
pub struct DevArgs {
    /// Port of the HTTP API (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Folder for the ledger, queue, read model and results.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// API key clients must send as x-api-key (at least 16 characters); by default one is created
    /// on first start and saved in the data folder.
    #[arg(long, env = "JOBLEDGER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Workers running at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Run each worker as a child process (`jobledger worker`) instead of a task in this process.
    #[arg(long)]
    child_process_workers: bool,
    /// How long a silent worker may go without a heartbeat before its attempt is timed out.
    #[arg(long, default_value_t = 300)]
    heartbeat_limit_s: u64,
    /// How often the sweeper looks for lost workers.
    #[arg(long, default_value_t = 30)]
    sweep_every_s: u64,
    /// Submit a demo batch of each kind, wait for them and print the results.
    #[arg(long)]
    demo: bool,
    /// With --demo: stop once the demo jobs have finished (exit status 1 if one did not succeed).
    #[arg(long, requires = "demo")]
    exit_after_demo: bool,
}

/// Reads the API key `jobledger dev` saved in `data_dir`.
pub fn read_saved_api_key(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(API_KEY_FILE);
    let key =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(key.trim().to_string())
}

fn api_key(args: &DevArgs) -> Result<String> {
    if let Some(key) = &args.api_key {
        return Ok(key.clone());
    }
    if let Ok(key) = read_saved_api_key(&args.data_dir) {
        return Ok(key);
    }
    let key = ApiKeys::generate_secret();
    let path = args.data_dir.join(API_KEY_FILE);
    std::fs::write(&path, format!("{key}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(key)
}

/// Logs go to stderr (stdout is for what a person reads), filtered by `RUST_LOG` or `default`.
pub fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the stack until Ctrl-C (or the demo ends with `--exit-after-demo`).
pub async fn run(args: DevArgs) -> Result<()> {
    init_logging("warn");
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ledger =
        SqliteEventStore::open(dir.join("ledger.sqlite3")).context("opening the ledger")?;
    let views =
        SqliteViewStore::open(dir.join("views.sqlite3")).context("opening the read model")?;
    let queue = SqliteJobQueue::open_with(
        dir.join("queue.sqlite3"),
        QueueConfig {
            max_batch: LOCAL_RECEIVE_BATCH,
            ..QueueConfig::default()
        },
    )
    .context("opening the work queue")?;
    let objects = FsObjectStore::new(dir.join("objects")).context("opening the object store")?;
    let key = api_key(&args)?;
    let keys = ApiKeys::new([(API_KEY_ID, key.as_str())]).context("the API key")?;

    // Fail at start, not per job, on a half-configured sink or AI backend.
    let notifier = Notifier::from_env().context("notifier configuration (SLACK_*, NOTION_*)")?;
    let notify_states = SqliteNotifyStore::open(dir.join("notify.sqlite3"))
        .context("opening the notifier state")?;
    let ai = AiConfig::from_lookup(&|k| std::env::var(k).ok())
        .context("AI backend configuration (AI_*)")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // The projector, notifier and dispatcher follow the feed close behind each other: they share
    // the newest events instead of each reading them from SQLite.
    let feed = SharedFeed::new(ledger.clone(), SHARED_FEED_EVENTS);

    {
        let (feed, views, rx) = (feed.clone(), views.clone(), stop_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = run_projector(&feed, &views, rx).await {
                tracing::error!(error = %e, "projector stopped");
            }
        });
    }
    tasks.spawn(run_notifier(
        feed.clone(),
        objects.clone(),
        notify_states,
        notifier,
        stop_rx.clone(),
    ));
    {
        let (feed, queue, rx) = (feed.clone(), queue.clone(), stop_rx.clone());
        tasks.spawn(async move {
            run_dispatcher(
                &feed,
                &queue,
                &SystemTime,
                &DispatcherConfig::default(),
                stopped(rx),
            )
            .await;
        });
    }
    let launcher_config = LauncherConfig {
        wait: Duration::from_secs(5),
        batch_size: LOCAL_RECEIVE_BATCH,
        ..LauncherConfig::default()
    };
    // Workers to wait for at shutdown: they run outside `tasks`, spawned by their launcher.
    let mut children = None;
    let mut in_process = None;
    if args.child_process_workers {
        let exe = std::env::current_exe().context("finding the jobledger executable")?;
        let data_dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let launcher = ChildProcessLauncher::new(
            exe,
            vec!["worker".to_string()],
            vec![(
                "JOBLEDGER_DATA_DIR".to_string(),
                data_dir.display().to_string(),
            )],
            args.workers,
        )
        .stopping_on(stop_rx.clone());
        children = Some(launcher.clone());
        spawn_launcher(
            &mut tasks,
            &ledger,
            &queue,
            launcher,
            launcher_config,
            stop_rx.clone(),
        );
    } else {
        let work: WorkFn = {
            let (ledger, objects, rx) = (ledger.clone(), objects.clone(), stop_rx.clone());
            Arc::new(move |job_id: JobId, attempt: u32| {
                let (ledger, objects, rx, ai) =
                    (ledger.clone(), objects.clone(), rx.clone(), ai.clone());
                Box::pin(async move {
                    let cfg = WorkerConfig {
                        worker_id: format!("local-{job_id}-{attempt}"),
                        ai,
                        ..WorkerConfig::default()
                    };
                    match run_attempt(&ledger, &objects, job_id, attempt, &cfg, rx).await {
                        Ok(outcome) => tracing::info!(%job_id, attempt, ?outcome, "attempt ended"),
                        Err(e) => tracing::warn!(%job_id, attempt, error = %e, "attempt failed"),
                    }
                })
            })
        };
        let launcher = InProcessLauncher::new(work, args.workers);
        in_process = Some(launcher.clone());
        spawn_launcher(
            &mut tasks,
            &ledger,
            &queue,
            launcher,
            launcher_config,
            stop_rx.clone(),
        );
    }
    {
        let (ledger, rx) = (ledger.clone(), stop_rx.clone());
        let candidates = LedgerCandidates::new(ledger.clone());
        let mut config = SweeperConfig {
            every: Duration::from_secs(args.sweep_every_s.max(1)),
            ..SweeperConfig::default()
        };
        config.policy.heartbeat_limit = chrono::Duration::seconds(args.heartbeat_limit_s as i64);
        tasks.spawn(async move {
            run_sweeper(&ledger, &candidates, &SystemTime, &config, stopped(rx)).await;
        });
    }

    let router = api::router(ApiState::new(
        ledger.clone(),
        views.clone(),
        objects.clone(),
        Authenticator::Keys(keys),
    ));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let endpoint = format!("http://{addr}");
    println!("jobledger dev: listening on {endpoint}");
    println!(
        "  data:    {}  (ledger, queue, read model, results)",
        dir.display()
    );
    match &args.api_key {
        Some(_) => println!("  API key: the one given by --api-key / JOBLEDGER_API_KEY"),
        None => println!(
            "  API key: {key}  (saved in {})",
            dir.join(API_KEY_FILE).display()
        ),
    }
    println!(
        "  try:     jobledger submit samples/texts --wait   |   curl -H 'x-api-key: …' {endpoint}/jobs"
    );

    let demo = if args.demo {
        let client = Client::new(&endpoint, &key)?;
        let (stop_tx, exit) = (stop_tx.clone(), args.exit_after_demo);
        Some(tokio::spawn(async move {
            let result = run_demo(&client, dir_display(&args.data_dir)).await;
            if exit {
                stop_tx.send_replace(true);
            }
            result
        }))
    } else {
        None
    };

    {
        // SIGTERM too: it is how a service manager or `docker stop` asks a server to stop.
        let (stop_tx, signal) = (stop_tx.clone(), jobledger_workers::process::stop_signal());
        tokio::spawn(async move {
            signal.await;
            println!("\nstopping: workers checkpoint and hand their attempts back");
            stop_tx.send_replace(true);
        });
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .await
        .context("serving the API")?;
    stop_tx.send_replace(true);
    // Workers get a moment to checkpoint and record the interruption before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
        if let Some(children) = &children {
            children.wait_idle().await;
        }
        if let Some(workers) = &in_process {
            workers.wait_idle().await;
        }
    })
    .await;
    if let Some(demo) = demo {
        demo.await.context("the demo task")??;
    }
    Ok(())
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn dir_display(dir: &Path) -> String {
    dir.display().to_string()
}

fn spawn_launcher<L: TaskLauncher + 'static>(
    tasks: &mut tokio::task::JoinSet<()>,
    ledger: &SqliteEventStore,
    queue: &SqliteJobQueue,
    launcher: L,
    config: LauncherConfig,
    rx: watch::Receiver<bool>,
) {
    let (ledger, queue) = (ledger.clone(), queue.clone());
    tasks.spawn(async move {
        run_launcher(
            &ledger,
            &queue,
            &launcher,
            &SystemTime,
            &config,
            stopped(rx),
        )
        .await;
    });
}

/// Submits one demo job of each kind, waits for them, and prints what they produced.
async fn run_demo(client: &Client, data_dir: String) -> Result<()> {
    let mut jobs = Vec::new();
    for (kind, body) in DEMO_JOBS {
        let body: Value =
            serde_json::from_str(body).with_context(|| format!("the {kind} demo request"))?;
        let accepted = client
            .submit(&body, None)
            .await
            .with_context(|| format!("submitting the {kind} demo"))?;
        let job_id = accepted["job_id"].as_str().unwrap_or_default().to_string();
        println!("demo: submitted {kind:<17} job {job_id}");
        jobs.push((kind, job_id));
    }
    let mut all_ok = true;
    for (kind, job_id) in &jobs {
        let view = loop {
            let view = client.job(job_id).await?;
            if matches!(
                view["status"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            ) {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let status = view["status"].as_str().unwrap_or("?");
        all_ok &= status == "SUCCEEDED";
        let events = client.events(job_id).await?;
        println!(
            "demo: {kind:<17} {status:<9} {} ok, {} failed, {} events in the ledger",
            view["progress"]["done"],
            view["progress"]["failed"],
            events.len()
        );
        if let Some(uri) = view["result_uri"].as_str() {
            println!("      results: {uri}");
            if let Some(path) = uri.strip_prefix("file://") {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for line in text.lines().take(3) {
                    println!("      {}", preview(line));
                }
            }
        }
    }
    println!(
        "demo: history of any job: jobledger events <job_id>; audit: jobledger replay verify --all --data-dir {data_dir}"
    );
    if !all_ok {
        bail!("a demo job did not succeed");
    }
    Ok(())
}

fn preview(line: &str) -> String {
    let line: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let id = line["id"].as_str().unwrap_or("?");
    let shown = match (&line["output"], &line["error"]) {
        (Value::Null, Value::String(err)) => format!("failed: {err}"),
        (output, _) => {
            let text = output
                .get("alt_text")
                .or_else(|| output.get("description"))
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|| output.to_string());
            text.chars().take(140).collect()
        }
    };
    format!("{id}: {shown}")
}
