//! Worker configuration, and how the `worker` binary reads it from the environment (the ECS contract).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jobledger_events::JobId;
use jobledger_events::event::Capacity;

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
    /// Compute price of the task per second of wall time, in USD.
    pub compute_usd_per_second: f64,
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
            compute_usd_per_second: 0.0,
        }
    }
}

/// Fargate Linux/x86 list prices in us-east-1, USD per vCPU-hour and per GB-hour.
pub const FARGATE_VCPU_HOUR_USD: f64 = 0.040_48;
/// See [`FARGATE_VCPU_HOUR_USD`].
pub const FARGATE_GB_HOUR_USD: f64 = 0.004_445;
/// Spot runs at roughly this share of the on-demand price (it varies; an estimate for reports).
pub const FARGATE_SPOT_SHARE: f64 = 0.3;

/// The per-second price of a task of this size on this capacity (local runs cost nothing).
pub fn compute_usd_per_second(vcpu: f64, memory_mb: u64, capacity: Option<Capacity>) -> f64 {
    let hourly = vcpu * FARGATE_VCPU_HOUR_USD + memory_mb as f64 / 1024.0 * FARGATE_GB_HOUR_USD;
    match capacity {
        Some(Capacity::Fargate) => hourly / 3600.0,
        Some(Capacity::FargateSpot) => hourly * FARGATE_SPOT_SHARE / 3600.0,
        Some(Capacity::Local) | None => 0.0,
    }
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
    pub data_dir: PathBuf,
    /// The rest, from optional `WORKER_*` variables.
    pub config: WorkerConfig,
}

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
    /// Required: `JOB_ID` (UUID), `ATTEMPT` (≥ 1), `JOBLEDGER_DATA_DIR`. Optional: `WORKER_ID`
    /// (default `<HOSTNAME>-<pid>`), `WORKER_CONCURRENCY`, `WORKER_PROGRESS_EVERY_ITEMS`,
    /// `WORKER_PROGRESS_EVERY_S`, `WORKER_MAX_ITEM_BYTES`, `WORKER_VCPU`, `WORKER_MEMORY_MB`,
    /// `WORKER_CAPACITY` (`FARGATE_SPOT`, `FARGATE`, `local`), `WORKER_USD_PER_SECOND`
    /// (default: the Fargate list price for the size and capacity).
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
        let data_dir = PathBuf::from(required(
            "JOBLEDGER_DATA_DIR",
            "the folder holding ledger.sqlite3 and objects/",
        )?);

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
            let s: f64 = parse("WORKER_PROGRESS_EVERY_S", v.clone(), "expected seconds")?;
            if !(s.is_finite() && s > 0.0) {
                return Err(ConfigError::Invalid {
                    name: "WORKER_PROGRESS_EVERY_S",
                    value: v,
                    reason: "expected a positive number of seconds".into(),
                });
            }
            config.progress_every = Duration::from_secs_f64(s);
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
        config.compute_usd_per_second = match get("WORKER_USD_PER_SECOND") {
            Some(v) => parse("WORKER_USD_PER_SECOND", v, "expected a price in USD")?,
            None => compute_usd_per_second(config.vcpu, config.memory_mb, config.capacity),
        };
        Ok(WorkerEnv {
            job_id,
            attempt,
            data_dir,
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
        let hourly = 0.5 * FARGATE_VCPU_HOUR_USD + FARGATE_GB_HOUR_USD;
        assert!(
            (e.config.compute_usd_per_second - hourly * FARGATE_SPOT_SHARE / 3600.0).abs() < 1e-12
        );
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
}
