//! The OpenAPI document: what a real node serves at `GET /openapi.json` is the committed
//! docs/openapi.json, it describes every route of the router, and the routes it says take
//! credentials, shed load or answer errors all say so the same way.
//!
//! Regenerate the committed copy with
//! `RINGKV_WRITE_OPENAPI=1 cargo nextest run -p ringkv --test openapi`.

mod common;

use std::path::PathBuf;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const WRITE_VAR: &str = "RINGKV_WRITE_OPENAPI";

/// Every (method, path) the router in src/http/mod.rs answers, in OpenAPI's spelling.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/kv"),
    ("get", "/kv/{key}"),
    ("head", "/kv/{key}"),
    ("put", "/kv/{key}"),
    ("delete", "/kv/{key}"),
    ("post", "/batch"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/debug/local/{key}"),
    ("get", "/debug/keys"),
    ("get", "/debug/preflist/{key}"),
    ("get", "/debug/replication"),
    ("get", "/debug/workers"),
    ("get", "/cluster"),
    ("get", "/metrics"),
    ("post", "/admin/leave"),
    ("post", "/admin/remove/{id}"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/debug/dashboard"),
];

const OPEN_ROUTES: &[&str] = &["/health", "/ready", "/"];

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

async fn served_document(node: &TestNode) -> (String, Value) {
    let resp = node
        .client
        .get(node.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(resp.status(), StatusCode::OK, "GET /openapi.json");
    assert_eq!(
        content_type(&resp).as_deref(),
        Some("application/json"),
        "GET /openapi.json content type"
    );
    let text = resp.text().await.expect("read /openapi.json");
    let json: Value = serde_json::from_str(&text).expect("/openapi.json is JSON");
    (text, json)
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("path item is an object") {
            out.push((method.clone(), path.clone(), op));
        }
    }
    out
}

/// The served document is the committed one, byte for byte. With `RINGKV_WRITE_OPENAPI=1`
/// the test writes the served document there instead.
#[tokio::test]
async fn served_document_is_the_committed_copy() {
    let node = TestNode::start().await;
    let (served, json) = served_document(&node).await;
    assert_eq!(json["openapi"], "3.1.0", "OpenAPI version");
    let path = committed_path();
    if std::env::var_os(WRITE_VAR).is_some_and(|v| v == "1") {
        std::fs::write(&path, &served).expect("write docs/openapi.json");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json is stale (or missing): it differs from what the node serves at \
         /openapi.json. Regenerate it with\n  {WRITE_VAR}=1 cargo nextest run -p ringkv --test \
         openapi\nand commit it."
    );
}

/// Every `$ref` in `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                    _ => refs(v, format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Every `$ref` names a component the document has: a dangling one would make clients
/// and the fuzzer (scripts/api-fuzz.sh) give up on the operation.
#[tokio::test]
async fn every_reference_resolves() {
    let node = TestNode::start().await;
    let (_, doc) = served_document(&node).await;
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(
        found.len() > 20,
        "only {} references: {found:?}",
        found.len()
    );
    for (at, r) in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {r} is not a local reference"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: {r} names nothing in the document"
        );
    }
}

/// Every route of the router is described, and nothing else.
#[tokio::test]
async fn document_describes_every_route_and_no_other() {
    let node = TestNode::start().await;
    let (_, doc) = served_document(&node).await;
    let mut described: Vec<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    described.sort();
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(
        described, routes,
        "described operations vs the router's routes"
    );
}

/// The shared answers: every route but the probes takes a bearer token and says 401 with
/// `WWW-Authenticate`; every route but `/health` says 503 with `Retry-After`; every error
/// that has a body is the one error shape (or `/ready`'s superset of it); every operation
/// has a unique id.
#[tokio::test]
async fn shared_answers_are_described_alike() {
    let node = TestNode::start().await;
    let (_, doc) = served_document(&node).await;
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http", "bearerAuth: {scheme}");
    assert_eq!(scheme["scheme"], "bearer", "bearerAuth: {scheme}");
    let mut ids = Vec::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        ids.push(
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no operationId"))
                .to_owned(),
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        let security = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no security list"));
        if OPEN_ROUTES.contains(&path.as_str()) {
            assert!(security.is_empty(), "{what} must take no credentials");
            assert!(!responses.contains_key("401"), "{what}: a 401 on a probe");
        } else {
            assert_eq!(
                security.len(),
                1,
                "{what}: security {security:?}, expected bearerAuth"
            );
            assert!(
                security[0].get("bearerAuth").is_some(),
                "{what}: {security:?}"
            );
            let unauthorized = &responses
                .get("401")
                .unwrap_or_else(|| panic!("{what}: no 401"));
            assert!(
                unauthorized["headers"].get("WWW-Authenticate").is_some(),
                "{what}: 401 without WWW-Authenticate"
            );
        }
        if path != "/health" {
            let unavailable = responses
                .get("503")
                .unwrap_or_else(|| panic!("{what}: no 503"));
            assert!(
                unavailable["headers"].get("Retry-After").is_some(),
                "{what}: 503 without Retry-After"
            );
        }
        for (status, response) in responses {
            let code: u16 = status.parse().expect("a numeric status");
            if code < 400 {
                continue;
            }
            let Some(content) = response.get("content") else {
                assert_eq!(method, "head", "{what} {status}: an error without a body");
                continue;
            };
            let schema = &content["application/json"]["schema"]["$ref"];
            let expected = if path == "/ready" && code == 503 {
                "#/components/schemas/NotReadyBody"
            } else {
                "#/components/schemas/ErrorBody"
            };
            assert_eq!(schema, expected, "{what} {status}: {response}");
        }
    }
    // Links name their target by `operationId` (camelCase, as OpenAPI spells it).
    for (method, path, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path} {status}: link {name} has no operationId: {link}")
                });
                assert!(
                    ids.iter().any(|id| id == target),
                    "{method} {path} {status}: link {name} names no operation: {target}"
                );
            }
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids are not unique: {ids:?}");
}
