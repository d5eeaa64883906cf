//! Tombstones and their garbage collection (`--tombstone-grace 3s`, anti-entropy every 1 s):
//! - a delete that a down replica missed is not collected while that replica lacks it (even
//!   long past the grace); once the replica is back, anti-entropy gives it the tombstone,
//!   the key reads 404 everywhere and stays so, then the tombstone is collected on every
//!   replica and nothing comes back;
//! - a delete seen by every replica is kept for the grace period, then collected, and the
//!   key never reappears;
//! - a node that left and is restarted on its old data dir does not bring back a key that
//!   was deleted (and collected) after it left.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::TestNode;
use reqwest::StatusCode;

const GRACE: Duration = Duration::from_secs(3);
/// A request may be slow right after a kill, before the failure detector notices.
const TIMEOUT_MS: &str = "10000";

fn flags(hints: bool) -> Vec<&'static str> {
    let mut f = vec![
        "--gossip-interval",
        "100ms",
        "--anti-entropy-interval",
        "1s",
        "--tombstone-grace",
        "3s",
    ];
    if !hints {
        f.extend(["--max-hint-bytes", "0"]);
    }
    f
}

/// What one node stores for a key, reduced to what these tests care about.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Held {
    Absent,
    TombstoneOnly,
    Live,
}

async fn held(node: &TestNode, key: &str) -> Held {
    match local(node, key).await {
        None => Held::Absent,
        Some(set) if live_values(&set).is_empty() => Held::TombstoneOnly,
        Some(_) => Held::Live,
    }
}

async fn held_all(nodes: &[&TestNode], key: &str) -> Vec<Held> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(held(n, key).await);
    }
    out
}

