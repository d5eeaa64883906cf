//! The HTTP contract of README.md ("The HTTP API"), against one real node per test.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const OCTET: &str = "application/octet-stream";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `key -> value_of(key)` for every key, 16 requests at a time.
async fn put_many(node: &TestNode, keys: &[String], value_of: fn(&str) -> String) {
    let mut set = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(16).max(1)) {
        let client = node.client.clone();
        let reqs: Vec<(String, String)> = chunk
            .iter()
            .map(|k| (node.kv_url(k), value_of(k)))
            .collect();
        set.spawn(async move {
            for (url, value) in reqs {
                let resp = client.put(&url).body(value).send().await.expect("PUT");
                assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PUT {url}");
            }
        });
    }
    while let Some(res) = set.join_next().await {
        res.expect("writer task panicked");
    }
}

fn value_of_key(key: &str) -> String {
    format!("v-{key}")
}

// ---------------------------------------------------------------------------------------------
// Liveness, readiness, debug

#[tokio::test]
async fn health_and_ready_answer_200() -> TestResult {
    let node = TestNode::start().await;
    let resp = node.client.get(node.url("/health")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp, "/health").await, json!({"status": "ok"}));
    let resp = node.client.get(node.url("/ready")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp, "/ready").await, json!({"status": "ready"}));
    Ok(())
}

