//! Worker configuration, and how the `worker` binary reads it from the environment (the ECS contract).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jobledger_events::event::Capacity;
use jobledger_events::{JobId, JobKind};

use crate::backends::pricing::PriceTable;
use crate::kinds::ItemLimits;

/// How a worker runs an attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// Who the worker is (task id or host); the actor is `worker:<worker_id>`.
    pub worker_id: String,
    /// Items processed at the same time.
    pub concurrency: usize,
    /// Report progress and checkpoint after this many finished items…
    pub progress_every_items: u64,
    /// …or after this long, whichever comes first (also the heartbeat).
    pub progress_every: Duration,
    /// Per-item input limits.
    pub limits: ItemLimits,
    /// vCPUs of the task, for usage.
    pub vcpu: f64,
    /// Memory of the task, for usage.
    pub memory_mb: u64,
    /// Where the task runs, for usage.
    pub capacity: Option<Capacity>,
    /// Whether the task runs on ARM64 (Graviton), which Fargate prices lower.
    pub arm64: bool,
    /// Compute price of the task per second of wall time, in USD.
    pub compute_usd_per_second: f64,
    /// Which AI backend each job kind uses, and how it is called.
    pub ai: AiConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: "local".into(),
            concurrency: 4,
            progress_every_items: 100,
            progress_every: Duration::from_secs(10),
            limits: ItemLimits::default(),
            vcpu: 1.0,
            memory_mb: 2048,
            capacity: Some(Capacity::Local),
            arm64: false,
            compute_usd_per_second: 0.0,
            ai: AiConfig::default(),
        }
    }
}

/// The per-second price of an x86 task of this size on this capacity, from the embedded price
/// table (local runs cost nothing).
pub fn compute_usd_per_second(vcpu: f64, memory_mb: u64, capacity: Option<Capacity>) -> f64 {
    PriceTable::embedded().fargate_usd_per_second(vcpu, memory_mb, capacity, false)
}

/// An AI backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Offline heuristics (the default).
    Builtin,
    /// Amazon Bedrock, Converse API.
    Bedrock,
    /// An OpenAI-compatible chat completions endpoint.
    OpenAi,
}

impl BackendKind {
    fn parse(name: &'static str, v: String) -> Result<BackendKind, ConfigError> {
        match v.trim() {
            "builtin" => Ok(BackendKind::Builtin),
            "bedrock" => Ok(BackendKind::Bedrock),
            "openai" => Ok(BackendKind::OpenAi),
            _ => Err(ConfigError::Invalid {
                name,
                value: v,
                reason: "expected builtin, bedrock or openai".into(),
            }),
        }
    }
}

/// A secret value: its `Debug` never shows it, so logging a config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiConfig {
    /// `OPENAI_BASE_URL`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1` (Ollama).
    pub base_url: String,
    /// `OPENAI_MODEL`.
    pub model: String,
    /// `OPENAI_API_KEY` (none for a local server that needs no key).
    pub api_key: Option<Secret>,
}

/// Bedrock settings (region and credentials come from the AWS environment: the task's IAM role).
#[derive(Clone, Debug, PartialEq)]
pub struct BedrockConfig {
    /// `BEDROCK_MODEL_ID`: a model id or an inference profile id.
    pub model_id: String,
}

/// Which backend each kind uses and how calls are made.
#[derive(Clone, Debug, PartialEq)]
pub struct AiConfig {
    /// `AI_BACKEND`: the deployment's backend (default `builtin`).
    pub backend: BackendKind,
    /// `AI_BACKEND_IMAGE_ALT`, `AI_BACKEND_META_DESCRIPTION`, `AI_BACKEND_CONTENT_ANALYSIS`.
    pub per_kind: Vec<(JobKind, BackendKind)>,
    /// Set when some kind uses `openai`.
    pub openai: Option<OpenAiConfig>,
    /// Set when some kind uses `bedrock`.
    pub bedrock: Option<BedrockConfig>,
    /// `AI_TIMEOUT_S`: longest one model call may take (default 60 s).
    pub timeout: Duration,
    /// `AI_MAX_CONCURRENCY`: model calls in flight per backend (default 4).
    pub max_concurrency: usize,
    /// `AI_MAX_RETRIES`: retries of a throttled, failed or timed-out call (default 4).
    pub max_retries: u32,
    /// `AI_MAX_RETRY_WAIT_S`: most time one item waits between retries (default 90 s).
    pub max_retry_wait: Duration,
}