/// `GET /kv/{key}` through `node`: its status.
async fn get_status(node: &TestNode, key: &str) -> StatusCode {
    node.client
        .get(node.kv_url(key))
        .query(&[("timeout_ms", TIMEOUT_MS)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key:?} via {}: {e}", node.addr))
        .status()
}

/// Puts `key` through node 1 and waits until all nodes store it.
async fn put_everywhere(nodes: &[&TestNode], key: &str) {
    try_put(nodes[0], key, b"alive", None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        Duration::from_secs(10),
        &format!("{key:?} on every node"),
        || async move {
            for n in nodes {
                local_has_exactly(n, key, &[b"alive"]).await?;
            }
            Ok(())
        },
    )
    .await;
}

/// From now on, every GET of `key` through any node answers 404 and no node stores a live
/// value for it; polls until every node has dropped the key and `linger` more has passed
/// (so a value that came back late would be seen). Fails if the key is not collected on
/// every node within `limit`. Returns when it was first seen collected everywhere.
async fn stays_deleted_until_collected(
    nodes: &[&TestNode],
    key: &str,
    limit: Duration,
    linger: Duration,
) -> Instant {
    let started = Instant::now();
    let mut collected_at: Option<Instant> = None;
    let mut rounds = 0u32;
    // Bounded: each round takes at least 100 ms.
    while started.elapsed() < limit + linger + Duration::from_secs(5) {
        rounds += 1;
        for (i, n) in nodes.iter().enumerate() {
            let status = get_status(n, key).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "GET {key:?} via node {} after the delete (round {rounds}, {:?} in): the \
                 deleted value came back",
                i + 1,
                started.elapsed()
            );
        }
        let state = held_all(nodes, key).await;
        assert!(
            !state.contains(&Held::Live),
            "a node stores a live value of deleted {key:?} again: {state:?} (round {rounds}, \
             {:?} in)",
            started.elapsed()
        );
        let all_gone = state.iter().all(|h| *h == Held::Absent);
        match collected_at {
            None if all_gone => {
                collected_at = Some(Instant::now());
                eprintln!("{key:?} collected on every node {:?} in", started.elapsed());
            }
            None => assert!(
                started.elapsed() < limit,
                "{key:?} not collected on every node within {limit:?}: {state:?}"
            ),
            Some(at) => {
                assert!(
                    all_gone,
                    "{key:?} was collected everywhere, then came back: {state:?}"
                );
                if at.elapsed() >= linger {
                    return at;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{key:?}: polling ran out of time ({rounds} rounds)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_missed_by_a_down_replica_is_not_undone() {
    let key = "ae/tomb/missed";
    let mut cluster = Cluster::start(3, &flags(false)).await;
    put_everywhere(&cluster.nodes.iter().collect::<Vec<_>>(), key).await;

    cluster.nodes[1].sigkill().await;
    eprintln!("node 2 killed; it keeps the live value");
    let resp = cluster.nodes[0]
        .client
        .delete(cluster.nodes[0].kv_url(key))
        .query(&[("timeout_ms", TIMEOUT_MS)])
        .send()
        .await
        .expect("DELETE");
    common::expect_204_token(resp, "DELETE through node 1 with node 2 down").await;
    let deleted = Instant::now();
    let up = [&cluster.nodes[0], &cluster.nodes[2]];
    {
        let up = &up;
        wait_until(
            Duration::from_secs(5),
            "the tombstone on nodes 1 and 3",
            || async move {
                let state = held_all(up, key).await;
                if state == [Held::TombstoneOnly; 2] {
                    Ok(())
                } else {
                    Err(format!("nodes 1, 3 hold {state:?}"))
                }
            },
        )
        .await;
    }

    // Node 2 stays down well past the grace: the tombstone must not be collected while a
    // replica lacks it.
    tokio::time::sleep((GRACE + Duration::from_millis(2500)).saturating_sub(deleted.elapsed()))
        .await;
    assert_eq!(
        held_all(&up, key).await,
        [Held::TombstoneOnly; 2],
        "{:?} after the delete (grace {GRACE:?}) with node 2 down, nodes 1 and 3 must still \
         hold the tombstone",
        deleted.elapsed()
    );
    assert_eq!(
        counters_sum(&up, &["tombstones_collected"]).await,
        0,
        "a tombstone was collected while a replica was down"
    );

    cluster.nodes[1].restart_same_addrs().await;
    eprintln!(
        "node 2 restarted; it holds {:?}",
        held(&cluster.nodes[1], key).await
    );

    // No reads through the cluster yet: anti-entropy gives node 2 the tombstone.
    {
        let node2 = &cluster.nodes[1];
        wait_until(
            Duration::from_secs(20),
            "node 2 to lose its live value (anti-entropy)",
            || async move {
                match held(node2, key).await {
                    Held::Live => Err("node 2 still stores the live value".to_owned()),
                    _ => Ok(()),
                }
            },
        )
        .await;
    }

    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    stays_deleted_until_collected(&nodes, key, Duration::from_secs(20), Duration::from_secs(4))
        .await;
    let collected = counters_sum(&nodes, &["tombstones_collected"]).await;
    assert!(
        collected > 0,
        "the key is gone from every node, yet tombstones_collected is 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_seen_everywhere_is_collected_after_the_grace() {
    let key = "ae/tomb/everywhere";
    let cluster = Cluster::start(3, &flags(true)).await;
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    put_everywhere(&nodes, key).await;

    let sent = Instant::now();
    let resp = nodes[2].delete(key, None).await;
    common::expect_204_token(resp, "DELETE through node 3").await;

    // Within the grace, every replica holds the tombstone (replicated, not yet collected).
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(sent.elapsed())).await;
    assert_eq!(
        held_all(&nodes, key).await,
        [Held::TombstoneOnly; 3],
        "2 s after the delete (grace {GRACE:?}) every node must hold the tombstone"
    );

    let collected_at = stays_deleted_until_collected(
        &nodes,
        key,
        GRACE + Duration::from_secs(15),
        Duration::from_secs(4),
    )
    .await;
    // The tombstone was written after `sent`; it may go only once the grace has passed.
    assert!(
        collected_at.duration_since(sent) + Duration::from_millis(100) >= GRACE,
        "collected {:?} after the delete, before the {GRACE:?} grace",
        collected_at.duration_since(sent)
    );
    let collected = counters_sum(&nodes, &["tombstones_collected"]).await;
    assert!(
        collected > 0,
        "the key is gone from every node, yet tombstones_collected is 0"
    );

    // The key is usable again afterwards.
    try_put(nodes[1], key, b"reborn", None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = try_get_value(nodes[0], key, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, b"reborn");
}

/// A node that left keeps its data dir (it exits with its copy). Restarted on it, it must
/// not bring back a key deleted (and collected) after it left: either it refuses to start,
/// or it comes back without resurrecting what the cluster deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_does_not_bring_deleted_keys_back_when_restarted() {
    use futures::FutureExt as _;

    let key = "ae/tomb/after-leave";
    let mut cluster = Cluster::start(3, &flags(true)).await;
    put_everywhere(&cluster.nodes.iter().collect::<Vec<_>>(), key).await;

    let (status, body) = post_empty(&cluster.nodes[2], "/admin/leave").await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST /admin/leave: {body}");
    let exit = cluster.nodes[2]
        .wait_exited(Duration::from_secs(30))
        .await
        .expect("node 3 exits after leaving");
    assert!(exit.success(), "node 3 exited with {exit} after leaving");
    let rest = [&cluster.nodes[0], &cluster.nodes[1]];
    let rest_ids: std::collections::BTreeSet<String> =
        rest.iter().map(|n| n.node_id.clone()).collect();
    wait_settled_members(
        &[(0, rest[0]), (1, rest[1])],
        &rest_ids,
        Duration::from_secs(30),
    )
    .await;

    // Deleted after node 3 left, and collected on the 2 remaining replicas.
    common::expect_204_token(rest[0].delete(key, None).await, "DELETE after the leave").await;
    stays_deleted_until_collected(&rest, key, GRACE + Duration::from_secs(15), Duration::ZERO)
        .await;

    // The operator (or a supervisor) starts node 3 again on its old data dir.
    let restarted = std::panic::AssertUnwindSafe(cluster.nodes[2].restart_same_addrs())
        .catch_unwind()
        .await;
    if restarted.is_err() {
        // Refused for the right reason: the node said it left, not some other failure to
        // start (a port taken, a crash) that would pass here unseen.
        let log = cluster.nodes[2].log_text();
        assert!(
            log.contains("left its cluster"),
            "node 3 failed to start again, but not because it left:\n{}",
            cluster.nodes[2].log_tail(40)
        );
        eprintln!("node 3 refused to start again after leaving: acceptable");
        return;
    }
    eprintln!("node 3 is running again on the data dir it left with");
    // For 6 s: no GET through any node finds the value, and nodes 1 and 2 never store it
    // again. Nodes 1 and 2 are the cluster's two live members, so they reach their quorum
    // and must answer 404 (a 503 from them would hide a cluster that answers nothing); node
    // 3 may also refuse with a 503 JSON error (rejoining, or fenced).
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(6) {
        rounds += 1;
        for (i, n) in cluster.nodes.iter().enumerate() {
            let resp = n
                .client
                .get(n.kv_url(key))
                .query(&[("timeout_ms", TIMEOUT_MS)])
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {key:?} via node {}: {e}", i + 1));
            let status = resp.status();
            let refused_by_node_3 = i == 2 && status == StatusCode::SERVICE_UNAVAILABLE;
            if refused_by_node_3 {
                let body = common::json_body(resp, "503 from node 3").await;
                let code = body["error"].as_str().unwrap_or_default();
                assert!(
                    code == "unavailable" || code == "removed",
                    "node 3's 503 is not a refusal to serve: {body}"
                );
                common::assert_error_json(&body, code, "503 from node 3");
                continue;
            }
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "GET {key:?} via node {} {:?} after node 3 (which left before the delete) \
                 restarted on its old data dir (round {rounds}); stored on nodes 1-3: {:?}",
                i + 1,
                started.elapsed(),
                held_all(&cluster.nodes.iter().collect::<Vec<_>>(), key).await
            );
        }
        let state = held_all(&[&cluster.nodes[0], &cluster.nodes[1]], key).await;
        assert!(
            !state.contains(&Held::Live),
            "{:?} after node 3 restarted on the data dir it left with, nodes 1 and 2 store \
             the deleted {key:?} again: {state:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
