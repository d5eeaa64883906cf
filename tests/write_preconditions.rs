//! What a write may carry besides its value, on one real node: `If-None-Match: *`
//! (create-only, 412 when a value exists), other conditional headers (refused, never
//! ignored), bounded and well-formed content types in PUT and `/batch`, and the 404's
//! key-bound token, which a write after the 404 sends to supersede only what was seen.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn put_with(
    node: &TestNode,
    key: &str,
    value: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = node.client.put(node.kv_url(key)).body(value.to_owned());
    for (name, v) in headers {
        req = req.header(*name, *v);
    }
    req.send().await.expect("PUT request failed")
}

#[tokio::test]
async fn if_none_match_star_creates_only() -> TestResult {
    let node = TestNode::start().await;
    let create = [("if-none-match", "*")];
    expect_204_token(put_with(&node, "c", "first", &create).await, "create c").await;
    let resp = put_with(&node, "c", "second", &create).await;
    assert_error(
        resp,
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "create over a value",
    )
    .await;
    assert_eq!(
        node.get_single("c").await.0,
        b"first",
        "the 412 wrote nothing"
    );
    let versions = &node.debug_local("c").await["versions"];
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");

    // Over a tombstone, a create goes through, and supersedes the tombstone it saw.
    expect_204_token(node.delete("c", None).await, "DELETE c").await;
    expect_204_token(
        put_with(&node, "c", "again", &create).await,
        "create over tombstone",
    )
    .await;
    assert_eq!(node.get_single("c").await.0, b"again");
    let versions = &node.debug_local("c").await["versions"];
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    Ok(())
}

#[tokio::test]
async fn other_conditional_headers_are_refused() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("h", "v", None).await;
    for (name, value) in [
        ("if-match", "*"),
        ("if-none-match", "\"abc\""),
        ("if-unmodified-since", "Tue, 01 Dec 2026 00:00:00 GMT"),
        ("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT"),
    ] {
        let resp = put_with(&node, "h", "changed", &[(name, value)]).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "bad_request", name).await;
    }
    let resp = node
        .client
        .delete(node.kv_url("h"))
        .header("if-none-match", "*")
        .send()
        .await?;
    assert_error(
        resp,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "DELETE If-None-Match",
    )
    .await;
    assert_eq!(node.get_single("h").await.0, b"v", "nothing written");
    Ok(())
}

#[tokio::test]
async fn content_types_are_bounded_and_parsed() -> TestResult {
    let node = TestNode::start().await;
    let long = format!("text/{}", "x".repeat(300));
    for bad in [long.as_str(), "garbage", "text/", "a b/c"] {
        let resp = node.put("ct", "v", None, Some(bad)).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "bad_content_type", bad).await;
        let (status, body) = node
            .batch(&json!({"ops": [{"op": "put", "key": "ct-batch", "value": "v", "content_type": bad}]}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["status"], json!(400), "{body}");
        assert_eq!(
            body["results"][0]["error"],
            json!("bad_content_type"),
            "{body}"
        );
    }
    for key in ["ct", "ct-batch"] {
        assert_eq!(
            node.get(key).await.status(),
            StatusCode::NOT_FOUND,
            "{key} stored"
        );
    }
    // A media type with parameters, at the limit, is stored and given back as it came.
    let at_limit = format!("text/plain; charset=utf-8; x={}", "y".repeat(256 - 29));
    assert_eq!(at_limit.len(), 256);
    for ct in ["text/plain; charset=utf-8", at_limit.as_str()] {
        expect_204_token(node.put("ct", "v", None, Some(ct)).await, ct).await;
        assert_eq!(node.get_single("ct").await.1, ct);
    }
    Ok(())
}

#[tokio::test]
async fn a_404_token_is_key_bound_and_safe_to_write_with() -> TestResult {
    let node = TestNode::start().await;
    // Never written: the 404 carries the empty context's token for this key.
    let resp = node.get("fresh").await;
    let tok = token(&resp).expect("404 carries a token");
    assert_error(resp, StatusCode::NOT_FOUND, "not_found", "GET fresh").await;
    // It is refused for another key...
    let resp = node.put("other", "x", Some(&tok), None).await;
    let body = assert_error(
        resp,
        StatusCode::BAD_REQUEST,
        "bad_token",
        "404 token, other key",
    )
    .await;
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("another key")));
    // ...and accepted for its own.
    node.put_ok("fresh", "v1", Some(&tok)).await;
    assert_eq!(node.get_single("fresh").await.0, b"v1");

    // A write with a stale 404's token supersedes only what that 404 saw: here nothing,
    // so the value written since stays, as a sibling.
    node.put_ok("fresh", "v2", Some(&tok)).await;
    let (siblings, _) = node.get_siblings("fresh").await;
    assert_eq!(siblings, sorted(vec![sib("v1"), sib("v2")]));

    // HEAD's and batch's 404s carry one too.
    let resp = node.client.head(node.kv_url("nothing")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let head_tok = token(&resp).expect("HEAD 404 carries a token");
    let (_, body) = node
        .batch(&json!({"ops": [{"op": "get", "key": "nothing"}]}))
        .await;
    assert_eq!(body["results"][0]["status"], json!(404), "{body}");
    assert_eq!(
        body["results"][0]["causality_token"],
        json!(head_tok),
        "{body}"
    );
    Ok(())
}