impl Default for AiConfig {
    fn default() -> Self {
        AiConfig {
            backend: BackendKind::Builtin,
            per_kind: Vec::new(),
            openai: None,
            bedrock: None,
            timeout: Duration::from_secs(60),
            max_concurrency: 4,
            max_retries: 4,
            max_retry_wait: Duration::from_secs(90),
        }
    }
}

/// The per-kind override variables.
const KIND_VARS: [(JobKind, &str); 3] = [
    (JobKind::ImageAlt, "AI_BACKEND_IMAGE_ALT"),
    (JobKind::MetaDescription, "AI_BACKEND_META_DESCRIPTION"),
    (JobKind::ContentAnalysis, "AI_BACKEND_CONTENT_ANALYSIS"),
];

impl AiConfig {
    /// The backend `kind` uses.
    pub fn kind_backend(&self, kind: JobKind) -> BackendKind {
        self.per_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(self.backend, |(_, b)| *b)
    }

    fn uses(&self, backend: BackendKind) -> bool {
        self.backend == backend || self.per_kind.iter().any(|(_, b)| *b == backend)
    }

    /// Reads the `AI_*`, `OPENAI_*` and `BEDROCK_*` variables through `get`; settings of a backend
    /// are required only when some kind uses it.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<AiConfig, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut ai = AiConfig::default();
        if let Some(v) = get("AI_BACKEND") {
            ai.backend = BackendKind::parse("AI_BACKEND", v)?;
        }
        for (kind, name) in KIND_VARS {
            if let Some(v) = get(name) {
                ai.per_kind.push((kind, BackendKind::parse(name, v)?));
            }
        }
        if let Some(v) = get("AI_TIMEOUT_S") {
            ai.timeout = positive_seconds("AI_TIMEOUT_S", v)?;
        }
        if let Some(v) = get("AI_MAX_CONCURRENCY") {
            ai.max_concurrency = parse("AI_MAX_CONCURRENCY", v.clone(), "expected a number")?;
            if ai.max_concurrency == 0 {
                return Err(ConfigError::Invalid {
                    name: "AI_MAX_CONCURRENCY",
                    value: v,
                    reason: "at least 1 call must be allowed".into(),
                });
            }
        }
        if let Some(v) = get("AI_MAX_RETRIES") {
            ai.max_retries = parse("AI_MAX_RETRIES", v, "expected a number")?;
        }
        if let Some(v) = get("AI_MAX_RETRY_WAIT_S") {
            ai.max_retry_wait = positive_seconds("AI_MAX_RETRY_WAIT_S", v)?;
        }
        if ai.uses(BackendKind::OpenAi) {
            if get("OPENAI_SECRET_ARN").is_some() && get("OPENAI_API_KEY").is_none() {
                return Err(ConfigError::Invalid {
                    name: "OPENAI_SECRET_ARN",
                    value: "(set)".into(),
                    reason:
                        "the worker does not fetch secrets itself; let ECS inject the secret as \
                             OPENAI_API_KEY (task definition `secrets`, valueFrom = the ARN)"
                            .into(),
                });
            }
            ai.openai = Some(OpenAiConfig {
                base_url: get("OPENAI_BASE_URL")
                    .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                model: get("OPENAI_MODEL").ok_or(ConfigError::Missing(
                    "OPENAI_MODEL",
                    "the model the openai backend calls, e.g. gpt-4o-mini",
                ))?,
                api_key: get("OPENAI_API_KEY").map(Secret),
            });
        }
        if ai.uses(BackendKind::Bedrock) {
            ai.bedrock = Some(BedrockConfig {
                model_id: get("BEDROCK_MODEL_ID").ok_or(ConfigError::Missing(
                    "BEDROCK_MODEL_ID",
                    "the model or inference profile the bedrock backend calls",
                ))?,
            });
        }
        Ok(ai)
    }
}

fn positive_seconds(name: &'static str, v: String) -> Result<Duration, ConfigError> {
    let s: f64 = parse(name, v.clone(), "expected seconds")?;
    if !(s.is_finite() && s > 0.0) {
        return Err(ConfigError::Invalid {
            name,
            value: v,
            reason: "expected a positive number of seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(s))
}

/// A missing or unreadable environment variable.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{0} is not set ({1})")]
    Missing(&'static str, &'static str),
    /// A variable is set to something unusable.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        reason: String,
    },
}

/// Everything the `worker` binary needs: which attempt to run, where local data lives, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEnv {
    /// `JOB_ID`.
    pub job_id: JobId,
    /// `ATTEMPT` (1, 2, …).
    pub attempt: u32,
    /// `JOBLEDGER_DATA_DIR`: ledger at `<dir>/ledger.sqlite3`, objects under `<dir>/objects`.
    /// On AWS (`aws` set) only scratch space, default [`AWS_SCRATCH_DIR`].
    pub data_dir: PathBuf,
    /// On AWS: the DynamoDB ledger and the S3 bucket, instead of the files under `data_dir`.
    pub aws: Option<AwsStorage>,
    /// The rest, from optional `WORKER_*` variables.
    pub config: WorkerConfig,
}

