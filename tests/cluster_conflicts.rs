//! Concurrent writes during a partition: two writes from the same token through different
//! coordinators, while a replica is down, become siblings everywhere once the hints are
//! handed off, and a write with the siblings' token resolves them on every replica.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;

const K: &str = "conflict/k";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_become_siblings_and_a_write_resolves_them() {
    let mut cluster = Cluster::start(3, &HINTS_ONLY).await;

    cluster.nodes[0].put_ok(K, "v0", None).await;
    let (v, _, t) = cluster.nodes[0].get_single(K).await;
    assert_eq!(v, b"v0");
    {
        let nodes = &cluster.nodes;
        wait_until(
            Duration::from_secs(10),
            "v0 on all 3 nodes",
            || async move {
                for n in nodes {
                    local_has_exactly(n, K, &[b"v0"]).await?;
                }
                Ok(())
            },
        )
        .await;
    }

    cluster.nodes[1].sigkill().await;
    eprintln!("node 2 killed");
    // Both writes replace v0 (they carry its token), neither saw the other.
    let q = [("timeout_ms", "10000")];
    try_put(&cluster.nodes[0], K, b"A", Some(&t), &q)
        .await
        .unwrap_or_else(|e| panic!("write A through node 1 with node 2 down: {e}"));
    try_put(&cluster.nodes[2], K, b"B", Some(&t), &q)
        .await
        .unwrap_or_else(|e| panic!("write B through node 3 with node 2 down: {e}"));

    // Each coordinator left a hint for node 2 (the only stand-in with 3 nodes is itself).
    {
        let nodes = &cluster.nodes;
        let node2 = cluster.nodes[1].node_id.clone();
        let node2 = &node2;
        wait_until(
            Duration::from_secs(10),
            "nodes 1 and 3 to each hold a hint for node 2",
            || async move {
                for j in [0, 2] {
                    let r = try_json(&nodes[j], "/debug/replication").await?;
                    if r["hints_pending"][node2]["count"].as_u64() != Some(1) {
                        return Err(format!("node {}: {r}", j + 1));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    cluster.nodes[1].restart_same_addrs().await;
    eprintln!("node 2 restarted");
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    cluster
        .wait_hints_drained(&cluster.all(), Duration::from_secs(30))
        .await;

    // Node 2 got both writes by handoff: its own copy has both siblings, and v0 is gone.
    {
        let node2 = &cluster.nodes[1];
        wait_until(
            Duration::from_secs(10),
            "node 2's own copy to hold A and B after the handoff",
            || async move { local_has_exactly(node2, K, &[b"A", b"B"]).await },
        )
        .await;
    }

    // Every node answers 300 with exactly A and B: nothing acknowledged is missing, and the
    // replaced v0 does not come back.
    let mut token = None;
    for (j, node) in cluster.nodes.iter().enumerate() {
        let (siblings, tok) = node.get_siblings(K).await;
        assert_eq!(
            siblings,
            sorted(vec![sib("A"), sib("B")]),
            "GET {K:?} via node {}",
            j + 1
        );
        token.get_or_insert(tok);
    }
    let token = token.expect("a token");

    // A write with the 300's token (through node 2, the one that was down) resolves them.
    cluster.nodes[1].put_ok(K, "C", Some(&token)).await;
    {
        let nodes = &cluster.nodes;
        wait_until(
            Duration::from_secs(10),
            "the resolved value C alone on all 3 nodes",
            || async move {
                for n in nodes {
                    local_has_exactly(n, K, &[b"C"]).await?;
                }
                Ok(())
            },
        )
        .await;
    }
    for (j, node) in cluster.nodes.iter().enumerate() {
        let (v, _, _) = node.get_single(K).await;
        assert_eq!(v, b"C", "GET {K:?} via node {} after resolving", j + 1);
    }
}
