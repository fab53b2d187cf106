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

    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
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

    /// An optional `ENABLED` / `DISABLED` switch (the ECS spelling); unset or empty is disabled.
    fn switch(&self, name: &'static str) -> Result<bool, ConfigError> {
        match (self.0)(name).as_deref().map(str::trim) {
            None | Some("") | Some("DISABLED") => Ok(false),
            Some("ENABLED") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                name,
                reason: format!("expected ENABLED or DISABLED, got {other:?}"),
            }),
        }
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
    /// `WORKER_ASSIGN_PUBLIC_IP` (`ENABLED` | `DISABLED`, default `DISABLED`): whether worker
    /// tasks get a public IP (needed in public subnets without a NAT gateway).
    pub assign_public_ip: bool,
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
            assign_public_ip: env.switch("WORKER_ASSIGN_PUBLIC_IP")?,
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

/// The Slack bot of the `notifier` Lambda: where it posts, and the secret holding its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackBotSecretRef {
    /// `SLACK_CHANNEL`: the channel new messages go to.
    pub channel: String,
    /// `SLACK_SECRET_ARN`: the secret whose `SecretString` is the bot token.
    pub secret_arn: String,
}

/// Notion for the `notifier` Lambda: the database, and the secret holding the integration token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotionSecretRef {
    /// `NOTION_DATABASE_ID`: the database job pages go into.
    pub database_id: String,
    /// `NOTION_SECRET_ARN`: the secret whose `SecretString` is the integration token.
    pub secret_arn: String,
}

/// Tries of a record before the `notifier` Lambda dead-letters it, unless `NOTIFY_MAX_TRIES` says
/// otherwise. Kept below the event source mapping's retries (`stream_maximum_retry_attempts`,
/// default 5), so a record reaches the notifier's own dead-letter list, where `redrive` can take
/// it, before Lambda gives the whole batch up to the stream DLQ.
pub const NOTIFIER_LAMBDA_MAX_TRIES: u32 = 3;

/// Configuration of the `notifier` Lambda. The tokens are not here: they are read from Secrets
/// Manager at cold start (`notify::secrets::lambda_notifier_config`).
///
/// A sink is on when its target is set: the Slack bot with `SLACK_CHANNEL` (then
/// `SLACK_SECRET_ARN` is required), Notion with `NOTION_DATABASE_ID` (then `NOTION_SECRET_ARN`).
/// With neither, each status change is logged as one line. The optional `NOTIFY_*` variables of
/// `jobledger dev` (`NOTIFY_SLACK_BOT_ON`, `NOTIFY_NOTION_ON`, `NOTIFY_LINK_TTL_S`,
/// `NOTIFY_MAX_TRIES`) and `SLACK_API_BASE` / `NOTION_API_BASE` apply too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierLambdaConfig {
    /// `EVENTS_TABLE`: the ledger (histories are folded from it).
    pub events_table: String,
    /// `NOTIFIER_STATE_TABLE`: per-job, per-sink state and dead letters.
    pub notifier_state_table: String,
    /// `RESULTS_BUCKET`: where results are (the Slack message links to them, presigned).
    pub results_bucket: String,
    /// The Slack bot, if `SLACK_CHANNEL` is set.
    pub slack: Option<SlackBotSecretRef>,
    /// Notion, if `NOTION_DATABASE_ID` is set.
    pub notion: Option<NotionSecretRef>,
    /// `SLACK_API_BASE`, default `https://slack.com/api`.
    pub slack_api_base: String,
    /// `NOTION_API_BASE`, default `https://api.notion.com`.
    pub notion_api_base: String,
    /// Which events each sink reacts to, link validity, tries and HTTP retries (no sinks set).
    pub notify: crate::notify::NotifierConfig,
}

impl NotifierLambdaConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// From any lookup (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        use crate::notify::config::{
            ConfigError as NotifyConfigError, NOTION_API_BASE, SLACK_API_BASE,
        };
        let env = Env(lookup);
        let slack = match env.optional("SLACK_CHANNEL") {
            Some(channel) => Some(SlackBotSecretRef {
                channel,
                secret_arn: env.required("SLACK_SECRET_ARN")?,
            }),
            None => None,
        };
        let notion = match env.optional("NOTION_DATABASE_ID") {
            Some(database_id) => Some(NotionSecretRef {
                database_id,
                secret_arn: env.required("NOTION_SECRET_ARN")?,
            }),
            None => None,
        };
        // Only the tuning knobs: tokens never come from plain variables on AWS.
        let knobs = [
            "NOTIFY_SLACK_BOT_ON",
            "NOTIFY_NOTION_ON",
            "NOTIFY_LINK_TTL_S",
            "NOTIFY_MAX_TRIES",
        ];
        let mut notify = crate::notify::NotifierConfig::from_lookup(|k| {
            knobs.contains(&k).then(|| env.optional(k)).flatten()
        })
        .map_err(|e| match e {
            NotifyConfigError::Missing { var, .. } => ConfigError::Missing(var),
            NotifyConfigError::Invalid { var, message } => ConfigError::Invalid {
                name: var,
                reason: message,
            },
        })?;
        if env.optional("NOTIFY_MAX_TRIES").is_none() {
            notify.retry.max_tries = NOTIFIER_LAMBDA_MAX_TRIES;
        }
        // A Lambda invocation has a deadline (60 s in Terraform): long waits are left to the
        // stream's own redelivery rather than slept through.
        notify.http = crate::notify::HttpRetry {
            tries: 3,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(10),
        };
        Ok(NotifierLambdaConfig {
            events_table: env.required("EVENTS_TABLE")?,
            notifier_state_table: env.required("NOTIFIER_STATE_TABLE")?,
            results_bucket: env.required("RESULTS_BUCKET")?,
            slack,
            notion,
            slack_api_base: env
                .optional("SLACK_API_BASE")
                .unwrap_or_else(|| SLACK_API_BASE.into()),
            notion_api_base: env
                .optional("NOTION_API_BASE")
                .unwrap_or_else(|| NOTION_API_BASE.into()),
            notify,
        })
    }
}
