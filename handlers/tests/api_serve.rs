//! The router served by `axum::serve` on a real socket, as `jobledger dev` serves it.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api_support;

use api_support::{Harness, KEY};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 request on a fresh connection; returns the status, the raw head and the JSON body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Bodies are small and sent with content-length, so the rest is the body.
    let json = if rest.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(rest).unwrap_or_else(|e| panic!("{e}: {rest}"))
    };
    (status, head.to_ascii_lowercase(), json)
}

#[tokio::test]
async fn the_router_serves_over_a_real_socket() {
    let h = Harness::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, h.router.clone())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let (status, _, body) = http(addr, "GET", "/health", &[], "").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    let job = json!({"kind": "noop", "items": [{"id": "a", "text": "t"}]}).to_string();
    let (status, head, body) = http(
        addr,
        "POST",
        "/jobs",
        &[
            ("x-api-key", KEY),
            ("content-type", "application/json"),
            ("x-request-id", "sock-1"),
        ],
        &job,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(head.contains("x-request-id: sock-1"), "{head}");
    let id = body["job_id"].as_str().unwrap().to_string();

    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/jobs/{id}"),
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "SUBMITTED");

    let (status, _, body) = http(addr, "POST", "/jobs", &[], &job).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );

    assert_eq!(h.ledger().await.len(), 1);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
