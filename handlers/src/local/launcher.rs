//! Local task launchers for `jobledger dev`: workers on the tokio runtime, or as child processes.
//!
//! Both limit how many workers run at once (a launch waits for a free slot, which holds the queue
//! back) and are idempotent per attempt, like ECS `RunTask` with a `clientToken`: launching an attempt
//! again answers the first task's id and starts nothing. Whether a worker did its job is read from
//! the ledger, never from how its task ended.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobledger_events::JobId;
use jobledger_events::event::Capacity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::ports::{LaunchError, LaunchResult, TaskLauncher};

/// How long a launch is remembered for idempotency (as ECS remembers a `clientToken`).
pub const LAUNCH_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// The work an in-process task does for `(job_id, attempt)`; it reports through the ledger.
pub type WorkFn = Arc<dyn Fn(JobId, u32) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How often the launch registry drops launches older than [`LAUNCH_MEMORY`]; pruning on every
/// launch would cost a pass over every launch of the last day each time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a launch started: enough to name its task again without keeping the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    /// A task on this runtime.
    InProcess,
    /// A child process, by its pid (`None` if it had exited before its pid was read).
    Process(Option<u32>),
}

impl Task {
    fn arn(self, job_id: JobId, attempt: u32) -> String {
        match self {
            Task::InProcess => format!("local:in-process:{job_id}-{attempt}"),
            Task::Process(Some(pid)) => format!("local:{pid}"),
            Task::Process(None) => format!("local:exited-{job_id}-{attempt}"),
        }
    }
}

/// The launch registry: which attempts were launched, as which task and when, and when it was
/// last pruned. Entries are a few dozen bytes: a day of launches stays small.
struct Registry {
    tasks: HashMap<(JobId, u32), (Task, Instant)>,
    pruned_at: Instant,
}

/// Remembers which attempts were launched, and as which task.
struct Launches(Mutex<Registry>);

impl Default for Launches {
    fn default() -> Self {
        Launches(Mutex::new(Registry {
            tasks: HashMap::new(),
            pruned_at: Instant::now(),
        }))
    }
}

impl Launches {
    fn get(&self, key: (JobId, u32)) -> Result<Option<Task>, LaunchError> {
        let map = self
            .0
            .lock()
            .map_err(|_| LaunchError::permanent("launch registry poisoned"))?;
        Ok(map
            .tasks
            .get(&key)
            .filter(|(_, at)| at.elapsed() < LAUNCH_MEMORY)
            .map(|(task, _)| *task))
    }

    fn insert(&self, key: (JobId, u32), task: Task) -> Result<(), LaunchError> {
        let mut map = self
            .0
            .lock()
            .map_err(|_| LaunchError::permanent("launch registry poisoned"))?;
        let now = Instant::now();
        if now.duration_since(map.pruned_at) >= PRUNE_EVERY {
            map.tasks
                .retain(|_, (_, at)| now.duration_since(*at) < LAUNCH_MEMORY);
            map.pruned_at = now;
        }
        map.tasks.insert(key, (task, now));
        Ok(())
    }
}

/// Launch gate shared by both launchers: one launch of an attempt at a time, then a free slot.
struct Gate {
    slots: Arc<Semaphore>,
    limit: usize,
    launches: Launches,
    /// Serialises launches so two deliveries of one attempt cannot both start a task.
    launching: tokio::sync::Mutex<()>,
}

impl Gate {
    fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Gate {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            launches: Launches::default(),
            launching: tokio::sync::Mutex::new(()),
        }
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, LaunchError> {
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| LaunchError::permanent("launcher is shut down"))
    }

    async fn wait_idle(&self) {
        let all = u32::try_from(self.limit).unwrap_or(u32::MAX);
        // Holding every slot at once means no worker is running; they are released at once.
        let _ = self.slots.acquire_many(all).await;
    }
}

/// Runs each worker as a task on the tokio runtime. Clones share the running workers.
#[derive(Clone)]
pub struct InProcessLauncher {
    work: WorkFn,
    gate: Arc<Gate>,
}

impl InProcessLauncher {
    /// A launcher running `work` for each attempt, at most `limit` at once (at least 1).
    pub fn new(work: WorkFn, limit: usize) -> Self {
        InProcessLauncher {
            work,
            gate: Arc::new(Gate::new(limit)),
        }
    }

    /// Resolves once no worker is running (for shutdown and tests).
    pub async fn wait_idle(&self) {
        self.gate.wait_idle().await;
    }

    /// Workers running now.
    pub fn running(&self) -> usize {
        self.gate.limit - self.gate.slots.available_permits()
    }
}

