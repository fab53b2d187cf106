//! Synthetic, legal job histories for tests and benchmarks: every event comes from `Job::decide`
//! and is chained with `execute::record`, exactly as the live system appends it.

use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use jobledger_events::event::{Capacity, Usage};
use jobledger_events::execute::record;
use jobledger_events::spec::{Item, JobInput, Notify};
use jobledger_events::{
    Clock, Command, CommandContext, Hash, Job, JobId, JobKind, JobSpec, RecordedEvent,
};
use sha2::{Digest, Sha256};

/// A small deterministic random generator (SplitMix64), so generated ledgers repeat exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Generates histories job after job.
pub struct Synth {
    rng: Rng,
    start: DateTime<Utc>,
    n: u64,
    /// Where to write result files (their `file://` URIs go into `JobSucceeded`); `s3://` URIs otherwise.
    pub results_dir: Option<PathBuf>,
}

impl Synth {
    /// A generator from a seed; jobs start one second apart from 2025-01-01.
    pub fn new(seed: u64) -> Self {
        Synth {
            rng: Rng::new(seed),
            start: DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default(),
            n: 0,
            results_dir: None,
        }
    }

    /// A time-ordered job id (UUID v7) from the generator, so ids sort in generation order.
    fn job_id(&mut self, at: DateTime<Utc>) -> JobId {
        let bytes = self.rng.next_u64().to_le_bytes();
        let more = self.rng.next_u64().to_le_bytes();
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&bytes);
        random[8..].copy_from_slice(&more[..2]);
        JobId(
            uuid::Builder::from_unix_timestamp_millis(at.timestamp_millis() as u64, &random)
                .into_uuid(),
        )
    }

    /// The next `n` jobs' histories.
    pub fn jobs(&mut self, n: usize) -> Vec<Vec<RecordedEvent>> {
        (0..n).map(|_| self.job()).collect()
    }

    /// The next job's whole history (about ten events on average).
    pub fn job(&mut self) -> Vec<RecordedEvent> {
        let mut now = self.start + Duration::seconds(self.n as i64);
        self.n += 1;
        let job_id = self.job_id(now);
        let mut g = Gen {
            job_id,
            job: Job::default(),
            head: Hash::ZERO,
            events: Vec::with_capacity(16),
        };
        let kind = JobKind::ALL[self.rng.below(3) as usize];
        let items = 1 + self.rng.below(3) as usize;
        let spec = JobSpec {
            kind,
            input: JobInput::Items {
                items: (0..items)
                    .map(|i| Item {
                        id: format!("item-{i}"),
                        text: Some(format!("text of item {i} of job {}", self.n)),
                        ..Item::default()
                    })
                    .collect(),
            },
            max_attempts: 3,
            timeout_s: 3600,
            priority: 0,
            notify: Notify::default(),
            metadata: serde_json::Map::new(),
            idempotency_key: None,
            max_tokens: None,
        };
        g.run(Command::Submit(spec), "api-key:bench", now);
        let scenario = self.rng.below(100);
        let mut rounds = 0;
        loop {
            rounds += 1;
            let attempt = g.job.attempt;
            now += Duration::milliseconds(200 + self.rng.below(2000) as i64);
            g.run(
                Command::MarkQueued {
                    attempt,
                    message_id: format!("msg-{}-{attempt}", self.n),
                },
                "system:dispatcher",
                now,
            );
            if scenario < 3 && rounds == 1 {
                now += Duration::seconds(1);
                g.run(
                    Command::Cancel {
                        reason: "not needed".into(),
                    },
                    "api-key:bench",
                    now,
                );
                break;
            }
            now += Duration::milliseconds(100 + self.rng.below(500) as i64);
            g.run(
                Command::RecordLaunch {
                    attempt,
                    task_arn: format!("arn:aws:ecs:us-east-1:1:task/c/{}-{attempt}", self.n),
                    capacity: Capacity::FargateSpot,
                },
                "system:launcher",
                now,
            );
            now += Duration::seconds(5 + self.rng.below(30) as i64);
            let worker = format!("worker:{}-{attempt}", self.n);
            g.run(
                Command::StartAttempt {
                    attempt,
                    worker: worker.clone(),
                },
                &worker,
                now,
            );
            let total = items as u64;
            for done in 1..=total {
                now += Duration::seconds(1 + self.rng.below(20) as i64);
                g.run(
                    Command::ReportProgress {
                        attempt,
                        done,
                        failed: 0,
                        total,
                        checkpoint_uri: Some(format!(
                            "s3://bucket/checkpoints/{job_id}/{attempt}.json"
                        )),
                    },
                    &worker,
                    now,
                );
            }
            now += Duration::seconds(1);
            let clock = Clock {
                now,
                jitter: self.rng.unit(),
            };
            let outcome = if rounds > 1 { 99 } else { scenario };
            let cmd = match outcome {
                3..=9 => Command::Interrupt {
                    attempt,
                    reason: "SpotInterruption".into(),
                    clock,
                },
                10..=17 => Command::FailAttempt {
                    attempt,
                    error: "model timeout".into(),
                    retryable: true,
                    clock,
                },
                18..=19 => Command::TimeOut { attempt, clock },
                20..=22 => Command::FailAttempt {
                    attempt,
                    error: "bad input".into(),
                    retryable: false,
                    clock,
                },
                23..=24 => Command::Cancel {
                    reason: "changed my mind".into(),
                },
                _ => {
                    let result = format!("{{\"job\":\"{job_id}\",\"attempt\":{attempt}}}\n");
                    let sha = hex::encode(Sha256::digest(result.as_bytes()));
                    let uri = match &self.results_dir {
                        Some(dir) => {
                            let path = dir.join(format!("{job_id}-{attempt}.jsonl"));
                            // A test helper: a failed write shows up as a checksum finding.
                            let _ = std::fs::write(&path, &result);
                            format!("file://{}", path.display())
                        }
                        None => format!("s3://bucket/results/{job_id}/{attempt}.jsonl"),
                    };
                    Command::Succeed {
                        attempt,
                        result_uri: uri,
                        result_sha256: sha,
                        items_ok: total,
                        items_failed: 0,
                        usage: Usage {
                            duration_ms: 1000 * (1 + self.rng.below(600)),
                            vcpu: 0.25,
                            memory_mb: 512,
                            capacity: Some(Capacity::FargateSpot),
                            input_tokens: 100 * total,
                            output_tokens: 20 * total,
                            model: Some("builtin".into()),
                            cost_usd: 0.0001 * (1 + self.rng.below(100)) as f64,
                        },
                    }
                }
            };
            let actor = if matches!(cmd, Command::Cancel { .. }) {
                "api-key:bench".to_string()
            } else {
                worker.clone()
            };
            g.run(cmd, &actor, now);
            if g.job.status == jobledger_events::Status::Cancelling {
                now += Duration::seconds(2);
                g.run(Command::ConfirmCancel { attempt }, &worker, now);
            }
            if g.job.status == jobledger_events::Status::Failed && scenario == 20 {
                now += Duration::seconds(60);
                g.run(Command::Retry { now }, "api-key:bench", now);
            }
            if g.job.status.is_terminal() || rounds >= 4 {
                break;
            }
        }
        g.events
    }
}

struct Gen {
    job_id: JobId,
    job: Job,
    head: Hash,
    events: Vec<RecordedEvent>,
}

impl Gen {
    /// Decides and records; a refused command is a bug in the scenario, so it simply appends nothing.
    fn run(&mut self, cmd: Command, actor: &str, now: DateTime<Utc>) {
        let Ok(new) = self.job.decide(&cmd) else {
            return;
        };
        let ctx = CommandContext::new(actor, now);
        let recorded = record(self.job_id, self.job.version, self.head, &new, &ctx);
        if let Some(last) = recorded.last() {
            self.head = last.hash;
        }
        self.job = new.iter().fold(std::mem::take(&mut self.job), Job::evolve);
        self.events.extend(recorded);
    }
}
