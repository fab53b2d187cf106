//! End-to-end throughput of `jobledger dev`: N no-op jobs submitted over HTTP by C concurrent
//! clients against a durable ledger (`synchronous=FULL`); the clock stops when the read model shows
//! the last job SUCCEEDED. Prints jobs/s, submit latency percentiles and the server's peak RSS.
//! Each size in JOBS (comma-separated, default `1000,10000`) runs on a fresh server and data folder.
//!
//! `cargo build --release -p jobledger-cli && cargo run --release -p jobledger-cli --example dev_bench -- [JOBS] [CLIENTS] [WORKERS]`
//! (`scripts/bench` does both.) Set `JOBLEDGER_BIN` to use another `jobledger` binary.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "bench-secret-key-0123456789";

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) the process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks are 100 per second on Linux (USER_HZ).
    Some(ticks as f64 / 100.0)
}

fn succeeded(db: &rusqlite::Connection) -> usize {
    db.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'SUCCEEDED'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
    .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args
        .first()
        .map(|a| a.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let workers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let bin = std::env::var("JOBLEDGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("jobledger")
        });
    let mut all_done = true;
    for jobs in sizes {
        all_done &= run_once(&bin, jobs, clients, workers).await;
    }
    if !all_done {
        std::process::exit(1);
    }
}

/// One run on a fresh server; prints its figures and answers whether every job succeeded.
async fn run_once(bin: &std::path::Path, jobs: usize, clients: usize, workers: usize) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Command::new(bin)
        .args(["dev", "--port", "0", "--api-key", KEY, "--workers"])
        .arg(workers.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it: cargo build --release -p jobledger-cli)",
                bin.display()
            )
        });
    let stdout = server.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(endpoint) = line.strip_prefix("jobledger dev: listening on ") {
                let _ = tx.send(endpoint.to_string());
            }
        }
    });
    let endpoint = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server start");
    let db = rusqlite::Connection::open(dir.path().join("views.sqlite3")).expect("read model");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, next, endpoint) = (http.clone(), next.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return latencies;
                }
                let body = format!(r#"{{"kind":"noop","items":[{{"id":"{i}"}}]}}"#);
                let t = Instant::now();
                let resp = http
                    .post(format!("{endpoint}/jobs"))
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(jobs);
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    let submitted = start.elapsed();
    let deadline = Duration::from_secs(600);
    let mut done = 0;
    while start.elapsed() < deadline {
        done = succeeded(&db);
        if done >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let rss = peak_rss_kb(server.id());
    let cpu = cpu_seconds(server.id());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status();
    let _ = server.wait();
    latencies.sort();
    let ledger_bytes = std::fs::metadata(dir.path().join("ledger.sqlite3"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.path().join("ledger.sqlite3-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    println!(
        "jobledger dev, end to end ({jobs} no-op jobs, {clients} HTTP clients, {workers} workers, synchronous=FULL)"
    );
    println!(
        "  submitted in        {:>10.2} s  ({:.0} submits/s)",
        submitted.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64()
    );
    if done >= jobs {
        println!(
            "  all SUCCEEDED in    {:>10.2} s  ({:.0} jobs/s end to end)",
            elapsed.as_secs_f64(),
            jobs as f64 / elapsed.as_secs_f64()
        );
    } else {
        println!("  only {done} of {jobs} SUCCEEDED within {deadline:?}");
    }
    println!(
        "  submit latency      p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    match rss {
        Some(kb) => println!("  server peak RSS     {:>10.1} MB", kb as f64 / 1024.0),
        None => println!("  server peak RSS     unknown (no /proc)"),
    }
    if let Some(cpu) = cpu {
        println!(
            "  server CPU time     {:>10.2} s  ({:.0} µs per job)",
            cpu,
            cpu * 1e6 / jobs as f64
        );
    }
    println!(
        "  ledger on disk      {:>10.1} MB",
        ledger_bytes as f64 / 1e6
    );
    done >= jobs
}