impl TaskLauncher for InProcessLauncher {
    async fn launch(&self, job_id: JobId, attempt: u32) -> Result<LaunchResult, LaunchError> {
        let _one_at_a_time = self.gate.launching.lock().await;
        let key = (job_id, attempt);
        if self.gate.launches.get(key)?.is_none() {
            let slot = self.gate.slot().await?;
            self.gate.launches.insert(key, Task::InProcess)?;
            let work = (self.work)(job_id, attempt);
            tokio::spawn(async move {
                work.await;
                drop(slot);
                tracing::debug!(%job_id, attempt, "in-process worker returned");
            });
        }
        Ok(LaunchResult {
            task_arn: Task::InProcess.arn(job_id, attempt),
            capacity: Capacity::Local,
        })
    }
}

/// Runs each worker as a child process of a given program, with `JOB_ID` and `ATTEMPT` set.
/// Clones share the running children.
#[derive(Clone)]
pub struct ChildProcessLauncher {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    gate: Arc<Gate>,
    stop: Option<watch::Receiver<bool>>,
}

impl ChildProcessLauncher {
    /// A launcher running `program args…` per attempt with `env` added to the environment (e.g.
    /// `JOBLEDGER_DATA_DIR`), at most `limit` at once (at least 1).
    pub fn new(
        program: impl Into<PathBuf>,
        args: Vec<String>,
        env: Vec<(String, String)>,
        limit: usize,
    ) -> Self {
        ChildProcessLauncher {
            program: program.into(),
            args,
            env,
            gate: Arc::new(Gate::new(limit)),
            stop: None,
        }
    }

    /// Sends SIGTERM to every running child once `stop` is raised: like an ECS task being
    /// stopped, a worker then checkpoints and hands its attempt back. Without it, children
    /// outlive a stopped server and finish their attempts alone.
    pub fn stopping_on(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Resolves once no child is running (for shutdown and tests).
    pub async fn wait_idle(&self) {
        self.gate.wait_idle().await;
    }

    /// Children running now.
    pub fn running(&self) -> usize {
        self.gate.limit - self.gate.slots.available_permits()
    }
}

/// Sends SIGTERM to a child; a failure is logged (the child may have just exited).
fn terminate(pid: u32, job_id: JobId, attempt: u32) {
    let sent = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .map(|pid| rustix::process::kill_process(pid, rustix::process::Signal::TERM));
    match sent {
        Some(Ok(())) => tracing::info!(%job_id, attempt, pid, "asked the worker to stop"),
        Some(Err(e)) => {
            tracing::warn!(%job_id, attempt, pid, error = %e, "cannot signal the worker")
        }
        None => tracing::warn!(%job_id, attempt, pid, "not a process id"),
    }
}

impl TaskLauncher for ChildProcessLauncher {
    async fn launch(&self, job_id: JobId, attempt: u32) -> Result<LaunchResult, LaunchError> {
        let _one_at_a_time = self.gate.launching.lock().await;
        let key = (job_id, attempt);
        if let Some(task) = self.gate.launches.get(key)? {
            return Ok(LaunchResult {
                task_arn: task.arn(job_id, attempt),
                capacity: Capacity::Local,
            });
        }
        let slot = self.gate.slot().await?;
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("JOB_ID", job_id.to_string())
            .env("ATTEMPT", attempt.to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| {
                let reason = format!("cannot start {}: {e}", self.program.display());
                // A missing or forbidden program will not appear by trying again; running out of
                // processes or file descriptors may pass.
                match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        LaunchError::permanent(reason)
                    }
                    _ => LaunchError::retryable(reason),
                }
            })?;
        let launched = Task::Process(child.id());
        self.gate.launches.insert(key, launched)?;
        let task_arn = launched.arn(job_id, attempt);
        let task = task_arn.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let stopping = async move {
                let raised = match stop {
                    Some(mut stop) => stop.wait_for(|s| *s).await.is_ok(),
                    None => false,
                };
                if !raised {
                    // No stop to forward, or its sender is gone: the child runs on.
                    std::future::pending::<()>().await;
                }
            };
            let exit = tokio::select! {
                exit = child.wait() => exit,
                () = stopping => {
                    if let Some(pid) = child.id() {
                        terminate(pid, job_id, attempt);
                    }
                    child.wait().await
                }
            };
            // The exit is only logged: the ledger says whether the attempt succeeded.
            match exit {
                Ok(status) if status.success() => {
                    tracing::debug!(%job_id, attempt, task, "worker exited")
                }
                Ok(status) => {
                    tracing::warn!(%job_id, attempt, task, %status, "worker exited with failure")
                }
                Err(e) => {
                    tracing::warn!(%job_id, attempt, task, error = %e, "cannot wait for worker")
                }
            }
            drop(slot);
        });
        Ok(LaunchResult {
            task_arn,
            capacity: Capacity::Local,
        })
    }
}
