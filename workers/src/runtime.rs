//! The worker runtime: claim an attempt, process its items, report progress with checkpoints,
//! stop on cancellation or SIGTERM, write the results and record the outcome.
//!
//! The runtime never decides a transition: every step is a `Command` sent through
//! `jobledger_events::execute`, and a refusal means the job moved on without this worker.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use jobledger_events::event::Usage;
use jobledger_events::execute::{Executed, record};
use jobledger_events::spec::{Item, JobInput};
use jobledger_events::{
    AppendBatch, Clock, Command, CommandContext, EventStore, ExecuteError, Hash, Job, JobId,
    Rejection, Status, StoreError, execute,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::backend::{Backend, Generated, ItemError, ItemUsage};
use crate::backends::KindBackends;
use crate::config::WorkerConfig;
use crate::kinds::document::Document;
use crate::kinds::image_alt::ImageInput;
use crate::kinds::run_item;
use crate::objects::{ObjectError, ObjectStore};

/// The reason recorded when the worker is asked to stop (Spot reclaim, scale-in, Ctrl-C).
pub const SHUTDOWN_REASON: &str = "SIGTERM";

/// Checkpoint manifests carry this in `format`, so a future layout can be told apart.
pub const CHECKPOINT_FORMAT: &str = "jobledger-checkpoint/1";

/// One line of the results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// The item's id.
    pub id: String,
    /// Whether the item produced an output.
    pub ok: bool,
    /// The kind's output (null for a failed item).
    pub output: Option<serde_json::Value>,
    /// Why the item failed (null for a good one).
    pub error: Option<String>,
    /// What the item used.
    pub usage: ItemUsage,
}

/// A checkpoint manifest: the segments that together hold every finished item's result.
///
/// Segments are written once and never changed; each manifest lists all segments so far, including
/// those of earlier attempts, so the next attempt needs only the latest manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The job.
    pub job_id: JobId,
    /// The attempt that wrote this manifest.
    pub attempt: u32,
    /// Items in the job.
    pub total: u64,
    /// Items with a result in the segments.
    pub finished: u64,
    /// URIs of JSONL segments, one [`SegmentLine`] per line.
    pub segments: Vec<String>,
}

/// One line of a checkpoint segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentLine {
    /// The item's position in the job's input.
    pub index: usize,
    /// Its result.
    pub result: ResultLine,
}

/// How an attempt ended, when it ended cleanly.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// Every item was processed; `JobSucceeded` was appended.
    Succeeded {
        /// Where the results are.
        result_uri: String,
        /// SHA-256 hex of the results file.
        result_sha256: String,
        /// Items with an output.
        items_ok: u64,
        /// Items failed (with a reason in the results).
        items_failed: u64,
        /// What the attempt used.
        usage: Usage,
    },
    /// The claim (`StartAttempt`) was refused: stale attempt, cancelled or finished job. Nothing was written.
    Refused(Rejection),
    /// The job was being cancelled; the worker checkpointed and confirmed.
    Cancelled {
        /// The last checkpoint written.
        checkpoint_uri: Option<String>,
    },
    /// The worker was asked to stop; it checkpointed and appended `WorkerInterrupted`.
    Interrupted {
        /// The checkpoint the next attempt resumes from.
        checkpoint_uri: Option<String>,
    },
    /// A later command was refused: the job moved on (timed out, retried, finished) without this worker.
    Superseded(Rejection),
}

/// Why an attempt failed. After the claim, the runtime has already appended `AttemptFailed`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Store(#[from] ExecuteError),
    /// The object store failed.
    #[error("object store: {0}")]
    Objects(#[from] ObjectError),
    /// The job's input cannot be used (unreadable `input_uri`, bad JSONL).
    #[error("input: {0}")]
    Input(String),
    /// The AI backend failed for a reason that is not the item's fault.
    #[error("backend: {message}")]
    Backend {
        /// Whether another attempt may succeed.
        retryable: bool,
        /// What went wrong.
        message: String,
    },
    /// An invariant did not hold (a bug).
    #[error("internal: {0}")]
    Internal(String),
}

impl WorkerError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Store(ExecuteError::Store(e)) => e.is_retryable(),
            WorkerError::Store(_) => false,
            WorkerError::Objects(ObjectError::Backend(_)) => true,
            WorkerError::Objects(_) => false,
            WorkerError::Input(_) | WorkerError::Internal(_) => false,
            WorkerError::Backend { retryable, .. } => *retryable,
        }
    }
}

