//! Typed configuration of each Lambda binary, read from the environment once, at cold start.
//!
//! The variable names are the contract with Terraform. A missing or malformed variable fails the
//! cold start with a message naming it, rather than every invocation later.

use std::time::Duration;

/// A variable is missing or malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not set, or empty.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// Set to something unusable.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// Reads variables through `lookup`, so tests need not touch the process environment.
struct Env<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        match (self.0)(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(ConfigError::Missing(name)),
        }
    }

    fn list(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        let items: Vec<String> = self
            .required(name)?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if items.is_empty() {
            return Err(ConfigError::Invalid {
                name,
                reason: "expected a comma-separated list with at least one entry".into(),
            });
        }
        Ok(items)
    }

    fn seconds(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let raw = self.required(name)?;
        match raw.parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(ConfigError::Invalid {
                name,
                reason: format!("expected a positive number of seconds, got {raw:?}"),
            }),
        }
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Configuration of the `api` Lambda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLambdaConfig {
    /// `EVENTS_TABLE`: the ledger.
    pub events_table: String,
    /// `JOBS_TABLE`: the read model.
    pub jobs_table: String,
    /// `IDEMPOTENCY_TABLE`: idempotency keys.
    pub idempotency_table: String,
    /// `RESULTS_BUCKET`: results and large payloads.
    pub results_bucket: String,
    /// `RESULT_URL_TTL_S`: how long a presigned result URL works.
    pub result_url_ttl: Duration,
}

impl ApiLambdaConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        Ok(ApiLambdaConfig {
            events_table: env.required("EVENTS_TABLE")?,
            jobs_table: env.required("JOBS_TABLE")?,
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            results_bucket: env.required("RESULTS_BUCKET")?,
            result_url_ttl: env.seconds("RESULT_URL_TTL_S")?,
        })
    }
}

/// Configuration of the `dispatcher` Lambda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// `EVENTS_TABLE`: the ledger.
    pub events_table: String,
    /// `JOBS_QUEUE_URL`: the FIFO work queue.
    pub jobs_queue_url: String,
}

impl DispatcherConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        Ok(DispatcherConfig {
            events_table: env.required("EVENTS_TABLE")?,
            jobs_queue_url: env.required("JOBS_QUEUE_URL")?,
        })
    }
}

/// Configuration of the `projector` Lambda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectorConfig {
    /// `EVENTS_TABLE`: the ledger (reloaded when an event is ahead of its view).
    pub events_table: String,
    /// `JOBS_TABLE`: the read model.
    pub jobs_table: String,
}

impl ProjectorConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        Ok(ProjectorConfig {
            events_table: env.required("EVENTS_TABLE")?,
            jobs_table: env.required("JOBS_TABLE")?,
        })
    }
}

/// Configuration of the `launcher` Lambda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherConfig {
    /// `EVENTS_TABLE`: the ledger.
    pub events_table: String,
    /// `JOBS_QUEUE_URL`: the queue whose messages it hides until their `not_before`.
    pub jobs_queue_url: String,
    /// `ECS_CLUSTER`, `WORKER_TASK_DEFINITION`, `WORKER_CONTAINER_NAME`, `WORKER_SUBNETS`,
    /// `WORKER_SECURITY_GROUPS`.
    pub ecs: crate::aws::ecs::EcsConfig,
}

impl LauncherConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        Ok(LauncherConfig {
            events_table: env.required("EVENTS_TABLE")?,
            jobs_queue_url: env.required("JOBS_QUEUE_URL")?,
            ecs: crate::aws::ecs::EcsConfig {
                cluster: env.required("ECS_CLUSTER")?,
                task_definition: env.required("WORKER_TASK_DEFINITION")?,
                container_name: env.required("WORKER_CONTAINER_NAME")?,
                subnets: env.list("WORKER_SUBNETS")?,
                security_groups: env.list("WORKER_SECURITY_GROUPS")?,
            },
        })
    }
}

/// Configuration of the `sweeper` Lambda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweeperConfig {
    /// `EVENTS_TABLE`: the ledger.
    pub events_table: String,
    /// `JOBS_TABLE`: the read model the candidates come from.
    pub jobs_table: String,
    /// `HEARTBEAT_TIMEOUT_S`: silence after which an attempt is timed out.
    pub heartbeat_timeout: Duration,
}

impl SweeperConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        Ok(SweeperConfig {
            events_table: env.required("EVENTS_TABLE")?,
            jobs_table: env.required("JOBS_TABLE")?,
            heartbeat_timeout: env.seconds("HEARTBEAT_TIMEOUT_S")?,
        })
    }
}
