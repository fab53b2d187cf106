//! Tokens from AWS Secrets Manager, by ARN, read once at the `notifier` Lambda's cold start.
//!
//! The secret's `SecretString` is the bare token (Terraform's `secrets.tf`). A secret that is
//! missing, forbidden, binary or empty fails the cold start with an error naming the ARN and what
//! AWS said, never the value; the token itself only ever lives in a [`Secret`].

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};

use super::config::{NotifierConfig, NotionConfig, SlackBotConfig};
use super::http::Secret;
use crate::aws::config::NotifierLambdaConfig;

/// A secret could not be read. Never holds the secret's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the secret {arn} from Secrets Manager: {reason}")]
pub struct SecretError {
    /// The secret's ARN.
    pub arn: String,
    /// What went wrong (AWS's error code and message, or what is wrong with the value's shape).
    pub reason: String,
}

/// Reads the token stored as `arn`'s `SecretString` (surrounding whitespace dropped).
pub async fn fetch_secret(client: &Client, arn: &str) -> Result<Secret, SecretError> {
    let fail = |reason: String| SecretError {
        arn: arn.to_string(),
        reason,
    };
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            fail(match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => DisplayErrorContext(&e).to_string(),
            })
        })?;
    let Some(value) = out.secret_string() else {
        return Err(fail(
            "it has no SecretString (the token must be stored as a plain string)".into(),
        ));
    };
    let token = value.trim();
    if token.is_empty() {
        return Err(fail(
            "its SecretString is empty (put the token with `aws secretsmanager put-secret-value`)"
                .into(),
        ));
    }
    Ok(Secret::new(token))
}

/// The notifier's configuration on AWS: the Lambda's settings with the Slack bot and Notion tokens
/// read from Secrets Manager (only those of the sinks that are configured).
pub async fn lambda_notifier_config(
    config: &NotifierLambdaConfig,
    client: &Client,
) -> Result<NotifierConfig, SecretError> {
    let mut notify = config.notify.clone();
    if let Some(slack) = &config.slack {
        notify.slack_bot = Some(SlackBotConfig {
            token: fetch_secret(client, &slack.secret_arn).await?,
            channel: slack.channel.clone(),
            api_base: config.slack_api_base.clone(),
        });
    }
    if let Some(notion) = &config.notion {
        notify.notion = Some(NotionConfig {
            token: fetch_secret(client, &notion.secret_arn).await?,
            database_id: notion.database_id.clone(),
            api_base: config.notion_api_base.clone(),
        });
    }
    Ok(notify)
}
