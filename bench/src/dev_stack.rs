//! jobledger's `dev` stack end to end: N no-op jobs submitted over HTTP by C concurrent clients
//! against the durable ledger; the clock stops when the read model shows the last job SUCCEEDED,
//! or at the time cap (then the figure is the rate of what finished, and the count says where it
//! stopped). Same approach as `cli/examples/dev_bench.rs`, with a cap.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::figures::{anon_rss_mb, emit, peak_rss_mb, percentile_ms};

const KEY: &str = "bench-secret-key-0123456789";

/// One end-to-end run's parameters.
#[derive(Clone, Debug)]
pub struct DevRun {
    /// The `jobledger` binary (release build).
    pub bin: PathBuf,
    /// Jobs to submit.
    pub jobs: usize,
    /// Concurrent HTTP clients.
    pub clients: usize,
    /// Wall-clock cap for submitting and finishing.
    pub cap: Duration,
}

/// Kills the server when the run ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn start_server(bin: &Path, data_dir: &Path) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(bin)
        .args(["dev", "--port", "0", "--api-key", KEY, "--workers", "64"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it first: scripts/bench does)",
                bin.display()
            )
        })?;
    let stdout = child.stdout.take().context("server stdout")?;
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout for the whole run so the server never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(endpoint) = line.strip_prefix("jobledger dev: listening on ") {
                let _ = tx.send(endpoint.to_string());
            }
        }
    });
    let endpoint = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the dev server did not report its address within 30 s")?;
    Ok((server, endpoint))
}

fn succeeded(db: &rusqlite::Connection) -> usize {
    // The read model may be mid-migration right after start: a failed count is "none yet".
    db.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'SUCCEEDED'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map_or(0, |n| n as usize)
}

/// What the clients got through: latencies of accepted submits and the refused ones.
#[derive(Default)]
struct Submits {
    latencies: Vec<Duration>,
    refused: usize,
    first_refusal: Option<String>,
}

impl Submits {
    fn refuse(&mut self, why: String) {
        self.refused += 1;
        self.first_refusal.get_or_insert(why);
    }

    fn merge(&mut self, other: Submits) {
        self.latencies.extend(other.latencies);
        self.refused += other.refused;
        if self.first_refusal.is_none() {
            self.first_refusal = other.first_refusal;
        }
    }
}

/// Runs the clients until every job is submitted or the deadline passes. A refused submit (an
/// HTTP error or anything but 202) is counted and reported, as the apalis side counts refused
/// pushes; each job is tried once.
async fn submit_all(
    endpoint: &str,
    jobs: usize,
    clients: usize,
    deadline: Instant,
) -> anyhow::Result<Submits> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, next, url) = (http.clone(), next.clone(), format!("{endpoint}/jobs"));
        tasks.spawn(async move {
            let mut submits = Submits::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                let body = format!(r#"{{"kind":"noop","items":[{{"id":"{i}"}}]}}"#);
                let t = Instant::now();
                let sent = http
                    .post(&url)
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().as_u16() == 202 => {
                        submits.latencies.push(t.elapsed());
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        submits.refuse(format!("submit {i}: HTTP {status}: {text}"));
                    }
                    Err(e) => submits.refuse(format!("submit {i}: {e}")),
                }
            }
            submits
        });
    }
    let mut submits = Submits::default();
    while let Some(joined) = tasks.join_next().await {
        submits.merge(joined?);
    }
    Ok(submits)
}

/// Measures one run and emits `dev.<jobs>.*` figures.
pub async fn measure(run: &DevRun) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, endpoint) = start_server(&run.bin, dir.path())?;
    let db = rusqlite::Connection::open(dir.path().join("views.sqlite3"))?;
    // `/proc` keeps no peak of the anonymous part: sample it while the run lasts.
    let pid = server.0.id().to_string();
    let (stop_sampling, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0.0f64;
        loop {
            if let Some(mb) = anon_rss_mb(&pid) {
                peak = peak.max(mb);
            }
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let start = Instant::now();
    let deadline = start + run.cap;
    let submits = submit_all(&endpoint, run.jobs, run.clients, deadline).await?;
    let submitted_in = start.elapsed();
    if let Some(first) = &submits.first_refusal {
        eprintln!(
            "  jobledger refused {} submit(s); first: {first}",
            submits.refused
        );
    }
    let Submits {
        mut latencies,
        refused,
        ..
    } = submits;
    let submitted = latencies.len();
    let mut done = 0;
    while Instant::now() < deadline {
        done = succeeded(&db);
        if done >= run.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let rss = peak_rss_mb(&server.0.id().to_string());
    // The sampler returns its peak when told to stop (a send to it cannot fail while it runs).
    let _ = stop_sampling.send(());
    let anon = sampler.await?;
    drop(server);
    latencies.sort();
    let k = format!("dev.{}", run.jobs);
    emit(
        format!("{k}.jobs_per_s"),
        done as f64 / elapsed.as_secs_f64(),
    );
    emit(format!("{k}.done"), done as f64);
    emit(format!("{k}.refused"), refused as f64);
    emit(format!("{k}.submitted"), submitted as f64);
    emit(
        format!("{k}.submits_per_s"),
        submitted as f64 / submitted_in.as_secs_f64(),
    );
    emit(format!("{k}.p50_ms"), percentile_ms(&latencies, 0.5));
    emit(format!("{k}.p99_ms"), percentile_ms(&latencies, 0.99));
    emit(format!("{k}.rss_mb"), rss.unwrap_or(f64::NAN));
    emit(format!("{k}.anon_mb"), anon);
    eprintln!(
        "  jobledger dev {} jobs: {done} SUCCEEDED in {:.1} s ({submitted} submitted)",
        run.jobs,
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_jobledger_binary_is_a_clear_error() {
        let err = measure(&DevRun {
            bin: PathBuf::from("/nonexistent/jobledger"),
            jobs: 1,
            clients: 1,
            cap: Duration::from_secs(5),
        })
        .await
        .expect_err("no binary");
        assert!(
            format!("{err:#}").contains("starting /nonexistent/jobledger"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_reports_its_address_is_an_error_not_a_hang() {
        // `true` exits at once without printing the "listening on" line.
        let dir = tempfile::tempdir().expect("temp dir");
        let err = start_server(Path::new("/bin/true"), dir.path())
            .err()
            .expect("no address");
        assert!(
            format!("{err:#}").contains("did not report its address"),
            "{err:#}"
        );
    }
}
