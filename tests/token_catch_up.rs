//! An honest read-modify-write through a replica that lags (3 nodes, N=3, anti-entropy off,
//! handoff held back): the token was read at replicas that are ahead of the coordinating
//! one. The coordinator clamps tokens to what it has seen, so it first catches up (a read
//! at R, merged locally) and the write then supersedes everything the client read: one
//! value on every replica, no sibling of the version the client saw.

mod common;

use common::cluster::*;
use common::TOKEN_HEADER;
use reqwest::StatusCode;

const K: &str = "catchup/k";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_ahead_of_the_coordinator_supersedes_what_it_read() {
    let flags = [
        "--gossip-interval",
        "100ms",
        "--anti-entropy-interval",
        "0",
        "--handoff-interval",
        "1h",
    ];
    let mut cluster = Cluster::start(3, &flags).await;
    try_put(&cluster.nodes[0], K, b"v1", None, &[("w", "all")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Node 3 goes down; v2 is written over v1 through node 1 and reaches nodes 1 and 2.
    cluster.nodes[2].sigkill().await;
    cluster.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;
    let resp = cluster.nodes[0].get(K).await;
    let t1 = common::token(&resp).expect("token of v1");
    try_put(&cluster.nodes[0], K, b"v2", Some(&t1), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The client reads v2 (at nodes 1 and 2) and keeps its token.
    let resp = cluster.nodes[0].get(K).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let t2 = common::token(&resp).expect("token of v2");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"v2");

    // Node 3 comes back with v1 only: its hint is held back, anti-entropy is off.
    cluster.nodes[2].restart_same_addrs().await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    local_has_exactly(&cluster.nodes[2], K, &[b"v1"])
        .await
        .unwrap_or_else(|e| panic!("the scenario needs node 3 behind: {e}"));

    // The read-modify-write goes through node 3, which coordinates it.
    let resp = cluster.nodes[2]
        .client
        .put(cluster.nodes[2].kv_url(K))
        .header(TOKEN_HEADER, &t2)
        .body("v3")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PUT v3 via node 3");

    // v3 superseded v2 (the client read it) and v1: one value, everywhere.
    let nodes = &cluster.nodes;
    wait_until(
        CONVERGE_TIMEOUT,
        "v3 alone on every replica",
        || async move {
            for n in nodes {
                local_has_exactly(n, K, &[b"v3"]).await?;
            }
            Ok(())
        },
    )
    .await;
    for n in nodes {
        let got = try_get_value(n, K, &[("r", "all")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, b"v3");
    }
}
