//! `ringkv-client` against real nodes: every call of its README example and doctest
//! against one node, failover past a dead URL, and a 3-node cluster that loses a node
//! mid-run.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Cluster, FAST_GOSSIP};
use common::TestNode;
use futures::TryStreamExt;
use ringkv::client::{
    BatchOp, CallOptions, Client, ClientError, ClientOptions, ListQuery, ReadResult, Sibling,
};

/// Every call in these tests is cut off here: a hang fails the test.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CALL_TIMEOUT:?}"))
}

/// A URL nobody listens on: a port just released.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

fn sibling(value: &[u8], content_type: &str) -> Sibling {
    Sibling {
        value: Bytes::copy_from_slice(value),
        content_type: content_type.into(),
    }
}

#[tokio::test]
async fn every_call_round_trips_against_a_node() {
    let node = TestNode::start().await;
    // No scheme: `http://` is assumed.
    let addr = node.base_url().trim_start_matches("http://").to_owned();
    let client = Client::new(&addr).expect("a URL without a scheme is accepted");

    // The README example, call for call.
    let t0 = bounded(
        "put",
        client.put("greeting", Bytes::from("hello"), Some("text/plain"), None),
    )
    .await
    .expect("put");
    assert!(!t0.is_empty(), "put returns the new token");
    match bounded("get", client.get("greeting")).await.expect("get") {
        ReadResult::Value {
            data,
            content_type,
            token,
        } => {
            assert_eq!(data, "hello");
            assert_eq!(content_type, "text/plain");
            assert_eq!(token, t0, "a read after the write sees the write's token");
        }
        other => panic!("expected one value: {other:?}"),
    }

    // Two writes over the same token: siblings, each decoded to bytes (one binary).
    let binary = [0xffu8, 0x00, 0x80];
    bounded(
        "put a",
        client.put("greeting", Bytes::from("hi"), Some("text/plain"), Some(&t0)),
    )
    .await
    .expect("put a");
    bounded(
        "put b",
        client.put("greeting", Bytes::copy_from_slice(&binary), None, Some(&t0)),
    )
    .await
    .expect("put b");
    let read = bounded("get siblings", client.get("greeting"))
        .await
        .expect("get");
    let ReadResult::Siblings {
        mut siblings,
        token: both,
        ..
    } = read
    else {
        panic!("expected siblings: {read:?}");
    };
    siblings.sort_by(|a, b| a.value.cmp(&b.value));
    assert_eq!(
        siblings,
        vec![
            sibling(b"hi", "text/plain"),
            sibling(&binary, "application/octet-stream")
        ]
    );
    let head = bounded("head", client.head("greeting"))
        .await
        .expect("head");
    assert_eq!(head.siblings, 2);
    assert_eq!(head.token, both);

    // Per call: W=all on a one-node cluster is 1; a bad R is the node's 400, so the
    // option did reach it.
    let strict = client.with(CallOptions::new().w("all").timeout(Duration::from_secs(5)));
    let deleted = bounded("delete", strict.delete("greeting", Some(&both)))
        .await
        .expect("delete");
    assert!(deleted.found);
    assert!(
        !deleted.token.is_empty(),
        "delete returns the tombstone's token"
    );
    let bad = client.with(CallOptions::new().r("seventeen"));
    match bounded("bad r", bad.get("greeting")).await {
        Err(ClientError::Api {
            status: 400, code, ..
        }) => assert_eq!(code, "bad_param"),
        other => panic!("r=seventeen: {other:?}"),
    }

    // A 404 over the tombstone still has a token, and it is the delete's.
    let gone = bounded("get deleted", client.get("greeting"))
        .await
        .expect("get");
    assert!(!gone.is_found());
    assert_eq!(gone.token(), deleted.token);
    let again = bounded("delete again", client.delete("greeting", None))
        .await
        .expect("delete of a deleted key answers");
    assert!(!again.found);
    assert_eq!(
        bounded("head", client.head("greeting"))
            .await
            .unwrap()
            .siblings,
        0
    );

    // A batch: a put, a get of it, a get of nothing, a delete, and one bad op alone.
    let results = bounded(
        "batch",
        client.batch(&[
            BatchOp::put("b/1", b"one").content_type("text/plain"),
            BatchOp::put("b/2", [0xfeu8, 0xff]),
            BatchOp::get("b/nothing"),
            BatchOp::delete("b/2"),
            BatchOp::get("").token("x"),
        ]),
    )
    .await
    .expect("batch");
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![204, 204, 404, 204, 400], "{results:?}");
    assert!(results[2].token.is_some(), "a 404 in a batch has its token");
    assert_eq!(results[4].error.as_deref(), Some("bad_key"), "{results:?}");
    let got = bounded("batch get", client.batch(&[BatchOp::get("b/1")]))
        .await
        .expect("batch of a get");
    assert_eq!(got[0].status, 200);
    assert_eq!(got[0].siblings, vec![sibling(b"one", "text/plain")]);

    // A listing as a stream of pages: 7 keys, 3 a page, in byte order.
    for i in 0..7 {
        bounded(
            "put",
            client.put(&format!("l/{i}"), Bytes::from(format!("v{i}")), None, None),
        )
        .await
        .expect("put");
    }
    bounded("put", client.put("m/other", Bytes::from("x"), None, None))
        .await
        .expect("put");
    let pages: Vec<_> = bounded(
        "list",
        client
            .list(ListQuery::new().prefix("l/").page_size(3))
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("list");
    let sizes: Vec<usize> = pages.iter().map(|p| p.items.len()).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let keys: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|i| i.key.clone()))
        .collect();
    let expected: Vec<String> = (0..7).map(|i| format!("l/{i}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(
        pages[0].items[0].siblings,
        vec![sibling(b"v0", "application/octet-stream")]
    );
    // An error is the stream's item, and the stream ends after it.
    let bad = client.with(CallOptions::new().r("seventeen"));
    let mut pages = std::pin::pin!(bad.list(ListQuery::new()));
    match bounded("bad list", pages.try_next()).await {
        Err(ClientError::Api {
            status: 400, code, ..
        }) => assert_eq!(code, "bad_param"),
        other => panic!("a listing with r=seventeen: {other:?}"),
    }
    assert!(bounded("after the error", pages.try_next())
        .await
        .unwrap()
        .is_none());
    // A cursor the node did not issue is refused, not read as a key.
    match bounded(
        "bad cursor",
        client.list_page(&ListQuery::new(), Some("bogus")),
    )
    .await
    {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("a forged cursor: {other:?}"),
    }
}

