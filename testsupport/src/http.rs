//! A local HTTP server on 127.0.0.1 that answers every request from a script and records it: a
//! stand-in for model APIs, Slack, or an AWS endpoint answering what moto never does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: serde_json::Value,
}

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// Headers, set in order (a later one replaces an earlier one of the same name).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// A JSON answer with status `status`.
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::text(status, body.to_string()).header("content-type", "application/json")
    }

    /// A plain-text answer with status `status`.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("an HTTP status"),
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer with one more header.
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The same answer, sent after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

/// A server answering request number `n` (from 0) with `script(n, request)`.
#[derive(Debug)]
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    /// Starts the server on a free port of 127.0.0.1; it runs until the test's runtime ends.
    pub async fn start(
        script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let app = {
            let seen = seen.clone();
            axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let (seen, script) = (seen.clone(), script.clone());
                    async move {
                        let req = Seen {
                            method,
                            path: uri.path().to_string(),
                            headers,
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        };
                        let n = {
                            let mut all = seen.lock().expect("requests");
                            all.push(req.clone());
                            all.len() - 1
                        };
                        let reply = script(n, &req);
                        tokio::time::sleep(reply.delay).await;
                        let mut response: Response = (reply.status, reply.body).into_response();
                        for (name, value) in reply.headers {
                            let value = value.parse().expect("a header value");
                            response.headers_mut().insert(name, value);
                        }
                        response
                    }
                },
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        FakeServer { addr, seen }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("requests").clone()
    }
}
