//! The notifier's configuration, read from the environment once at start.
//!
//! | variable | meaning |
//! |---|---|
//! | `SLACK_WEBHOOK_URL` | incoming webhook: one message when a job ends |
//! | `SLACK_BOT_TOKEN`, `SLACK_CHANNEL` | bot token (`xoxb-…`) and channel: one live message per job |
//! | `SLACK_API_BASE` | Web API base, default `https://slack.com/api` (tests point it at a local server) |
//! | `NOTION_TOKEN`, `NOTION_DATABASE_ID` | integration token and database: one page per job |
//! | `NOTION_API_BASE` | default `https://api.notion.com` |
//! | `NOTIFY_SLACK_WEBHOOK_ON`, `NOTIFY_SLACK_BOT_ON`, `NOTIFY_NOTION_ON` | `terminal`, `status` or `all` (defaults: `terminal`, `status`, `status`) |
//! | `NOTIFY_LINK_TTL_S` | validity of the results link, default 86400, at most 604800 (S3's limit) |
//! | `NOTIFY_MAX_TRIES` | tries of a record before it goes to the dead-letter list, default 12 |
//!
//! With none of the sink variables set, a console sink prints one line per status change.

use std::time::Duration;

use super::http::{HttpRetry, Secret};
use super::sink::NotifyOn;

/// Default Slack Web API base.
pub const SLACK_API_BASE: &str = "https://slack.com/api";
/// Default Notion API base.
pub const NOTION_API_BASE: &str = "https://api.notion.com";
/// Longest presigned link S3 signs (7 days).
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable another one needs is missing.
    #[error("{var} is required when {because} is set")]
    Missing {
        /// The missing variable.
        var: &'static str,
        /// The variable that needs it.
        because: &'static str,
    },
    /// A variable's value is not valid.
    #[error("{var}: {message}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong (never the value of a secret).
        message: String,
    },
}

/// The Slack bot's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackBotConfig {
    /// The bot token.
    pub token: Secret,
    /// The channel (id or name) new messages go to.
    pub channel: String,
    /// The Web API base URL.
    pub api_base: String,
}

/// Notion's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotionConfig {
    /// The integration token.
    pub token: Secret,
    /// The database pages are created in.
    pub database_id: String,
    /// The API base URL.
    pub api_base: String,
}

/// When a sink loop gives up on a record and dead-letters it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of a record (each with the HTTP retries of [`HttpRetry`]) before it is dead-lettered.
    pub max_tries: u32,
    /// Pause after the first failed try; doubled per try.
    pub base: Duration,
    /// Longest pause. The defaults (12 tries, 1 s doubling to 5 min) ride out about 20 minutes of outage.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: 12,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The pause after `tries` failed tries.
    pub fn backoff(&self, tries: u32) -> Duration {
        self.base
            .saturating_mul(1 << tries.saturating_sub(1).min(16))
            .min(self.cap)
    }
}

/// Everything the notifier needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierConfig {
    /// The incoming webhook URL (a secret: its path is the credential).
    pub slack_webhook_url: Option<Secret>,
    /// The Slack bot.
    pub slack_bot: Option<SlackBotConfig>,
    /// Notion.
    pub notion: Option<NotionConfig>,
    /// Events the webhook posts on.
    pub webhook_on: NotifyOn,
    /// Events the bot posts or updates on.
    pub bot_on: NotifyOn,
    /// Events Notion pages are written on.
    pub notion_on: NotifyOn,
    /// Validity of the results link.
    pub link_ttl: Duration,
    /// Record retries and dead-lettering.
    pub retry: RetryPolicy,
    /// Retries of one HTTP request.
    pub http: HttpRetry,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            slack_webhook_url: None,
            slack_bot: None,
            notion: None,
            webhook_on: NotifyOn::Terminal,
            bot_on: NotifyOn::StatusChange,
            notion_on: NotifyOn::StatusChange,
            link_ttl: Duration::from_secs(24 * 3600),
            retry: RetryPolicy::default(),
            http: HttpRetry::default(),
        }
    }
}

impl NotifierConfig {
    /// Reads the process environment (see the module docs).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (empty values count as unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let slack_webhook_url = get("SLACK_WEBHOOK_URL").map(Secret::new);
        let slack_bot = match (get("SLACK_BOT_TOKEN"), get("SLACK_CHANNEL")) {
            (Some(token), Some(channel)) => Some(SlackBotConfig {
                token: Secret::new(token),
                channel,
                api_base: get("SLACK_API_BASE").unwrap_or_else(|| SLACK_API_BASE.into()),
            }),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    var: "SLACK_CHANNEL",
                    because: "SLACK_BOT_TOKEN",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    var: "SLACK_BOT_TOKEN",
                    because: "SLACK_CHANNEL",
                });
            }
            (None, None) => None,
        };
        let notion = match (get("NOTION_TOKEN"), get("NOTION_DATABASE_ID")) {
            (Some(token), Some(database_id)) => Some(NotionConfig {
                token: Secret::new(token),
                database_id,
                api_base: get("NOTION_API_BASE").unwrap_or_else(|| NOTION_API_BASE.into()),
            }),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    var: "NOTION_DATABASE_ID",
                    because: "NOTION_TOKEN",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    var: "NOTION_TOKEN",
                    because: "NOTION_DATABASE_ID",
                });
            }
            (None, None) => None,
        };
        let mut c = NotifierConfig {
            slack_webhook_url,
            slack_bot,
            notion,
            ..NotifierConfig::default()
        };
        let on = |var: &'static str, default: NotifyOn| match get(var) {
            None => Ok(default),
            Some(v) => NotifyOn::parse(&v).ok_or_else(|| ConfigError::Invalid {
                var,
                message: format!("must be terminal, status or all, got {v:?}"),
            }),
        };
        c.webhook_on = on("NOTIFY_SLACK_WEBHOOK_ON", c.webhook_on)?;
        c.bot_on = on("NOTIFY_SLACK_BOT_ON", c.bot_on)?;
        c.notion_on = on("NOTIFY_NOTION_ON", c.notion_on)?;
        let number = |var: &'static str,
                      range: std::ops::RangeInclusive<u64>|
         -> Result<Option<u64>, ConfigError> {
            let Some(v) = get(var) else { return Ok(None) };
            match v.trim().parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ConfigError::Invalid {
                    var,
                    message: format!("must be a whole number in {range:?}, got {v:?}"),
                }),
            }
        };
        if let Some(s) = number("NOTIFY_LINK_TTL_S", 60..=MAX_LINK_TTL.as_secs())? {
            c.link_ttl = Duration::from_secs(s);
        }
        if let Some(n) = number("NOTIFY_MAX_TRIES", 1..=100)? {
            c.retry.max_tries = n as u32;
        }
        Ok(c)
    }

    /// Whether no sink is configured (the console sink is used then).
    pub fn is_empty(&self) -> bool {
        self.slack_webhook_url.is_none() && self.slack_bot.is_none() && self.notion.is_none()
    }
}
