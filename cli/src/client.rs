//! A small HTTP client for the jobledger API: the same calls work against `jobledger dev` and AWS.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the API is and how to authenticate.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    api_key: String,
}

impl Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:8080`) with an API key.
    pub fn new(endpoint: &str, api_key: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req
            .header("x-api-key", &self.api_key)
            .send()
            .await
            .with_context(|| format!("cannot reach the jobledger API at {}", self.endpoint))?;
        let status = resp.status();
        let body = resp.text().await.context("reading the API response")?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
        if !status.is_success() {
            let message = json
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or(body.as_str());
            let code = json
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("error");
            bail!("{} {code}: {message}", status.as_u16());
        }
        Ok(json)
    }

    /// `POST /jobs` with an optional `Idempotency-Key`.
    pub async fn submit(&self, body: &Value, idempotency_key: Option<&str>) -> Result<Value> {
        let mut req = self.http.post(format!("{}/jobs", self.endpoint)).json(body);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        self.send(req).await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, job_id: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}/jobs/{job_id}", self.endpoint)))
            .await
    }

    /// `GET /jobs?…` with the query pairs given.
    pub async fn jobs(&self, query: &[(&str, String)]) -> Result<Value> {
        self.send(
            self.http
                .get(format!("{}/jobs", self.endpoint))
                .query(query),
        )
        .await
    }

    /// Every event of a job, following `next_cursor`.
    pub async fn events(&self, job_id: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(format!("{}/jobs/{job_id}/events", self.endpoint));
            if let Some(cursor) = &after {
                req = req.query(&[("after", cursor)]);
            }
            let page = self.send(req).await?;
            if let Some(events) = page.get("events").and_then(Value::as_array) {
                all.extend(events.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => after = Some(next.to_string()),
                None => return Ok(all),
            }
        }
    }

    /// `GET /jobs/{id}/result`.
    pub async fn result(&self, job_id: &str) -> Result<Value> {
        self.send(
            self.http
                .get(format!("{}/jobs/{job_id}/result", self.endpoint)),
        )
        .await
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<Value> {
        let body = serde_json::json!({ "reason": reason });
        self.send(
            self.http
                .post(format!("{}/jobs/{job_id}/cancel", self.endpoint))
                .json(&body),
        )
        .await
    }
}