/// Where the worker's ledger and objects are on AWS (the ECS task's environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsStorage {
    /// `EVENTS_TABLE`: the DynamoDB events table.
    pub events_table: String,
    /// `RESULTS_BUCKET`: results, checkpoints and offloaded event payloads.
    pub results_bucket: String,
}

/// Scratch space of a worker on AWS: the task's only writable path is `/tmp`.
pub const AWS_SCRATCH_DIR: &str = "/tmp/jobledger";

fn parse<T: FromStr>(name: &'static str, value: String, expected: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
        name,
        reason: format!("{expected} ({e})"),
        value,
    })
}

impl WorkerEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<WorkerEnv, ConfigError> {
        WorkerEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `get` (tests pass a map).
    ///
    /// Required: `JOB_ID` (UUID), `ATTEMPT` (≥ 1), and either `JOBLEDGER_DATA_DIR` (local files)
    /// or `EVENTS_TABLE` + `RESULTS_BUCKET` (DynamoDB and S3, on AWS). Optional: `WORKER_ID`
    /// (default `<HOSTNAME>-<pid>`), `WORKER_CONCURRENCY`, `WORKER_PROGRESS_EVERY_ITEMS`,
    /// `WORKER_PROGRESS_EVERY_S`, `WORKER_MAX_ITEM_BYTES`, `WORKER_VCPU`, `WORKER_MEMORY_MB`,
    /// `WORKER_CAPACITY` (`FARGATE_SPOT`, `FARGATE`, `local`), `WORKER_CPU_ARCHITECTURE`
    /// (`X86_64`, `ARM64`), `WORKER_USD_PER_SECOND` (default: the Fargate price in the embedded
    /// price table for the size, architecture and capacity), and the AI settings of
    /// [`AiConfig::from_lookup`].
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<WorkerEnv, ConfigError> {
        let required = |name: &'static str, what: &'static str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing(name, what))
        };
        let job_id = parse(
            "JOB_ID",
            required("JOB_ID", "the job to work on, a UUID")?,
            "expected a UUID",
        )?;
        let attempt: u32 = parse(
            "ATTEMPT",
            required("ATTEMPT", "the attempt number, 1 or more")?,
            "expected a number",
        )?;
        if attempt == 0 {
            return Err(ConfigError::Invalid {
                name: "ATTEMPT",
                value: "0".into(),
                reason: "attempts start at 1".into(),
            });
        }
        // EVENTS_TABLE selects the AWS storage; without it the ledger is a local file.
        let aws = match get("EVENTS_TABLE").filter(|v| !v.trim().is_empty()) {
            Some(events_table) => Some(AwsStorage {
                events_table: events_table.trim().to_string(),
                results_bucket: required(
                    "RESULTS_BUCKET",
                    "the S3 bucket for results, checkpoints and payloads (with EVENTS_TABLE)",
                )?
                .trim()
                .to_string(),
            }),
            None => None,
        };
        let data_dir = match (
            &aws,
            get("JOBLEDGER_DATA_DIR").filter(|v| !v.trim().is_empty()),
        ) {
            (_, Some(dir)) => PathBuf::from(dir),
            (Some(_), None) => PathBuf::from(AWS_SCRATCH_DIR),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "JOBLEDGER_DATA_DIR",
                    "the folder holding ledger.sqlite3 and objects/ (or set EVENTS_TABLE)",
                ));
            }
        };

        let mut config = WorkerConfig {
            worker_id: get("WORKER_ID")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| {
                    let host = get("HOSTNAME").unwrap_or_else(|| "local".into());
                    format!("{host}-{}", std::process::id())
                }),
            ..WorkerConfig::default()
        };
        if let Some(v) = get("WORKER_CONCURRENCY") {
            config.concurrency = parse("WORKER_CONCURRENCY", v, "expected a number")?;
            if config.concurrency == 0 {
                return Err(ConfigError::Invalid {
                    name: "WORKER_CONCURRENCY",
                    value: "0".into(),
                    reason: "at least 1 item must run".into(),
                });
            }
        }
        if let Some(v) = get("WORKER_PROGRESS_EVERY_ITEMS") {
            config.progress_every_items =
                parse::<u64>("WORKER_PROGRESS_EVERY_ITEMS", v, "expected a number")?.max(1);
        }
        if let Some(v) = get("WORKER_PROGRESS_EVERY_S") {
            config.progress_every = positive_seconds("WORKER_PROGRESS_EVERY_S", v)?;
        }
        if let Some(v) = get("WORKER_MAX_ITEM_BYTES") {
            config.limits.max_item_bytes =
                parse("WORKER_MAX_ITEM_BYTES", v, "expected a number of bytes")?;
        }
        if let Some(v) = get("WORKER_VCPU") {
            config.vcpu = parse("WORKER_VCPU", v, "expected a number such as 0.5")?;
        }
        if let Some(v) = get("WORKER_MEMORY_MB") {
            config.memory_mb = parse("WORKER_MEMORY_MB", v, "expected megabytes")?;
        }
        if let Some(v) = get("WORKER_CAPACITY") {
            config.capacity = Some(match v.as_str() {
                "FARGATE_SPOT" => Capacity::FargateSpot,
                "FARGATE" => Capacity::Fargate,
                "local" => Capacity::Local,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "WORKER_CAPACITY",
                        value: v,
                        reason: "expected FARGATE_SPOT, FARGATE or local".into(),
                    });
                }
            });
        }
        if let Some(v) = get("WORKER_CPU_ARCHITECTURE") {
            config.arm64 = match v.as_str() {
                "ARM64" => true,
                "X86_64" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "WORKER_CPU_ARCHITECTURE",
                        value: v,
                        reason: "expected X86_64 or ARM64 (as in the ECS runtimePlatform)".into(),
                    });
                }
            };
        }
        config.compute_usd_per_second = match get("WORKER_USD_PER_SECOND") {
            Some(v) => parse("WORKER_USD_PER_SECOND", v, "expected a price in USD")?,
            None => PriceTable::embedded().fargate_usd_per_second(
                config.vcpu,
                config.memory_mb,
                config.capacity,
                config.arm64,
            ),
        };
        config.ai = AiConfig::from_lookup(&get)?;
        Ok(WorkerEnv {
            job_id,
            attempt,
            data_dir,
            aws,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<WorkerEnv, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorkerEnv::from_lookup(|k| map.get(k).cloned())
    }

    const JOB: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

    #[test]
    fn the_ecs_contract_variables_are_read() {
        let e = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "2"),
            ("JOBLEDGER_DATA_DIR", "/tmp/x"),
            ("WORKER_ID", "task-1"),
            ("WORKER_CAPACITY", "FARGATE_SPOT"),
            ("WORKER_VCPU", "0.5"),
            ("WORKER_MEMORY_MB", "1024"),
        ])
        .unwrap();
        assert_eq!(e.job_id.to_string(), JOB);
        assert_eq!(e.attempt, 2);
        assert_eq!(e.config.worker_id, "task-1");
        assert_eq!(e.config.capacity, Some(Capacity::FargateSpot));
        let prices = PriceTable::embedded();
        let hourly = 0.5 * prices.fargate.x86_64.vcpu_hour_usd + prices.fargate.x86_64.gb_hour_usd;
        assert!(
            (e.config.compute_usd_per_second - hourly * prices.fargate.spot_share / 3600.0).abs()
                < 1e-12
        );
        assert_eq!(e.config.ai, AiConfig::default());
    }

    #[test]
    fn missing_or_invalid_variables_are_named_in_the_error() {
        assert_eq!(
            env(&[("ATTEMPT", "1"), ("JOBLEDGER_DATA_DIR", "/d")]).unwrap_err(),
            ConfigError::Missing("JOB_ID", "the job to work on, a UUID")
        );
        let err = env(&[
            ("JOB_ID", "nope"),
            ("ATTEMPT", "1"),
            ("JOBLEDGER_DATA_DIR", "/d"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("JOB_ID=\"nope\" is invalid"),
            "{err}"
        );
        let err = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "0"),
            ("JOBLEDGER_DATA_DIR", "/d"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("attempts start at 1"));
        let err = env(&[("JOB_ID", JOB), ("ATTEMPT", "1")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing("JOBLEDGER_DATA_DIR", _)));
        let err = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "1"),
            ("JOBLEDGER_DATA_DIR", "/d"),
            ("WORKER_CAPACITY", "EC2"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected FARGATE_SPOT, FARGATE or local")
        );
    }

    #[test]
    fn on_ecs_the_events_table_and_bucket_replace_the_data_dir() {
        let e = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "1"),
            ("EVENTS_TABLE", "jl-events"),
            ("RESULTS_BUCKET", "jl-results"),
        ])
        .expect("the ECS task's environment");
        assert_eq!(
            e.aws,
            Some(AwsStorage {
                events_table: "jl-events".into(),
                results_bucket: "jl-results".into(),
            })
        );
        assert_eq!(e.data_dir, PathBuf::from(AWS_SCRATCH_DIR));
        let err = env(&[("JOB_ID", JOB), ("ATTEMPT", "1"), ("EVENTS_TABLE", "t")])
            .expect_err("a table without a bucket");
        assert!(
            matches!(err, ConfigError::Missing("RESULTS_BUCKET", _)),
            "{err}"
        );
        let local = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "1"),
            ("JOBLEDGER_DATA_DIR", "/d"),
        ])
        .expect("local environment");
        assert_eq!(local.aws, None);
    }

    #[test]
    fn local_runs_cost_nothing_by_default() {
        let e = env(&[
            ("JOB_ID", JOB),
            ("ATTEMPT", "1"),
            ("JOBLEDGER_DATA_DIR", "/d"),
        ])
        .unwrap();
        assert_eq!(e.config.capacity, Some(Capacity::Local));
        assert_eq!(e.config.compute_usd_per_second, 0.0);
    }

    const BASE: [(&str, &str); 3] = [
        ("JOB_ID", JOB),
        ("ATTEMPT", "1"),
        ("JOBLEDGER_DATA_DIR", "/d"),
    ];

    fn with(extra: &[(&str, &str)]) -> Result<WorkerEnv, ConfigError> {
        env(&[&BASE[..], extra].concat())
    }

    #[test]
    fn backends_are_chosen_per_deployment_and_overridden_per_kind() {
        let e = with(&[
            ("AI_BACKEND", "openai"),
            ("AI_BACKEND_IMAGE_ALT", "bedrock"),
            ("OPENAI_MODEL", "gpt-4o-mini"),
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("BEDROCK_MODEL_ID", "anthropic.claude-3-haiku-20240307-v1:0"),
            ("AI_TIMEOUT_S", "20"),
            ("AI_MAX_CONCURRENCY", "8"),
        ])
        .unwrap();
        let ai = &e.config.ai;
        assert_eq!(ai.kind_backend(JobKind::ImageAlt), BackendKind::Bedrock);
        assert_eq!(
            ai.kind_backend(JobKind::MetaDescription),
            BackendKind::OpenAi
        );
        assert_eq!(ai.timeout, Duration::from_secs(20));
        assert_eq!(ai.max_concurrency, 8);
        let openai = ai.openai.as_ref().unwrap();
        assert_eq!(openai.base_url, "https://api.openai.com/v1");
        assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-very-secret");
        let debug = format!("{e:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("Secret(***)"));
    }

    #[test]
    fn a_chosen_backend_needs_its_settings() {
        let err = with(&[("AI_BACKEND", "openai")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing("OPENAI_MODEL", _)));
        let err = with(&[("AI_BACKEND_CONTENT_ANALYSIS", "bedrock")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing("BEDROCK_MODEL_ID", _)));
        let err = with(&[("AI_BACKEND", "gpt")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected builtin, bedrock or openai")
        );
        let err = with(&[
            ("AI_BACKEND", "openai"),
            ("OPENAI_MODEL", "m"),
            (
                "OPENAI_SECRET_ARN",
                "arn:aws:secretsmanager:us-east-1:1:secret:k",
            ),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("valueFrom"), "{err}");
        assert!(!err.to_string().contains("arn:aws"), "{err}");
        let err = with(&[("AI_MAX_CONCURRENCY", "0")]).unwrap_err();
        assert!(err.to_string().contains("at least 1 call"));
    }

    #[test]
    fn arm64_tasks_are_priced_lower() {
        let x86 = with(&[("WORKER_CAPACITY", "FARGATE")]).unwrap();
        let arm = with(&[
            ("WORKER_CAPACITY", "FARGATE"),
            ("WORKER_CPU_ARCHITECTURE", "ARM64"),
        ])
        .unwrap();
        assert!(arm.config.compute_usd_per_second < x86.config.compute_usd_per_second);
        assert!(arm.config.arm64);
    }
}