#[tokio::test]
async fn debug_local_shows_versions_and_404_for_absent_key() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("dbg", "value", None).await;
    let local = node.debug_local("dbg").await;
    let versions = local["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("/debug/local without a versions array: {local}"));
    assert_eq!(versions.len(), 1, "one write, one version: {local}");
    for v in versions {
        assert!(v.get("dot").is_some(), "version without dot: {v}");
        assert_eq!(v["tombstone"], json!(false), "live version: {v}");
    }

    expect_204_token(node.delete("dbg", None).await, "DELETE dbg").await;
    let local = node.debug_local("dbg").await;
    let versions = local["versions"].as_array().expect("versions array");
    assert_eq!(
        versions.len(),
        1,
        "a blind delete supersedes the value: {local}"
    );
    assert_eq!(versions[0]["tombstone"], json!(true), "tombstone: {local}");

    let resp = node
        .client
        .get(node.url(&debug_local_path("never-written")))
        .send()
        .await?;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET /debug/local/absent",
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[tokio::test]
async fn put_get_round_trip_keeps_bytes_and_content_type() -> TestResult {
    let node = TestNode::start().await;

    let t = node
        .put("greeting", "hello", None, Some("text/plain; charset=utf-8"))
        .await;
    expect_204_token(t, "PUT greeting").await;
    let (body, ct, _tok) = node.get_single("greeting").await;
    assert_eq!(body, b"hello");
    assert_eq!(
        ct, "text/plain; charset=utf-8",
        "Content-Type returned as given"
    );

    // No Content-Type sent: application/octet-stream.
    node.put_ok("plain", "no type", None).await;
    let (body, ct, _) = node.get_single("plain").await;
    assert_eq!(body, b"no type");
    assert_eq!(ct, OCTET, "default Content-Type");

    // Every byte value, not UTF-8.
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let resp = node
        .put("bin", binary.clone(), None, Some("image/x-test"))
        .await;
    expect_204_token(resp, "PUT bin").await;
    let (body, ct, _) = node.get_single("bin").await;
    assert_eq!(body, binary, "binary value round trip");
    assert_eq!(ct, "image/x-test");

    // A large value under the default 1 MiB limit.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    node.put_ok("big", big.clone(), None).await;
    let (body, _, _) = node.get_single("big").await;
    assert_eq!(body.len(), big.len());
    assert!(body == big, "200 KiB value round trip");

    // An empty value is a value.
    node.put_ok("empty", Vec::new(), None).await;
    let (body, _, _) = node.get_single("empty").await;
    assert!(body.is_empty(), "empty value round trip");
    Ok(())
}

#[tokio::test]
async fn keys_with_slashes_spaces_unicode_and_percent_escapes() -> TestResult {
    let node = TestNode::start().await;

    // `/` raw in the path and as %2F name the same key.
    let resp = node
        .client
        .put(node.url(&kv_path_raw_slash("dir/sub/leaf")))
        .body("raw-slash")
        .send()
        .await?;
    expect_204_token(resp, "PUT dir/sub/leaf (raw slash)").await;
    assert!(kv_path("dir/sub/leaf").contains("%2F"));
    let (body, _, _) = node.get_single("dir/sub/leaf").await;
    assert_eq!(body, b"raw-slash", "GET with %2F reads the raw-slash key");

    // Written with %2F, read raw.
    node.put_ok("other/key", "escaped-slash", None).await;
    let resp = node
        .client
        .get(node.url(&kv_path_raw_slash("other/key")))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await?.as_ref(), b"escaped-slash");

    // A key that literally contains "%2F" is a different key from one with "/".
    node.put_ok("100%2Fpct", "literal", None).await;
    node.put_ok("100/pct", "slash", None).await;
    assert_eq!(node.get_single("100%2Fpct").await.0, b"literal");
    assert_eq!(node.get_single("100/pct").await.0, b"slash");

    for key in [
        "with space",
        "tab\tand+plus&amp=eq?q#frag",
        "ünïcødé/ключ/🔑",
        "日本語",
    ] {
        node.put_ok(key, format!("value of {key}"), None).await;
        let (body, _, _) = node.get_single(key).await;
        assert_eq!(body, format!("value of {key}").as_bytes(), "key {key:?}");
    }

    // The listing reports the decoded keys.
    let keys = item_keys(&node.list_all(&[("prefix", "dir/")], 100).await);
    assert_eq!(keys, vec!["dir/sub/leaf".to_owned()]);
    let keys = item_keys(&node.list_all(&[("prefix", "100")], 100).await);
    assert_eq!(keys, vec!["100%2Fpct".to_owned(), "100/pct".to_owned()]);
    let keys = item_keys(&node.list_all(&[("prefix", "ünï")], 100).await);
    assert_eq!(keys, vec!["ünïcødé/ключ/🔑".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn blind_put_overwrites() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("k", "v1", None).await;
    node.put_ok("k", "v2", None).await;
    let (body, _, _) = node.get_single("k").await;
    assert_eq!(body, b"v2", "PUT v1; PUT v2; GET -> v2");
    let versions = &node.debug_local("k").await["versions"];
    assert_eq!(
        versions.as_array().map(Vec::len),
        Some(1),
        "blind write supersedes everything: {versions}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokens and siblings

#[tokio::test]
async fn writes_with_the_same_stale_token_become_siblings() -> TestResult {
    let node = TestNode::start().await;
    let t0 = node.put_ok("cart", "apples", None).await;

    let binary = vec![0xfb, 0xff, 0xfe, 0x00, 0x80];
    expect_204_token(
        node.put("cart", "apples,pears", Some(&t0), Some("text/plain"))
            .await,
        "PUT sibling 1",
    )
    .await;
    expect_204_token(
        node.put("cart", binary.clone(), Some(&t0), None).await,
        "PUT sibling 2",
    )
    .await;

    // Raw JSON: the binary sibling is standard, padded base64.
    let resp = node.get("cart").await;
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    let body = json_body(resp, "GET cart").await;
    let raw = body["siblings"].as_array().expect("siblings array");
    assert_eq!(raw.len(), 2, "two siblings: {body}");
    let bin = raw
        .iter()
        .find(|s| s["encoding"] == "base64")
        .unwrap_or_else(|| panic!("no base64 sibling: {body}"));
    assert_eq!(
        bin["value"],
        json!(b64(&binary)),
        "standard alphabet, padded"
    );
    let txt = raw
        .iter()
        .find(|s| s["encoding"] == "utf8")
        .unwrap_or_else(|| panic!("no utf8 sibling: {body}"));
    assert_eq!(txt["value"], json!("apples,pears"));
    assert_eq!(txt["content_type"], json!("text/plain"));

    let (siblings, t300) = node.get_siblings("cart").await;
    assert_eq!(
        siblings,
        sorted(vec![sib_ct("apples,pears", "text/plain"), sib(&binary)]),
        "both concurrent writes survive; the one they both read is gone"
    );

    // Resolve with the 300's token.
    node.put_ok("cart", "apples,pears,plums", Some(&t300)).await;
    let (body, _, _) = node.get_single("cart").await;
    assert_eq!(body, b"apples,pears,plums");
    let versions = &node.debug_local("cart").await["versions"];
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    Ok(())
}

#[tokio::test]
async fn returnbody_returns_the_stored_result() -> TestResult {
    let node = TestNode::start().await;
    let put_rb = |key: &str, value: &'static str, tok: Option<String>| {
        let mut req = node
            .client
            .put(format!("{}?returnbody=true", node.kv_url(key)))
            .header("content-type", "text/plain")
            .body(value);
        if let Some(t) = tok {
            req = req.header(TOKEN_HEADER, t);
        }
        req.send()
    };

    let resp = put_rb("rb", "v1", None).await?;
    assert_eq!(resp.status(), StatusCode::OK, "returnbody single -> 200");
    assert_eq!(content_type(&resp).as_deref(), Some("text/plain"));
    let t1 = require_token(&resp);
    assert_eq!(resp.bytes().await?.as_ref(), b"v1");

    let resp = put_rb("rb", "v2", Some(t1.clone())).await?;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "token covers v1 -> single v2"
    );
    require_token(&resp);
    assert_eq!(resp.bytes().await?.as_ref(), b"v2");

    // Same stale token again: siblings, answered as GET's 300.
    let resp = put_rb("rb", "v3", Some(t1)).await?;
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    let header_tok = require_token(&resp);
    let body = json_body(resp, "PUT ?returnbody=true (siblings)").await;
    assert_eq!(body["causality_token"].as_str(), Some(header_tok.as_str()));
    assert_eq!(
        decode_siblings(&body["siblings"], "returnbody 300"),
        sorted(vec![sib_ct("v2", "text/plain"), sib_ct("v3", "text/plain")])
    );
    assert_eq!(node.get_siblings("rb").await.0.len(), 2);

    // returnbody=false is the default answer.
    let resp = node
        .client
        .put(format!("{}?returnbody=false", node.kv_url("rb2")))
        .body("x")
        .send()
        .await?;
    expect_204_token(resp, "PUT ?returnbody=false").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deletes and tombstones

#[tokio::test]
async fn delete_leaves_a_tombstone_that_get_reports_as_404_with_token() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("gone", "soon", None).await;
    let resp = node.delete("gone", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "DELETE -> 204");
    require_token(&resp);
    assert!(resp.bytes().await?.is_empty());

    let resp = node.get("gone").await;
    let tomb_tok = token(&resp);
    assert_error(resp, StatusCode::NOT_FOUND, "not_found", "GET deleted key").await;
    let tomb_tok =
        tomb_tok.expect("404 for a deleted key carries X-Causality-Token (tombstone exists)");

    let resp = node.client.head(node.kv_url("gone")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "HEAD deleted key");
    assert!(resp.bytes().await?.is_empty(), "HEAD has no body");

    // Writing with the 404's token supersedes the tombstone.
    node.put_ok("gone", "back", Some(&tomb_tok)).await;
    assert_eq!(node.get_single("gone").await.0, b"back");
    let versions = &node.debug_local("gone").await["versions"];
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    Ok(())
}

#[tokio::test]
async fn delete_of_a_deleted_key_is_404_and_writes_nothing() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("gone", "soon", None).await;
    expect_204_token(node.delete("gone", None).await, "first DELETE").await;
    let before = node.debug_local("gone").await["versions"].clone();

    let resp = node.delete("gone", None).await;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "DELETE deleted key",
    )
    .await;
    let after = node.debug_local("gone").await["versions"].clone();
    assert_eq!(
        after, before,
        "a DELETE answered 404 (no token returned) must not write another tombstone"
    );
    Ok(())
}

