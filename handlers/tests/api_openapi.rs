//! The OpenAPI document covers exactly the routes served, and its schemas match what the API sends.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod api_support;

use std::collections::BTreeSet;

use api_support::{Harness, KEY, job, request};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use jobledger_events::{JobKind, Status};
use jobledger_projections::JobView;
use serde_json::Value;

/// Every route of DESIGN.md's HTTP API section.
const DESIGN_ROUTES: [(&str, &str); 9] = [
    ("post", "/jobs"),
    ("get", "/jobs"),
    ("get", "/jobs/{id}"),
    ("get", "/jobs/{id}/events"),
    ("get", "/jobs/{id}/result"),
    ("post", "/jobs/{id}/cancel"),
    ("post", "/jobs/{id}/retry"),
    ("get", "/health"),
    ("get", "/openapi.json"),
];

async fn document(h: &Harness) -> Value {
    let r = h
        .send(
            request(Method::GET, "/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "post", "put", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_lists_exactly_the_design_routes() {
    let h = Harness::new();
    let doc = document(&h).await;
    let expected: BTreeSet<(String, String)> = DESIGN_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(expected.len(), 9);
    assert_eq!(operations(&doc), expected);
}

#[tokio::test]
async fn every_documented_operation_is_served_and_authenticated_as_documented() {
    let h = Harness::new();
    let id = h.submit(job("noop")).await;
    let doc = document(&h).await;
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let uri = path.replace("{id}", &id.to_string());
        let method: Method = method.to_uppercase().parse().unwrap();
        let needs_key = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
        // Without a key: 401 where the document asks for one, else an answer; never an unknown route.
        let r = h
            .send(request(method.clone(), &uri).body(Body::empty()).unwrap())
            .await;
        assert_ne!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri} is documented but not routed"
        );
        assert_ne!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} is documented but not routed"
        );
        if needs_key {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        } else {
            assert_eq!(r.status, StatusCode::OK, "{method} {uri}");
            assert!(
                ["/health", "/openapi.json"].contains(&path.as_str()),
                "{path} is open"
            );
        }
        // With a key, the route answers with one of the statuses it documents.
        let r = h
            .send(
                request(method.clone(), &uri)
                    .header("x-api-key", KEY)
                    .body(Body::from(job("noop").to_string()))
                    .unwrap(),
            )
            .await;
        let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            documented.contains(&&r.status.as_u16().to_string()),
            "{method} {uri}: {} not in {documented:?}",
            r.status
        );
    }
}

fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.insert(v.as_str().unwrap().to_string());
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_schema_reference_resolves() {
    let doc = document(&Harness::new()).await;
    let mut found = BTreeSet::new();
    refs(&doc, &mut found);
    assert!(found.contains("#/components/schemas/JobView"), "{found:?}");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected ref {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "x-api-key"
    );
}

fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{schema}"))
        .keys()
        .cloned()
        .collect()
}

fn enum_values(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema}: {}", doc["components"]["schemas"][schema]))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn documented_schemas_match_what_the_api_sends() {
    let h = Harness::new();
    let doc = document(&h).await;
    let id = h.submit(job("noop")).await;

    let served = h.call(Method::GET, &format!("/jobs/{id}"), None).await.body;
    let view_keys: BTreeSet<String> = served.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        properties(&doc, "JobView"),
        view_keys,
        "the JobView schema drifted from JobView"
    );
    // And a fully populated view (every optional field set) has no undocumented key either.
    let view = JobView::fold(&h.history(id).await).unwrap().unwrap();
    let keys: BTreeSet<String> = serde_json::to_value(&view)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(keys.is_subset(&properties(&doc, "JobView")));

    let events = h
        .call(Method::GET, &format!("/jobs/{id}/events"), None)
        .await
        .body;
    let event_keys: BTreeSet<String> = events["events"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(properties(&doc, "Event"), event_keys);

    let accepted = h.call(Method::POST, "/jobs", Some(job("noop"))).await.body;
    let keys: BTreeSet<String> = accepted.as_object().unwrap().keys().cloned().collect();
    assert_eq!(properties(&doc, "Accepted"), keys);

    let kinds: BTreeSet<String> = JobKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_eq!(enum_values(&doc, "JobKind"), kinds);
    let statuses: BTreeSet<String> = Status::ALL
        .iter()
        .filter(|s| **s != Status::New)
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(enum_values(&doc, "Status"), statuses);

    // Everything a submission may carry is documented.
    let submit = properties(&doc, "SubmitRequest");
    for field in [
        "kind",
        "items",
        "input_uri",
        "max_attempts",
        "timeout_s",
        "priority",
        "notify",
        "metadata",
    ] {
        assert!(submit.contains(field), "{field}");
    }
    assert_eq!(
        properties(&doc, "Item"),
        ["html", "id", "image_base64", "text", "uri"]
            .map(String::from)
            .into()
    );
}

#[tokio::test]
async fn operations_are_grouped_under_declared_tags() {
    let doc = document(&Harness::new()).await;
    let declared: BTreeSet<String> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for (method, path) in operations(&doc) {
        let tags = doc["paths"][&path][&method]["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no tag"));
        let tag = tags[0].as_str().unwrap();
        assert!(declared.contains(tag), "{method} {path}: {tag}");
        let open = ["/health", "/openapi.json"].contains(&path.as_str());
        assert_eq!(
            tag,
            if open { "service" } else { "jobs" },
            "{method} {path}"
        );
    }
}