/// Runs attempt `attempt` of `job_id` with the backends `cfg.ai` names (builtin unless
/// configured otherwise). See [`run_attempt_with`].
pub async fn run_attempt<S: EventStore, O: ObjectStore>(
    store: &S,
    objects: &O,
    job_id: JobId,
    attempt: u32,
    cfg: &WorkerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<AttemptOutcome, WorkerError> {
    // Built before the claim: a deployment that cannot build its backend must not take the attempt.
    let backend = KindBackends::from_config(&cfg.ai)
        .await
        .map_err(|e| WorkerError::Backend {
            retryable: false,
            message: e.to_string(),
        })?;
    run_attempt_with(store, objects, &backend, job_id, attempt, cfg, shutdown).await
}

/// Runs attempt `attempt` of `job_id` with `backend`, until it succeeds, is cancelled, is told to
/// stop (`shutdown` becomes `true`) or fails.
///
/// A refused claim or a refused later command is a clean end (`Ok`). Any other error appends
/// `AttemptFailed` (retryable or not, see [`WorkerError::is_retryable`]) and is returned.
pub async fn run_attempt_with<S: EventStore, O: ObjectStore, B: Backend>(
    store: &S,
    objects: &O,
    backend: &B,
    job_id: JobId,
    attempt: u32,
    cfg: &WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<AttemptOutcome, WorkerError> {
    let started = Instant::now();
    let mut ctx = CommandContext::continuing(format!("worker:{}", cfg.worker_id), Utc::now());
    let claim = Command::StartAttempt {
        attempt,
        worker: cfg.worker_id.clone(),
    };
    // `execute` replays the job's events, decides and appends: the claim is refused, with nothing
    // written, if the attempt is stale or the job was cancelled or has finished.
    let claimed = match execute(store, job_id, &claim, &ctx).await {
        Ok(executed) => executed,
        Err(ExecuteError::Rejected(r)) => {
            tracing::info!(%job_id, attempt, rejection = %r, "attempt refused");
            return Ok(AttemptOutcome::Refused(r));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(e) = claimed.events.first() {
        ctx.correlation_id = e.correlation_id.clone();
        ctx.causation_id = e.event_id.to_string();
    }
    let head = Head::after(&claimed);
    tracing::info!(%job_id, attempt, backend = backend.name(), "attempt started");
    let mut run = Run {
        store,
        objects,
        job_id,
        attempt,
        cfg,
        ctx,
        results: Vec::new(),
        unsaved: Vec::new(),
        segments: Vec::new(),
        seq: 0,
        ok: 0,
        failed: 0,
        checkpoint_uri: None,
        usage: Vec::new(),
        head,
    };
    match run.go(backend, claimed.job, &mut shutdown, started).await {
        Ok(outcome) => Ok(outcome),
        Err(err) => {
            run.fail(&err).await;
            Err(err)
        }
    }
}

/// A backend under the job's token budget (`max_tokens`): once the items' input and output tokens
/// reach it, every later item fails without calling the model. Items already in flight finish, so
/// the total can pass the budget by at most the concurrent items' use.
struct Budgeted<'a, B> {
    inner: &'a B,
    limit: Option<u64>,
    spent: AtomicU64,
}

impl<'a, B: Backend> Budgeted<'a, B> {
    fn new(inner: &'a B, limit: Option<u64>, spent: u64) -> Self {
        Budgeted {
            inner,
            limit,
            spent: AtomicU64::new(spent),
        }
    }

    async fn guard(
        &self,
        call: impl Future<Output = Result<Generated, ItemError>>,
    ) -> Result<Generated, ItemError> {
        if let Some(limit) = self.limit {
            let spent = self.spent.load(Ordering::SeqCst);
            if spent >= limit {
                return Err(ItemError::Failed {
                    reason: format!(
                        "token budget spent: the job's max_tokens is {limit} and {spent} tokens were used before this item"
                    ),
                    usage: ItemUsage::default(),
                });
            }
        }
        let result = call.await;
        let used = match &result {
            Ok(g) => g.usage.input_tokens + g.usage.output_tokens,
            Err(ItemError::Failed { usage, .. }) => usage.input_tokens + usage.output_tokens,
            Err(_) => 0,
        };
        self.spent.fetch_add(used, Ordering::SeqCst);
        result
    }
}

impl<B: Backend> Backend for Budgeted<'_, B> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        self.guard(self.inner.alt_text(image)).await
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.guard(self.inner.meta_description(doc)).await
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.guard(self.inner.analyse(doc)).await
    }
}

/// Resolves when `true` is sent; never, if the sender is gone (nobody can ask any more).
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct Run<'a, S, O> {
    store: &'a S,
    objects: &'a O,
    job_id: JobId,
    attempt: u32,
    cfg: &'a WorkerConfig,
    ctx: CommandContext,
    /// Result of each item by input position, once finished (this attempt or a checkpoint).
    results: Vec<Option<ResultLine>>,
    /// Positions finished since the last checkpoint.
    unsaved: Vec<usize>,
    /// Checkpoint segments so far, earlier attempts' included.
    segments: Vec<String>,
    seq: u32,
    ok: u64,
    failed: u64,
    checkpoint_uri: Option<String>,
    /// Usage of items processed by this attempt (resumed items were paid for before).
    usage: Vec<ItemUsage>,
    /// The job as this worker's last append left it.
    head: Option<Head>,
}