#[tokio::test]
async fn never_written_key_is_404_everywhere() -> TestResult {
    let node = TestNode::start().await;
    let resp = node.delete("nobody", None).await;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "DELETE never written",
    )
    .await;

    let resp = node.get("nobody").await;
    // No tombstone, but still a token: of the empty context, bound to the key, so that a
    // write after the 404 says it saw nothing.
    let tok = token(&resp).expect("a 404 carries X-Causality-Token");
    let seen = ringkv::version::CausalityToken::decode_for(&tok, b"nobody")?;
    assert!(seen.is_empty(), "{seen:?}");
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET never written",
    )
    .await;

    let resp = node.client.head(node.kv_url("nobody")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.bytes().await?.is_empty(), "HEAD has no body");

    // A failed DELETE wrote nothing.
    let resp = node
        .client
        .get(node.url(&debug_local_path("nobody")))
        .send()
        .await?;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "debug/local after 404 DELETE",
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn live_value_beside_a_tombstone_wins_and_its_token_covers_the_tombstone() -> TestResult {
    let node = TestNode::start().await;
    let t0 = node.put_ok("mixed", "v0", None).await;
    // A delete and a put, both from the same stale read.
    expect_204_token(node.delete("mixed", Some(&t0)).await, "DELETE with t0").await;
    node.put_ok("mixed", "live", Some(&t0)).await;

    let local = node.debug_local("mixed").await;
    let versions = local["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2, "tombstone and live value: {local}");
    assert_eq!(
        versions
            .iter()
            .filter(|v| v["tombstone"] == json!(true))
            .count(),
        1,
        "exactly one tombstone: {local}"
    );

    let (body, _, tok) = node.get_single("mixed").await;
    assert_eq!(body, b"live", "GET returns only the live value");

    let resp = node.client.head(node.kv_url("mixed")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);

    node.put_ok("mixed", "merged", Some(&tok)).await;
    let local = node.debug_local("mixed").await;
    assert_eq!(
        local["versions"].as_array().map(Vec::len),
        Some(1),
        "the GET token covered the tombstone too: {local}"
    );
    assert_eq!(node.get_single("mixed").await.0, b"merged");
    Ok(())
}

#[tokio::test]
async fn head_answers_headers_without_body() -> TestResult {
    let node = TestNode::start().await;
    let t0 = node.put_ok("h", "some value", None).await;
    let resp = node.client.head(node.kv_url("h")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    require_token(&resp);
    let sibs = resp
        .headers()
        .get("x-siblings")
        .map(|v| v.to_str().map(str::to_owned));
    assert_eq!(sibs.transpose()?.as_deref(), Some("1"), "X-Siblings: 1");
    assert!(resp.bytes().await?.is_empty(), "HEAD has no body");

    node.put_ok("h", "a", Some(&t0)).await;
    node.put_ok("h", "b", Some(&t0)).await;
    let resp = node.client.head(node.kv_url("h")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK, "HEAD on siblings is 200");
    require_token(&resp);
    let sibs = resp
        .headers()
        .get("x-siblings")
        .map(|v| v.to_str().map(str::to_owned));
    assert_eq!(sibs.transpose()?.as_deref(), Some("2"), "X-Siblings: 2");
    assert!(resp.bytes().await?.is_empty(), "HEAD has no body");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Listing

#[tokio::test]
async fn listing_pages_through_every_key_once_in_order() -> TestResult {
    let node = TestNode::start().await;
    let mut prefixed: Vec<String> = (0..250).map(|i| format!("users/{i:04}")).collect();
    prefixed.extend(["users/é", "users/~", "users/Z"].map(String::from));
    let others: Vec<String> = ["user", "users", "usert/1", "aaa", "zzz", "USERS/1"]
        .map(String::from)
        .to_vec();
    let all: Vec<String> = prefixed.iter().chain(&others).cloned().collect();
    put_many(&node, &all, value_of_key).await;

    let mut expected = prefixed.clone();
    expected.sort(); // String order is byte order.
    let items = node.list_all(&[("prefix", "users/")], 40).await;
    assert_eq!(item_keys(&items), expected, "prefix listing, limit=40");
    for item in &items {
        let key = item["key"].as_str().expect("key");
        assert!(item["causality_token"].is_string(), "item token: {item}");
        assert_eq!(
            decode_siblings(&item["siblings"], key),
            vec![sib(value_of_key(key))],
            "item siblings for {key}"
        );
    }

    let mut expected_all = all.clone();
    expected_all.sort();
    let items = node.list_all(&[], 40).await;
    assert_eq!(item_keys(&items), expected_all, "full listing, limit=40");
    let items = node.list_all(&[], 1000).await;
    assert_eq!(item_keys(&items), expected_all, "full listing, limit=1000");

    // Default limit is 100.
    let resp = node
        .client
        .get(node.url("/kv"))
        .query(&[("prefix", "users/")])
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_body(resp, "GET /kv?prefix=users/").await;
    assert_eq!(
        body["items"].as_array().map(Vec::len),
        Some(100),
        "default limit"
    );
    assert!(
        body["next_cursor"].is_string(),
        "more pages: {}",
        body["next_cursor"]
    );
    Ok(())
}

#[tokio::test]
async fn listing_bounds_skip_tombstones_and_show_siblings() -> TestResult {
    let node = TestNode::start().await;
    let mut keys: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
    keys.extend(["j", "l"].map(String::from));
    put_many(&node, &keys, value_of_key).await;
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let range = |lo: usize, hi: usize| (lo..hi).map(|i| format!("k{i:02}")).collect::<Vec<_>>();

    let got = item_keys(&node.list_all(&[("start", "k05"), ("end", "k10")], 2).await);
    assert_eq!(got, range(5, 10), "start inclusive, end exclusive");
    let mut want = range(5, 30);
    want.push("l".into());
    let got = item_keys(&node.list_all(&[("start", "k05")], 7).await);
    assert_eq!(got, want, "start only");
    let mut want = names(&["j"]);
    want.extend(range(0, 10));
    let got = item_keys(&node.list_all(&[("end", "k10")], 7).await);
    assert_eq!(got, want, "end only");
    let got = item_keys(
        &node
            .list_all(&[("prefix", "k1"), ("start", "k15"), ("end", "k18")], 100)
            .await,
    );
    assert_eq!(got, range(15, 18), "prefix with bounds");
    let got = item_keys(
        &node
            .list_all(&[("start", "k10"), ("end", "k10")], 100)
            .await,
    );
    assert!(got.is_empty(), "empty range: {got:?}");

    // Deleted keys vanish; a key with a tombstone beside a live value stays.
    for k in ["k03", "k04", "k20"] {
        expect_204_token(node.delete(k, None).await, "DELETE").await;
    }
    let t = node.get_single("k07").await.2;
    expect_204_token(node.delete("k07", Some(&t)).await, "DELETE k07").await;
    node.put_ok("k07", "k07-live", Some(&t)).await;
    // Two siblings on k08.
    let t = node.get_single("k08").await.2;
    node.put_ok("k08", "s1", Some(&t)).await;
    node.put_ok("k08", "s2", Some(&t)).await;

    let items = node.list_all(&[("prefix", "k")], 4).await;
    let mut want = range(0, 30);
    want.retain(|k| !["k03", "k04", "k20"].contains(&k.as_str()));
    assert_eq!(item_keys(&items), want, "tombstoned keys are not listed");
    let find = |k: &str| {
        items
            .iter()
            .find(|i| i["key"] == k)
            .unwrap_or_else(|| panic!("{k} not listed"))
            .clone()
    };
    assert_eq!(
        decode_siblings(&find("k07")["siblings"], "k07"),
        vec![sib("k07-live")],
        "only the live value is listed"
    );
    assert_eq!(
        decode_siblings(&find("k08")["siblings"], "k08"),
        sorted(vec![sib("s1"), sib("s2")]),
        "siblings are listed"
    );
    Ok(())
}

#[tokio::test]
async fn listing_rejects_bad_params() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("a", "1", None).await;
    for query in [
        "limit=0",
        "limit=5000",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "cursor=!!!garbage!!!",
        "foo=1",
    ] {
        let resp = node
            .client
            .get(format!("{}?{query}", node.url("/kv")))
            .send()
            .await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_param",
            &format!("GET /kv?{query}"),
        )
        .await;
    }
    for query in ["limit=1", "limit=1000"] {
        let resp = node
            .client
            .get(format!("{}?{query}", node.url("/kv")))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "GET /kv?{query}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batch

fn result_status(r: &Value) -> u64 {
    r["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("batch result without numeric status: {r}"))
}

#[tokio::test]
async fn batch_runs_mixed_ops_in_order() -> TestResult {
    let node = TestNode::start().await;
    let (status, body) = node
        .batch(&json!({"ops": [
            {"op": "put", "key": "a", "value": "1"},
            {"op": "put", "key": "b", "value": "AAEC", "encoding": "base64",
             "content_type": "application/x-bin"},
            {"op": "get", "key": "a"},
            {"op": "get", "key": "b"},
            {"op": "delete", "key": "b"},
            {"op": "get", "key": "b"},
            {"op": "get", "key": "never"},
            {"op": "delete", "key": "never"},
            {"op": "put", "key": "c", "value": "plain"},
        ]}))
        .await;
    assert_eq!(status, StatusCode::OK, "batch: {body}");
    let results = body["results"].as_array().expect("results array");
    assert_eq!(results.len(), 9, "one result per op: {body}");
    let statuses: Vec<u64> = results.iter().map(result_status).collect();
    assert_eq!(
        statuses,
        [204, 204, 200, 200, 204, 404, 404, 404, 204],
        "{body}"
    );
    for i in [0, 1, 4, 8] {
        assert!(
            results[i]["causality_token"].is_string(),
            "token on {i}: {body}"
        );
    }
    assert_eq!(
        decode_siblings(&results[2]["siblings"], "batch get a"),
        vec![sib("1")],
        "a get sees the put before it"
    );
    assert!(results[2]["causality_token"].is_string());
    assert_eq!(
        decode_siblings(&results[3]["siblings"], "batch get b"),
        vec![sib_ct([0u8, 1, 2], "application/x-bin")],
        "base64 value op"
    );
    for i in [5, 6, 7] {
        assert_error_json(&results[i], "not_found", &format!("batch result {i}"));
    }

    // The HTTP API sees the batch's effects.
    let (body, ct, _) = node.get_single("a").await;
    assert_eq!((body.as_slice(), ct.as_str()), (&b"1"[..], OCTET));
    assert_error(
        node.get("b").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET b",
    )
    .await;

    // Tokens in ops: two puts with the same token from a previous batch make siblings.
    let tc = results[8]["causality_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, body) = node
        .batch(&json!({"ops": [
            {"op": "put", "key": "c", "value": "y", "token": tc},
            {"op": "put", "key": "c", "value": "z", "token": tc},
            {"op": "get", "key": "c"},
        ]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(result_status).collect();
    assert_eq!(statuses, [204, 204, 300], "{body}");
    assert_eq!(
        decode_siblings(&results[2]["siblings"], "batch get c"),
        sorted(vec![sib("y"), sib("z")])
    );
    assert_eq!(
        node.get_siblings("c").await.0,
        sorted(vec![sib("y"), sib("z")])
    );
    Ok(())
}

#[tokio::test]
async fn batch_bad_op_fails_alone() -> TestResult {
    let node = TestNode::start().await;
    let (status, body) = node
        .batch(&json!({"ops": [
            {"op": "put", "key": "ok1", "value": "1"},
            {"op": "put", "key": "", "value": "empty key"},
            {"op": "put", "key": "badb64", "value": "!!!", "encoding": "base64"},
            {"op": "get", "key": "ok1"},
        ]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(result_status).collect();
    assert_eq!(statuses, [204, 400, 400, 200], "{body}");
    assert_error_json(&results[1], "bad_key", "batch empty key");
    assert_error_json(&results[2], "bad_request", "batch bad base64");
    assert_error(
        node.get("badb64").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET badb64",
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn batch_unknown_op_fails_alone() -> TestResult {
    let node = TestNode::start().await;
    let (status, body) = node
        .batch(&json!({"ops": [
            {"op": "put", "key": "u1", "value": "1"},
            {"op": "frobnicate", "key": "u2"},
            {"op": "get", "key": "u1"},
        ]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(result_status).collect();
    assert_eq!(statuses, [204, 400, 200], "{body}");
    assert_error_json(&results[1], "bad_request", "batch unknown op");
    Ok(())
}

#[tokio::test]
async fn batch_rejects_malformed_json() -> TestResult {
    let node = TestNode::start().await;
    for raw in ["{not json", "{\"ops\": 5}", "[]", ""] {
        let resp = node
            .client
            .post(node.url("/batch"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("batch {raw:?}"),
        )
        .await;
    }
    Ok(())
}

#[tokio::test]
async fn batch_over_max_batch_ops_is_413() -> TestResult {
    let node = TestNode::start_with(&["--max-batch-ops", "10"]).await;
    let ops = |n: usize, tag: &str| -> Value {
        let ops: Vec<Value> = (0..n)
            .map(|i| json!({"op": "put", "key": format!("{tag}-{i}"), "value": "x"}))
            .collect();
        json!({ "ops": ops })
    };
    let (status, body) = node.batch(&ops(10, "fits")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "10 ops with --max-batch-ops 10: {body}"
    );
    assert_eq!(body["results"].as_array().map(Vec::len), Some(10));

    let resp = node
        .client
        .post(node.url("/batch"))
        .json(&ops(11, "over"))
        .send()
        .await?;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "11 ops").await;
    assert_error(
        node.get("over-0").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET over-0",
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Limits and malformed input

#[tokio::test]
async fn value_over_max_value_bytes_is_413_and_not_written() -> TestResult {
    let node = TestNode::start_with(&["--max-value-bytes", "1024"]).await;
    let resp = node.put("big", vec![b'x'; 1025], None, None).await;
    assert_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "PUT 1025 bytes",
    )
    .await;
    assert_error(
        node.get("big").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET big",
    )
    .await;

    node.put_ok("fits", vec![b'y'; 1024], None).await;
    assert_eq!(node.get_single("fits").await.0, vec![b'y'; 1024]);

    // An oversized overwrite leaves the old value.
    let resp = node.put("fits", vec![b'z'; 4096], None, None).await;
    assert_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "PUT 4096 bytes",
    )
    .await;
    assert_eq!(node.get_single("fits").await.0, vec![b'y'; 1024]);
    Ok(())
}

#[tokio::test]
async fn key_length_is_1_to_1024_bytes() -> TestResult {
    let node = TestNode::start().await;
    let max = "k".repeat(1024);
    node.put_ok(&max, "max", None).await;
    assert_eq!(node.get_single(&max).await.0, b"max");
    let max_multibyte = "é".repeat(512); // 1024 bytes
    node.put_ok(&max_multibyte, "max2", None).await;
    assert_eq!(node.get_single(&max_multibyte).await.0, b"max2");

    for key in ["k".repeat(1025), format!("{}a", "é".repeat(512))] {
        let resp = node.put(&key, "v", None, None).await;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_key",
            "PUT 1025-byte key",
        )
        .await;
        assert_error(
            node.get(&key).await,
            StatusCode::BAD_REQUEST,
            "bad_key",
            "GET 1025-byte key",
        )
        .await;
        assert_error(
            node.delete(&key, None).await,
            StatusCode::BAD_REQUEST,
            "bad_key",
            "DELETE 1025-byte key",
        )
        .await;
    }

    let resp = node.client.put(node.url("/kv/")).body("v").send().await?;
    assert_error(
        resp,
        StatusCode::BAD_REQUEST,
        "bad_key",
        "PUT /kv/ (empty key)",
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn bad_percent_encoding_is_bad_key() -> TestResult {
    let node = TestNode::start().await;
    for path in ["/kv/%zz", "/kv/%C3%28", "/kv/abc%", "/kv/%FF%FE"] {
        let resp = node.client.put(node.url(path)).body("v").send().await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_key",
            &format!("PUT {path}"),
        )
        .await;
        let resp = node.client.get(node.url(path)).send().await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_key",
            &format!("GET {path}"),
        )
        .await;
    }
    Ok(())
}

#[tokio::test]
async fn corrupt_tokens_are_bad_token() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("t", "original", None).await;
    // Not base64 at all; then valid base64 (both alphabets) of bytes that are no token.
    for bad in ["!!!notbase64", "Z2FyYmFn", "AAAAAAAAAAAAAAAA"] {
        let resp = node.put("t", "new", Some(bad), None).await;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_token",
            &format!("PUT token {bad:?}"),
        )
        .await;
        let resp = node.delete("t", Some(bad)).await;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_token",
            &format!("DELETE token {bad:?}"),
        )
        .await;
    }
    assert_eq!(node.get_single("t").await.0, b"original", "nothing written");
    Ok(())
}

#[tokio::test]
async fn query_params_are_validated() -> TestResult {
    let node = TestNode::start().await;
    node.put_ok("q", "v", None).await;
    let get_q = |q: &str| node.client.get(format!("{}?{q}", node.kv_url("q"))).send();
    let put_q = |q: &str| {
        node.client
            .put(format!("{}?{q}", node.kv_url("q-put")))
            .body("w")
            .send()
    };

    for q in [
        "r=abc",
        "r=0",
        "r=-1",
        "r=",
        "w=7",
        "timeout_ms=0",
        "timeout_ms=60001",
        "timeout_ms=abc",
        "foo=1",
    ] {
        let resp = get_q(q).await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_param",
            &format!("GET ?{q}"),
        )
        .await;
    }
    for q in [
        "w=7",
        "w=abc",
        "w=0",
        "r=abc",
        "timeout_ms=0",
        "returnbody=maybe",
        "foo=1",
    ] {
        let resp = put_q(q).await?;
        assert_error(
            resp,
            StatusCode::BAD_REQUEST,
            "bad_param",
            &format!("PUT ?{q}"),
        )
        .await;
    }
    assert_error(
        node.get("q-put").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "a rejected PUT wrote nothing",
    )
    .await;
    let resp = node
        .client
        .delete(format!("{}?w=abc", node.kv_url("q")))
        .send()
        .await?;
    assert_error(resp, StatusCode::BAD_REQUEST, "bad_param", "DELETE ?w=abc").await;

    for q in [
        "r=one",
        "r=quorum",
        "r=all",
        "r=1",
        "r=3",
        "timeout_ms=60000",
        "r=all&timeout_ms=5000",
    ] {
        let resp = get_q(q).await?;
        assert_eq!(resp.status(), StatusCode::OK, "GET ?{q} accepted");
        assert_eq!(resp.bytes().await?.as_ref(), b"v");
    }
    for q in ["w=one", "w=quorum", "w=all", "w=3", "w=1&timeout_ms=60000"] {
        let resp = put_q(q).await?;
        expect_204_token(resp, &format!("PUT ?{q}")).await;
    }
    Ok(())
}

#[tokio::test]
async fn sibling_cap_is_409_and_resolving_works() -> TestResult {
    let node = TestNode::start_with(&["--max-siblings", "4"]).await;
    let t0 = node.put_ok("s", "base", None).await;
    for i in 0..4 {
        node.put_ok("s", format!("sib{i}"), Some(&t0)).await;
    }
    let resp = node.put("s", "sib4", Some(&t0), None).await;
    assert_error(resp, StatusCode::CONFLICT, "sibling_limit", "5th sibling").await;

    let (siblings, t300) = node.get_siblings("s").await;
    assert_eq!(
        siblings,
        sorted((0..4).map(|i| sib(format!("sib{i}"))).collect()),
        "the refused write left nothing"
    );
    node.put_ok("s", "resolved", Some(&t300)).await;
    assert_eq!(node.get_single("s").await.0, b"resolved");
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() -> TestResult {
    let node = TestNode::start().await;
    for path in ["/nope", "/kvx", "/kv-nope/a", "/debug"] {
        let resp = node.client.get(node.url(path)).send().await?;
        assert_error(
            resp,
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("GET {path}"),
        )
        .await;
    }
    let wrong = [
        (Method::PATCH, "/kv/x"),
        (Method::POST, "/kv/x"),
        (Method::GET, "/batch"),
        (Method::DELETE, "/health"),
        (Method::PUT, "/kv"),
    ];
    for (method, path) in wrong {
        let resp = node
            .client
            .request(method.clone(), node.url(path))
            .body("x")
            .send()
            .await?;
        assert_error(
            resp,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} {path}"),
        )
        .await;
    }
    Ok(())
}
