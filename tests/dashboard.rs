//! The dashboard against the real binary on loopback: `GET /` is one self-contained HTML
//! page (no external URL, a CSP pinning its script), open without a token while its data
//! route is not, and `/debug/dashboard` draws the ring and counts this node's KV
//! requests (and not the dashboard's own polling). The page in a real browser is
//! scripts/dashboard-test.sh.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const TOKEN: &str = "dashboard-token-aaaaaaaaaa";

#[tokio::test]
async fn the_page_is_self_contained_html() {
    let node = TestNode::start().await;
    let resp = node.client.get(node.url("/")).send().await.expect("GET /");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        content_type(&resp).as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("a Content-Security-Policy")
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let page = resp.text().await.expect("read the page");
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..80]);
    for external in ["http://", "https://", "//cdn", "src=\"//", "href=\"//"] {
        assert!(!page.contains(external), "the page names {external:?}");
    }
    // The hooks the browser test reads.
    for hook in [
        "id=\"ring-banner\"",
        "id=\"ring-hash-count\"",
        "id=\"members\"",
    ] {
        assert!(page.contains(hook), "the page has no {hook}");
    }
    // HEAD answers like GET, without the body; a query is refused (never a token there).
    let head = node
        .client
        .head(node.url("/"))
        .send()
        .await
        .expect("HEAD /");
    assert_eq!(head.status(), StatusCode::OK);
    let query = node
        .client
        .get(node.url("/?token=x"))
        .send()
        .await
        .expect("GET /?token=x");
    assert_error(query, StatusCode::BAD_REQUEST, "bad_param", "GET /?token=x").await;
    let post = node
        .client
        .post(node.url("/"))
        .send()
        .await
        .expect("POST /");
    assert_error(
        post,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST /",
    )
    .await;
}

#[tokio::test]
async fn with_a_token_file_the_page_is_open_and_its_data_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("write tokens");
    let node = TestNode::start_with(&["--auth-token-file", tokens.to_str().expect("utf-8")]).await;
    let plain = http_client();
    let page = plain.get(node.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK, "the page holds no data");
    for path in ["/debug/dashboard", "/cluster", "/debug/replication"] {
        let resp = plain.get(node.url(path)).send().await.expect(path);
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", path).await;
        let resp = plain
            .get(node.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect(path);
        assert_eq!(resp.status(), StatusCode::OK, "{path} with the token");
    }
}

/// `/debug/dashboard` as JSON.
async fn dashboard(node: &TestNode) -> Value {
    let resp = node
        .client
        .get(node.url("/debug/dashboard"))
        .send()
        .await
        .expect("GET /debug/dashboard");
    json_body(resp, "GET /debug/dashboard").await
}

#[tokio::test]
async fn the_data_route_draws_the_ring_and_counts_kv_requests() {
    let node = TestNode::start().await;
    let d = dashboard(&node).await;
    assert_eq!(d["node_id"], node.node_id.as_str());
    let ring = &d["ring"];
    let cluster = json_body(
        node.client
            .get(node.url("/cluster"))
            .send()
            .await
            .expect("GET /cluster"),
        "GET /cluster",
    )
    .await;
    assert_eq!(ring["hash"], cluster["ring_hash"]);
    assert_eq!(ring["members"], serde_json::json!([node.node_id]));
    // One member owns the whole circle: one arc.
    assert_eq!(ring["arcs"], serde_json::json!([[0.0, 1.0, 0]]));
    assert_eq!(ring["approximate"], false);
    assert!(d["write_ring"].is_null(), "nothing moves: {d}");

    // 20 puts and 30 gets (10 of them 404s), in one go.
    for i in 0..20 {
        let resp = node
            .client
            .put(node.kv_url(&format!("k{i}")))
            .body("v")
            .send()
            .await
            .expect("PUT");
        assert!(resp.status().is_success(), "PUT k{i}: {}", resp.status());
    }
    for i in 0..30 {
        let resp = node
            .client
            .get(node.kv_url(&format!("k{i}")))
            .send()
            .await
            .expect("GET");
        let want = if i < 20 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(resp.status(), want, "GET k{i}");
    }
    // The window holds complete seconds only: wait for the ones above to close, polling
    // the data route meanwhile (which must not count), at most 15 s.
    let mut last = Value::Null;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = dashboard(&node).await;
        let history = last["requests"]["history"].as_array().expect("history");
        let counted: u64 = history.iter().filter_map(|s| s["count"].as_u64()).sum();
        if counted >= 50 {
            break;
        }
    }
    let requests = &last["requests"];
    let history = requests["history"].as_array().expect("history");
    let counted: u64 = history.iter().filter_map(|s| s["count"].as_u64()).sum();
    assert_eq!(counted, 50, "the 50 KV requests, no poll: {requests}");
    assert!(history.len() <= 60, "{requests}");
    // The window's rate is its seconds of the history over their count, to the request.
    let window = requests["window_secs"].as_u64().expect("window_secs");
    assert!((1..=10).contains(&window), "{requests}");
    let ops = requests["ops_per_sec"].as_f64().expect("ops_per_sec");
    let in_window: u64 = history[history.len().saturating_sub(window as usize)..]
        .iter()
        .filter_map(|s| s["count"].as_u64())
        .sum();
    assert!(
        (ops * window as f64 - in_window as f64).abs() < 1e-6,
        "{requests}"
    );
    if in_window > 0 {
        let p50 = requests["p50_ms"].as_f64().expect("p50");
        let p99 = requests["p99_ms"].as_f64().expect("p99");
        assert!(p50 > 0.0 && p50 <= p99, "{requests}");
    }
    let by_op = requests["by_op"].as_object().expect("by_op");
    let mut names: Vec<&str> = by_op.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["batch", "delete", "get", "head", "list", "put"]);
    // 404s over missing keys are client errors, not the node's: no 5xx counted.
    assert!(history.iter().all(|s| s["errors"] == 0), "{requests}");
}
