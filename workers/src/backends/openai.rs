//! Any OpenAI-compatible chat completions endpoint (OpenAI, a local Ollama or vLLM, a gateway):
//! `POST {base}/chat/completions` with a Bearer key, images as `data:` URLs, usage from the reply.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::retry::{CallError, parse_retry_after};
use super::{ChatModel, ChatReply, ChatRequest};
use crate::config::{OpenAiConfig, Secret};

/// A client for one model of one OpenAI-compatible endpoint.
pub struct OpenAiChat {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<Secret>,
}

impl fmt::Debug for OpenAiChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiChat")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key)
            .finish()
    }
}

impl OpenAiChat {
    /// A client for `cfg` (the per-call timeout is the retry policy's; this only bounds connecting).
    pub fn new(cfg: &OpenAiConfig) -> Result<OpenAiChat, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(OpenAiChat {
            http,
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            model: cfg.model.clone(),
            api_key: cfg.api_key.clone(),
        })
    }

    /// The request body for `req` (public so tests and docs can show the exact shape).
    pub fn body(&self, req: &ChatRequest) -> Value {
        let user = match &req.image {
            Some(img) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(img.bytes.as_slice());
                json!([
                    {"type": "text", "text": req.user},
                    {"type": "image_url", "image_url": {"url": format!("data:{};base64,{b64}", img.format.to_mime_type())}},
                ])
            }
            None => json!(req.user),
        };
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": req.system},
                {"role": "user", "content": user},
            ],
            "max_tokens": req.max_tokens,
            // Low temperature: product copy should be stable between runs, not creative.
            "temperature": 0.2,
        });
        if req.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        body
    }
}

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The first 300 characters of an error body: enough to diagnose, never a whole echo of the input.
fn excerpt(body: &str) -> String {
    body.chars().take(300).collect()
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    // OpenAI also sends `retry-after-ms`; prefer it, it is more precise.
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

impl ChatModel for OpenAiChat {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, req: &ChatRequest) -> Result<ChatReply, CallError> {
        let mut call = self.http.post(&self.url).json(&self.body(req));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(|e| {
            // reqwest's error text carries the URL but never headers, so the key stays out of logs.
            CallError::Transport(e.without_url().to_string())
        })?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| CallError::Transport(e.without_url().to_string()))?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CallError::Throttled { retry_after: wait });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(CallError::Server {
                message: format!("{status}: {}", excerpt(&text)),
                retry_after: wait,
            });
        }
        if matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY
        ) {
            return Err(CallError::Rejected(format!("{status}: {}", excerpt(&text))));
        }
        if !status.is_success() {
            return Err(CallError::Fatal(format!("{status}: {}", excerpt(&text))));
        }
        // A 200 that is not a completion is a broken proxy or server: worth another try.
        let completion: Completion =
            serde_json::from_str(&text).map_err(|e| CallError::Server {
                message: format!("unreadable completion ({e}): {}", excerpt(&text)),
                retry_after: None,
            })?;
        let usage = completion.usage.ok_or_else(|| CallError::Server {
            message: "completion without usage".into(),
            retry_after: None,
        })?;
        let message = completion
            .choices
            .into_iter()
            .next()
            .map(|c| c.message)
            .ok_or_else(|| CallError::Server {
                message: "completion without choices".into(),
                retry_after: None,
            })?;
        // A refusal is an answer about this item: the item fails, the job goes on.
        let text = match (message.content, message.refusal) {
            (Some(text), _) => text,
            (None, Some(r)) => return Err(CallError::Rejected(format!("the model refused: {r}"))),
            (None, None) => String::new(),
        };
        Ok(ChatReply {
            text,
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            model: completion.model.unwrap_or_else(|| self.model.clone()),
        })
    }
}