/// The job as of the last event this worker appended: the next command is decided on it and
/// appended without loading the history again. The append's expected version guards it: if anyone
/// appended since, the store refuses and the command goes through `execute`, which reloads.
struct Head {
    job: Job,
    hash: Hash,
    at: DateTime<Utc>,
}

impl Head {
    fn after(executed: &Executed) -> Option<Head> {
        executed.events.last().map(|last| Head {
            job: executed.job.clone(),
            hash: last.hash,
            at: last.at,
        })
    }
}

impl<S: EventStore, O: ObjectStore> Run<'_, S, O> {
    async fn exec(&mut self, cmd: &Command) -> Result<Executed, ExecuteError> {
        self.ctx.now = Utc::now();
        let executed = match self.append_on_head(cmd).await? {
            Some(executed) => executed,
            None => execute(self.store, self.job_id, cmd, &self.ctx).await?,
        };
        self.head = Head::after(&executed);
        Ok(executed)
    }

    /// Decides `cmd` on [`Head`] and appends; `None` when that cannot settle it (no head, a
    /// refusal that a fresh load must confirm, or someone appended meanwhile).
    async fn append_on_head(&self, cmd: &Command) -> Result<Option<Executed>, ExecuteError> {
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let Ok(new_events) = head.job.decide(cmd) else {
            return Ok(None);
        };
        let mut ctx = self.ctx.clone();
        // The ledger's times never go back, whatever this worker's clock says (as in `execute`).
        ctx.now = ctx.now.max(head.at);
        let events = record(self.job_id, head.job.version, head.hash, &new_events, &ctx);
        let batch = AppendBatch {
            job_id: self.job_id,
            expected_version: head.job.version,
            events: events.clone(),
            idempotency: None,
        };
        match self.store.append(batch).await {
            Ok(()) => Ok(Some(Executed {
                job: new_events.iter().fold(head.job.clone(), Job::evolve),
                events,
            })),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn clock() -> Clock {
        Clock {
            now: Utc::now(),
            jitter: rand::random::<f64>(),
        }
    }

    async fn go<B: Backend>(
        &mut self,
        backend: &B,
        job: Job,
        shutdown: &mut watch::Receiver<bool>,
        started: Instant,
    ) -> Result<AttemptOutcome, WorkerError> {
        let spec = job
            .spec
            .clone()
            .ok_or_else(|| WorkerError::Internal("a started job has no spec".into()))?;
        let items = self.load_items(&spec.input).await?;
        self.results = vec![None; items.len()];
        if let Some(uri) = &job.checkpoint_uri {
            self.resume(uri, &items).await?;
        }
        let pending: Vec<usize> = (0..items.len())
            .filter(|&i| self.results[i].is_none())
            .collect();
        // Tokens of resumed items were spent by earlier attempts and count against the budget.
        let resumed_tokens = self
            .results
            .iter()
            .flatten()
            .map(|r| r.usage.input_tokens + r.usage.output_tokens)
            .sum();
        let budgeted = Budgeted::new(backend, spec.max_tokens, resumed_tokens);
        let backend = &budgeted;
        tracing::info!(job_id = %self.job_id, total = items.len(), resumed = items.len() - pending.len(), "processing items");

        let kind = spec.kind;
        let limits = self.cfg.limits;
        let objects = self.objects;
        let items = &items;
        let mut pending = pending.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let period = self.cfg.progress_every;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while in_flight.len() < self.cfg.concurrency.max(1) {
                let Some(i) = pending.next() else { break };
                in_flight.push(async move {
                    (
                        i,
                        run_item(kind, &items[i], backend, objects, &limits).await,
                    )
                });
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                // Stop first: after SIGTERM the grace period is short, so no new item may start.
                biased;
                () = stop_requested(shutdown) => {
                    drop(in_flight);
                    return self.interrupt().await;
                }
                Some((i, result)) = in_flight.next() => {
                    let line = match result {
                        Ok(generated) => ResultLine {
                            id: items[i].id.clone(),
                            ok: true,
                            output: Some(generated.output),
                            error: None,
                            usage: generated.usage,
                        },
                        Err(ItemError::Invalid(reason)) => ResultLine {
                            id: items[i].id.clone(),
                            ok: false,
                            output: None,
                            error: Some(reason),
                            usage: ItemUsage::default(),
                        },
                        Err(ItemError::Failed { reason, usage }) => ResultLine {
                            id: items[i].id.clone(),
                            ok: false,
                            output: None,
                            error: Some(reason),
                            usage,
                        },
                        Err(ItemError::Unavailable { retryable, message }) => {
                            return Err(WorkerError::Backend { retryable, message: format!("item {}: {message}", items[i].id) });
                        }
                    };
                    if line.ok { self.ok += 1 } else { self.failed += 1 }
                    self.usage.push(line.usage.clone());
                    self.results[i] = Some(line);
                    self.unsaved.push(i);
                    if self.unsaved.len() as u64 >= self.cfg.progress_every_items {
                        if let Some(outcome) = self.report().await? {
                            return Ok(outcome);
                        }
                        ticker.reset();
                    }
                }
                _ = ticker.tick() => {
                    if let Some(outcome) = self.report().await? {
                        return Ok(outcome);
                    }
                }
            }
        }
        self.finish(items, started).await
    }

    async fn load_items(&self, input: &JobInput) -> Result<Vec<Item>, WorkerError> {
        let input_uri = match input {
            JobInput::Items { items } => return Ok(items.clone()),
            JobInput::Uri { input_uri } => input_uri,
        };
        let bytes = self.objects.get(input_uri).await.map_err(|e| match e {
            ObjectError::Backend(_) => WorkerError::Objects(e),
            _ => WorkerError::Input(format!("cannot read {input_uri}: {e}")),
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| WorkerError::Input(format!("{input_uri} is not UTF-8")))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<Item>(line)
                    .map_err(|e| WorkerError::Input(format!("{input_uri} line {}: {e}", n + 1)))
            })
            .collect()
    }

    /// Loads finished results from a checkpoint. A missing or unusable checkpoint only costs
    /// redoing the work, so it is logged and ignored; a store outage is an error.
    async fn resume(&mut self, uri: &str, items: &[Item]) -> Result<(), WorkerError> {
        match self.read_checkpoint(uri, items).await {
            Ok(Some((segments, lines))) => {
                for l in lines {
                    if l.result.ok {
                        self.ok += 1;
                    } else {
                        self.failed += 1;
                    }
                    self.results[l.index] = Some(l.result);
                }
                self.segments = segments;
                self.checkpoint_uri = Some(uri.to_string());
                tracing::info!(job_id = %self.job_id, checkpoint = uri, resumed = self.ok + self.failed, "resuming from checkpoint");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e @ ObjectError::Backend(_)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(job_id = %self.job_id, checkpoint = uri, error = %e, "checkpoint unreadable; starting over");
                Ok(())
            }
        }
    }

    async fn read_checkpoint(
        &self,
        uri: &str,
        items: &[Item],
    ) -> Result<Option<(Vec<String>, Vec<SegmentLine>)>, ObjectError> {
        let unusable = |why: String| {
            tracing::warn!(checkpoint = uri, "checkpoint not used: {why}");
            Ok(None)
        };
        let manifest: Checkpoint = match serde_json::from_slice(&self.objects.get(uri).await?) {
            Ok(m) => m,
            Err(e) => return unusable(format!("bad manifest: {e}")),
        };
        if manifest.format != CHECKPOINT_FORMAT || manifest.job_id != self.job_id {
            return unusable(format!(
                "manifest of {} for job {}",
                manifest.format, manifest.job_id
            ));
        }
        let mut lines = Vec::new();
        for segment in &manifest.segments {
            let bytes = self.objects.get(segment).await?;
            for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line: SegmentLine = match serde_json::from_slice(raw) {
                    Ok(l) => l,
                    Err(e) => return unusable(format!("bad line in {segment}: {e}")),
                };
                // The input must be the one the checkpoint was made from, item by item.
                if items.get(line.index).map(|it| &it.id) != Some(&line.result.id) {
                    return unusable(format!("item {} does not match the input", line.index));
                }
                lines.push(line);
            }
        }
        Ok(Some((manifest.segments, lines)))
    }

    /// Writes the results finished since the last checkpoint as a new segment, and a manifest.
    async fn save_checkpoint(&mut self) -> Result<Option<String>, WorkerError> {
        if self.unsaved.is_empty() {
            return Ok(None);
        }
        self.seq += 1;
        let prefix = format!("checkpoints/{}/{}", self.job_id, self.attempt);
        self.unsaved.sort_unstable();
        let mut segment = Vec::new();
        for &index in &self.unsaved {
            let result = self.results[index].clone().ok_or_else(|| {
                WorkerError::Internal(format!("item {index} marked done without a result"))
            })?;
            let line = serde_json::to_vec(&SegmentLine { index, result })
                .map_err(|e| WorkerError::Internal(e.to_string()))?;
            segment.extend_from_slice(&line);
            segment.push(b'\n');
        }
        let segment_uri = self
            .objects
            .put(&format!("{prefix}/segment-{:06}.jsonl", self.seq), segment)
            .await?;
        self.segments.push(segment_uri);
        let manifest = Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            job_id: self.job_id,
            attempt: self.attempt,
            total: self.results.len() as u64,
            finished: self.ok + self.failed,
            segments: self.segments.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| WorkerError::Internal(e.to_string()))?;
        let uri = self
            .objects
            .put(&format!("{prefix}/checkpoint-{:06}.json", self.seq), bytes)
            .await?;
        self.unsaved.clear();
        self.checkpoint_uri = Some(uri.clone());
        Ok(Some(uri))
    }

    fn progress(&self, checkpoint_uri: Option<String>) -> Command {
        Command::ReportProgress {
            attempt: self.attempt,
            done: self.ok,
            failed: self.failed,
            total: self.results.len() as u64,
            checkpoint_uri,
        }
    }

    /// Checkpoints and reports progress (the heartbeat). `Some` ends the attempt: the job is being
    /// cancelled (confirmed here) or moved on.
    async fn report(&mut self) -> Result<Option<AttemptOutcome>, WorkerError> {
        let checkpoint = self.save_checkpoint().await?;
        let job = match self.exec(&self.progress(checkpoint)).await {
            Ok(executed) => executed.job,
            Err(ExecuteError::Rejected(r)) => return Ok(Some(self.superseded(r))),
            Err(e) => return Err(e.into()),
        };
        if job.status != Status::Cancelling {
            return Ok(None);
        }
        tracing::info!(job_id = %self.job_id, "cancellation seen; stopping");
        match self
            .exec(&Command::ConfirmCancel {
                attempt: self.attempt,
            })
            .await
        {
            Ok(_) => Ok(Some(AttemptOutcome::Cancelled {
                checkpoint_uri: self.checkpoint_uri.clone(),
            })),
            Err(ExecuteError::Rejected(r)) => Ok(Some(self.superseded(r))),
            Err(e) => Err(e.into()),
        }
    }

    async fn interrupt(&mut self) -> Result<AttemptOutcome, WorkerError> {
        tracing::info!(job_id = %self.job_id, "shutdown requested; checkpointing");
        let checkpoint = self.save_checkpoint().await?;
        match self.exec(&self.progress(checkpoint)).await {
            Ok(_) => {}
            Err(ExecuteError::Rejected(r)) => return Ok(self.superseded(r)),
            Err(e) => return Err(e.into()),
        }
        let cmd = Command::Interrupt {
            attempt: self.attempt,
            reason: SHUTDOWN_REASON.into(),
            clock: Self::clock(),
        };
        match self.exec(&cmd).await {
            // Interrupting a job that was being cancelled cancels it.
            Ok(executed) if executed.job.status == Status::Cancelled => {
                Ok(AttemptOutcome::Cancelled {
                    checkpoint_uri: self.checkpoint_uri.clone(),
                })
            }
            Ok(_) => Ok(AttemptOutcome::Interrupted {
                checkpoint_uri: self.checkpoint_uri.clone(),
            }),
            Err(ExecuteError::Rejected(r)) => Ok(self.superseded(r)),
            Err(e) => Err(e.into()),
        }
    }

    fn superseded(&self, r: Rejection) -> AttemptOutcome {
        tracing::warn!(job_id = %self.job_id, attempt = self.attempt, rejection = %r, "the job moved on; stopping");
        AttemptOutcome::Superseded(r)
    }

    async fn finish(
        &mut self,
        items: &[Item],
        started: Instant,
    ) -> Result<AttemptOutcome, WorkerError> {
        let mut bytes = Vec::new();
        for (i, result) in self.results.iter().enumerate() {
            let line = result.as_ref().ok_or_else(|| {
                WorkerError::Internal(format!("item {} has no result", items[i].id))
            })?;
            bytes.extend(
                serde_json::to_vec(line).map_err(|e| WorkerError::Internal(e.to_string()))?,
            );
            bytes.push(b'\n');
        }
        let result_sha256 = hex::encode(Sha256::digest(&bytes));
        let result_uri = self
            .objects
            .put(
                &format!("results/{}/{}.jsonl", self.job_id, self.attempt),
                bytes,
            )
            .await?;
        let usage = self.usage_now(started);
        let cmd = Command::Succeed {
            attempt: self.attempt,
            result_uri: result_uri.clone(),
            result_sha256: result_sha256.clone(),
            items_ok: self.ok,
            items_failed: self.failed,
            usage: usage.clone(),
        };
        match self.exec(&cmd).await {
            Ok(_) => {
                tracing::info!(job_id = %self.job_id, items_ok = self.ok, items_failed = self.failed, %result_uri, "attempt succeeded");
                Ok(AttemptOutcome::Succeeded {
                    result_uri,
                    result_sha256,
                    items_ok: self.ok,
                    items_failed: self.failed,
                    usage,
                })
            }
            Err(ExecuteError::Rejected(r)) => Ok(self.superseded(r)),
            Err(e) => Err(e.into()),
        }
    }

    fn usage_now(&self, started: Instant) -> Usage {
        let elapsed = started.elapsed();
        let models: BTreeSet<&str> = self
            .usage
            .iter()
            .filter_map(|u| u.model.as_deref())
            .collect();
        let model_cost: f64 = self.usage.iter().map(|u| u.cost_usd).sum();
        let cost = elapsed.as_secs_f64() * self.cfg.compute_usd_per_second + model_cost;
        Usage {
            duration_ms: elapsed.as_millis() as u64,
            vcpu: self.cfg.vcpu,
            memory_mb: self.cfg.memory_mb,
            capacity: self.cfg.capacity,
            input_tokens: self.usage.iter().map(|u| u.input_tokens).sum(),
            output_tokens: self.usage.iter().map(|u| u.output_tokens).sum(),
            model: (!models.is_empty()).then(|| models.into_iter().collect::<Vec<_>>().join(",")),
            // Micro-dollars are the finest unit anyone bills in; rounding keeps the ledger readable.
            cost_usd: (cost * 1e6).round() / 1e6,
        }
    }

    /// Records the failure in the ledger; if even that fails, the sweeper's timeout will.
    /// Finished items are checkpointed first (best effort), so a retry does not redo them.
    async fn fail(&mut self, err: &WorkerError) {
        if let Ok(Some(uri)) = self.save_checkpoint().await
            && let Err(e) = self.exec(&self.progress(Some(uri))).await
        {
            tracing::warn!(job_id = %self.job_id, error = %e, "could not record the last checkpoint");
        }
        let cmd = Command::FailAttempt {
            attempt: self.attempt,
            error: err.to_string(),
            retryable: err.is_retryable(),
            clock: Self::clock(),
        };
        if let Err(e) = self.exec(&cmd).await {
            tracing::error!(job_id = %self.job_id, error = %e, "could not record the failed attempt");
        }
    }
}
