//! A listing is never silently partial. With N=1 on three nodes, killing one leaves its
//! ranges with no replica: `GET /kv` answers 503 `unavailable` instead of a page without
//! its keys. With N=2, every range of the dead node has another replica, and the listing
//! returns every key.

mod common;

use std::collections::BTreeSet;

use common::cluster::*;
use common::listing::list_prefix;
use common::{assert_error_json, TestNode};
use reqwest::StatusCode;
use serde_json::Value;

const KEYS: usize = 60;

fn key(i: usize) -> String {
    format!("list/{i:03}")
}

/// Every key of a paginated listing through `node`, or the first non-200 answer.
async fn list_all(node: &TestNode) -> Result<BTreeSet<String>, (StatusCode, Value)> {
    // Bounded: at most one page per key, plus one.
    let keys = list_prefix(node, "list/", 25, KEYS + 1).await?;
    Ok(keys.into_iter().collect())
}

async fn write_keys(cluster: &Cluster) {
    let errors = for_each_bounded(0..KEYS, 8, |i| {
        let node = &cluster.nodes[i % 3];
        async move { try_put(node, &key(i), b"v", None, &[]).await.map(|_| ()) }
    })
    .await;
    assert_no_errors(&errors, "writes");
}

fn every_key() -> BTreeSet<String> {
    (0..KEYS).map(key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncovered_ranges_make_the_listing_fail_with_503() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--gossip-interval",
            "100ms",
            "--n",
            "1",
            "--r",
            "1",
            "--w",
            "1",
        ],
    )
    .await;
    write_keys(&cluster).await;
    let all = list_all(&cluster.nodes[0])
        .await
        .expect("listing with every node up");
    assert_eq!(all, every_key());

    // The keys node 3 alone holds: with N=1 they have no other replica.
    let mut only_on_3 = 0;
    for i in 0..KEYS {
        if local(&cluster.nodes[2], &key(i)).await.is_some() {
            only_on_3 += 1;
        }
    }
    assert!(only_on_3 > 0, "node 3 holds none of the {KEYS} keys");

    cluster.nodes[2].sigkill().await;
    cluster.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;
    for via in [0, 1] {
        let (status, body) = list_all(&cluster.nodes[via])
            .await
            .expect_err("a listing that misses node 3's ranges must not answer 200");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_error_json(&body, "unavailable", "listing with node 3 down");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(&cluster.nodes[2].node_id), "{message}");
    }

    // Back up: the listing is whole again.
    cluster.nodes[2].restart_same_addrs().await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let all = list_all(&cluster.nodes[0])
        .await
        .expect("listing after node 3 is back");
    assert_eq!(all, every_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_ranges_are_read_from_another_replica() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--gossip-interval",
            "100ms",
            "--anti-entropy-interval",
            "0",
            "--n",
            "2",
            "--r",
            "1",
            "--w",
            "2",
        ],
    )
    .await;
    write_keys(&cluster).await;
    cluster.nodes[2].sigkill().await;
    cluster.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;
    for via in [0, 1] {
        let all = list_all(&cluster.nodes[via])
            .await
            .unwrap_or_else(|(s, b)| panic!("listing with node 3 down: {s} {b}"));
        assert_eq!(all, every_key(), "listing via node {}", via + 1);
    }
}