#[tokio::test]
async fn calls_go_to_the_next_url_when_the_first_is_dead() {
    let node = TestNode::start().await;
    let dead = dead_url();
    let client = Client::with_nodes([dead.as_str(), &node.base_url()], &ClientOptions::default())
        .expect("client");
    let token = bounded("put", client.put("f", Bytes::from("v"), None, None))
        .await
        .expect("a write moves past a node it cannot connect to");
    let read = bounded("get", client.get("f")).await.expect("get");
    assert_eq!(read.token(), token);
    bounded("batch", client.batch(&[BatchOp::get("f")]))
        .await
        .expect("batch");
    let pages: Vec<_> = bounded(
        "list",
        client.list(ListQuery::new()).try_collect::<Vec<_>>(),
    )
    .await
    .expect("list");
    assert_eq!(pages.iter().map(|p| p.items.len()).sum::<usize>(), 1);

    // Alone, the dead URL is an error that says so.
    let alone = Client::new(&dead).expect("client");
    let err = bounded("get", alone.get("f"))
        .await
        .expect_err("nobody listens");
    assert!(err.is_unavailable(), "{err}");
}

/// The issue's "client round trips against a 3-node cluster with one node killed
/// mid-run": the client is given all three nodes; the one it talks to is killed between
/// two calls; every call before and after succeeds, and every acknowledged write reads
/// back.
#[tokio::test]
async fn a_three_node_cluster_keeps_serving_the_client_when_a_node_is_killed() {
    let mut cluster = Cluster::start(3, &FAST_GOSSIP).await;
    let urls: Vec<String> = cluster.nodes.iter().map(TestNode::base_url).collect();
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let client = Client::with_nodes(&urls, &options).expect("client");
    const KEYS: usize = 40;
    const KILL_AFTER: usize = 15;
    let started = Instant::now();
    let mut written = Vec::new();
    for i in 0..KEYS {
        if i == KILL_AFTER {
            // Node 1 is the one the client talks to: it answered every call so far.
            cluster.nodes[0].sigkill().await;
        }
        let key = format!("k{i}");
        let value = format!("v{i}");
        let token = bounded(
            "put",
            client.put(&key, Bytes::from(value.clone()), None, None),
        )
        .await
        .unwrap_or_else(|e| panic!("put {key} (node 1 killed: {}): {e}", i >= KILL_AFTER));
        written.push((key, value, token));
        // Read back a key from before the kill as well as the one just written.
        let (key, value, _) = &written[i / 2];
        match bounded("get", client.get(key)).await {
            Ok(ReadResult::Value { data, .. }) => assert_eq!(data, value.as_str(), "{key}"),
            other => panic!("get {key} after write {i}: {other:?}"),
        }
    }
    for (key, value, _) in &written {
        let read = bounded("get", client.get(key)).await.expect("get");
        assert!(
            matches!(&read, ReadResult::Value { data, .. } if data == value.as_str()),
            "{key}: {read:?}"
        );
    }
    let listed: usize = bounded(
        "list",
        client
            .list(ListQuery::new().page_size(7))
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("list with a node down")
    .iter()
    .map(|p| p.items.len())
    .sum();
    assert_eq!(listed, KEYS);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run took {:?}",
        started.elapsed()
    );
}

/// The repository README's client example is `client/README.md`'s, which is compiled as a
/// doctest (`ringkv_client::ReadmeExample`): the two may not drift apart.
#[test]
fn the_readme_example_is_the_compiled_one() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("readable README");
    let block = |text: &str| -> String {
        let after = text
            .split("```rust,no_run\n")
            .nth(1)
            .expect("a rust,no_run block");
        let body = after.split("```").next().expect("a closed block");
        // rustdoc's hidden lines (`# …`) are not shown in the repository README.
        body.lines()
            .filter(|l| !l.starts_with("# "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let crate_readme = read("client/README.md");
    let root_readme = read("README.md");
    let section = root_readme
        .split("## Client library")
        .nth(1)
        .expect("README has a Client library section");
    assert_eq!(block(section), block(&crate_readme));
}
