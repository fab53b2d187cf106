//! Slack sinks: the incoming webhook (one message when a job ends) and the bot (`chat.postMessage`
//! on the first event, `chat.update` of the same message after, a threaded reply on failure).

use jobledger_projections::JobView;
use jobledger_projections::notify::{slack_failure_reply, slack_message};
use serde_json::{Value, json};

use super::error::NotifyError;
use super::http::{HttpSender, Secret};
use super::sink::{Delivery, NotifyOn, Sink};
use super::state::SinkState;

/// Slack Web API errors worth retrying (the rest are configuration or payload problems).
const RETRYABLE_ERRORS: [&str; 5] = [
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Posts through an incoming webhook.
#[derive(Clone, Debug)]
pub struct SlackWebhookSink {
    http: HttpSender,
    url: Secret,
    on: NotifyOn,
}

impl SlackWebhookSink {
    /// A webhook sink posting to `url`.
    pub fn new(http: HttpSender, url: Secret, on: NotifyOn) -> Self {
        SlackWebhookSink { http, url, on }
    }
}

impl Sink for SlackWebhookSink {
    fn name(&self) -> &str {
        "slack-webhook"
    }

    fn on(&self) -> NotifyOn {
        self.on
    }

    fn wants(&self, view: &JobView) -> bool {
        view.notify.slack
    }

    fn needs_link(&self) -> bool {
        true
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        if state.message_version >= d.view.last_version {
            return Ok(None);
        }
        let body = slack_message(d.view, d.link, d.now);
        let reply = self
            .http
            .send(|c| c.post(self.url.expose()).json(&body))
            .await?;
        if !reply.status.is_success() {
            // Webhooks answer errors as plain text codes (`invalid_payload`, `no_service`, …).
            return Err(NotifyError::Remote {
                service: "slack",
                status: reply.status.as_u16(),
                code: reply.body.trim().chars().take(100).collect(),
                message: "incoming webhook refused the message".into(),
                retryable: false,
            });
        }
        Ok(Some(SinkState {
            message_version: d.view.last_version,
            ..state.clone()
        }))
    }
}

/// Posts and updates one message per job with a bot token.
#[derive(Clone, Debug)]
pub struct SlackBotSink {
    http: HttpSender,
    token: Secret,
    channel: String,
    api_base: String,
    on: NotifyOn,
}

impl SlackBotSink {
    /// A bot sink posting to `channel` through the Web API at `api_base` (`https://slack.com/api`).
    pub fn new(
        http: HttpSender,
        token: Secret,
        channel: String,
        api_base: String,
        on: NotifyOn,
    ) -> Self {
        SlackBotSink {
            http,
            token,
            channel,
            api_base: api_base.trim_end_matches('/').to_string(),
            on,
        }
    }

    /// Calls a Web API method; Slack answers most errors as HTTP 200 with `{"ok": false, "error": …}`.
    async fn call(&self, method: &str, body: &Value) -> Result<Value, NotifyError> {
        let url = format!("{}/{method}", self.api_base);
        let reply = self
            .http
            .send(|c| c.post(&url).bearer_auth(self.token.expose()).json(body))
            .await?;
        let parsed: Option<Value> = serde_json::from_str(&reply.body).ok();
        let ok = parsed.as_ref().and_then(|v| v["ok"].as_bool());
        match (reply.status.is_success(), ok, parsed) {
            (true, Some(true), Some(v)) => Ok(v),
            (_, Some(false), Some(v)) => {
                let code = v["error"].as_str().unwrap_or("unknown_error").to_string();
                Err(NotifyError::Remote {
                    service: "slack",
                    status: reply.status.as_u16(),
                    retryable: RETRYABLE_ERRORS.contains(&code.as_str()),
                    message: format!("{method} failed"),
                    code,
                })
            }
            _ => Err(NotifyError::BadResponse {
                service: "slack",
                message: format!(
                    "{method} answered {} without an ok field",
                    reply.status.as_u16()
                ),
            }),
        }
    }
}

impl Sink for SlackBotSink {
    fn name(&self) -> &str {
        "slack-bot"
    }

    fn on(&self) -> NotifyOn {
        self.on
    }

    fn wants(&self, view: &JobView) -> bool {
        view.notify.slack
    }

    fn needs_link(&self) -> bool {
        true
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        let v = d.view.last_version;
        let ts = state.external_id.clone();
        let channel = state
            .channel
            .clone()
            .unwrap_or_else(|| self.channel.clone());
        if ts.is_none() || state.message_version < v {
            let msg = slack_message(d.view, d.link, d.now);
            let mut body = json!({"channel": channel, "text": msg.text, "blocks": msg.blocks});
            let method = match &ts {
                Some(ts) => {
                    body["ts"] = json!(ts);
                    "chat.update"
                }
                None => {
                    body["unfurl_links"] = json!(false);
                    "chat.postMessage"
                }
            };
            let answer = match self.call(method, &body).await {
                Ok(answer) => answer,
                // Someone deleted the message: post a new one on the next step.
                Err(NotifyError::Remote { code, .. }) if code == "message_not_found" => {
                    return Ok(Some(SinkState {
                        external_id: None,
                        message_version: 0,
                        ..state.clone()
                    }));
                }
                Err(e) => return Err(e),
            };
            let ts = answer["ts"].as_str().map(str::to_string).or(ts);
            let Some(ts) = ts else {
                return Err(NotifyError::BadResponse {
                    service: "slack",
                    message: format!("{method} answered without a ts"),
                });
            };
            return Ok(Some(SinkState {
                external_id: Some(ts),
                // The channel id Slack answers with; updates must name it, not a #name.
                channel: answer["channel"]
                    .as_str()
                    .map(str::to_string)
                    .or(Some(channel)),
                message_version: v,
                ..state.clone()
            }));
        }
        if state.reply_version < v
            && let Some(text) = slack_failure_reply(d.view)
        {
            let body = json!({"channel": channel, "thread_ts": ts, "text": text});
            self.call("chat.postMessage", &body).await?;
            return Ok(Some(SinkState {
                reply_version: v,
                ..state.clone()
            }));
        }
        Ok(None)
    }
}
