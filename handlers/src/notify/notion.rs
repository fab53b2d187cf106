//! The Notion sink: one page per job in a database, created on the job's first notified event and
//! updated in place after. Before creating, the database is queried for a page with the job's
//! `Job ID`, so a crash between the create and saving its id never creates a second page.

use jobledger_projections::JobView;
use jobledger_projections::notify::notion_properties;
use serde_json::{Value, json};

use super::error::NotifyError;
use super::http::{HttpSender, Secret};
use super::sink::{Delivery, NotifyOn, Sink};
use super::state::SinkState;

/// The API version this sink speaks (sent as the `Notion-Version` header).
pub const NOTION_VERSION: &str = "2022-06-28";
/// Notion's average request rate limit.
pub const NOTION_REQUESTS_PER_SECOND: u32 = 3;

/// Notion error codes worth retrying.
const RETRYABLE_CODES: [&str; 5] = [
    "rate_limited",
    "conflict_error",
    "internal_server_error",
    "service_unavailable",
    "gateway_timeout",
];

/// Keeps one Notion page per job.
#[derive(Clone, Debug)]
pub struct NotionSink {
    http: HttpSender,
    token: Secret,
    database_id: String,
    api_base: String,
    on: NotifyOn,
}

impl NotionSink {
    /// A sink writing into `database_id` through the API at `api_base` (`https://api.notion.com`).
    /// `http` should carry a rate limiter of [`NOTION_REQUESTS_PER_SECOND`].
    pub fn new(
        http: HttpSender,
        token: Secret,
        database_id: String,
        api_base: String,
        on: NotifyOn,
    ) -> Self {
        NotionSink {
            http,
            token,
            database_id,
            api_base: api_base.trim_end_matches('/').to_string(),
            on,
        }
    }

    /// Sends one request and returns the 2xx JSON body, or the Notion error object as an error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, NotifyError> {
        let url = format!("{}{path}", self.api_base);
        let reply = self
            .http
            .send(|c| {
                c.request(method.clone(), &url)
                    .bearer_auth(self.token.expose())
                    .header("Notion-Version", NOTION_VERSION)
                    .json(body)
            })
            .await?;
        let parsed: Option<Value> = serde_json::from_str(&reply.body).ok();
        if reply.status.is_success() {
            return parsed.ok_or_else(|| NotifyError::BadResponse {
                service: "notion",
                message: format!("{path} answered {} with no JSON", reply.status.as_u16()),
            });
        }
        let error = parsed.unwrap_or(Value::Null);
        let code = error["code"].as_str().unwrap_or("unknown").to_string();
        Err(NotifyError::Remote {
            service: "notion",
            status: reply.status.as_u16(),
            retryable: RETRYABLE_CODES.contains(&code.as_str()),
            message: error["message"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect(),
            code,
        })
    }

    fn page_id(answer: &Value, what: &str) -> Result<String, NotifyError> {
        answer["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| NotifyError::BadResponse {
                service: "notion",
                message: format!("{what} answered without a page id"),
            })
    }
}

impl Sink for NotionSink {
    fn name(&self) -> &str {
        "notion"
    }

    fn on(&self) -> NotifyOn {
        self.on
    }

    fn wants(&self, view: &JobView) -> bool {
        view.notify.notion
    }

    async fn step(
        &self,
        d: &Delivery<'_>,
        state: &SinkState,
    ) -> Result<Option<SinkState>, NotifyError> {
        let v = d.view.last_version;
        match &state.external_id {
            None => {
                let query = json!({
                    "filter": {"property": "Job ID", "title": {"equals": d.view.job_id.to_string()}},
                    "page_size": 1,
                });
                let path = format!("/v1/databases/{}/query", self.database_id);
                let found = self.call(reqwest::Method::POST, &path, &query).await?;
                if let Some(page) = found["results"].as_array().and_then(|r| r.first()) {
                    // Adopted pages are brought up to date by the next step's update.
                    return Ok(Some(SinkState {
                        external_id: Some(Self::page_id(page, "query")?),
                        message_version: 0,
                        ..state.clone()
                    }));
                }
                let body = json!({
                    "parent": {"database_id": self.database_id},
                    "properties": notion_properties(d.view),
                });
                let page = self.call(reqwest::Method::POST, "/v1/pages", &body).await?;
                Ok(Some(SinkState {
                    external_id: Some(Self::page_id(&page, "create")?),
                    message_version: v,
                    ..state.clone()
                }))
            }
            Some(id) if state.message_version < v => {
                let body = json!({"properties": notion_properties(d.view)});
                self.call(reqwest::Method::PATCH, &format!("/v1/pages/{id}"), &body)
                    .await?;
                Ok(Some(SinkState {
                    message_version: v,
                    ..state.clone()
                }))
            }
            Some(_) => Ok(None),
        }
    }
}
