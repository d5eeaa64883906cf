//! Anti-entropy alone repairs a replica that missed writes: with hints off and no reads
//! through the cluster (so no read repair), a node that was down while 200 keys were
//! written holds every one of them, with the same sibling sets as its peers, soon after it
//! comes back. Once the replicas agree, exchanges keep running but move nothing. With a
//! long interval, the catch-up a restarted node runs when it first sees the ring does the
//! repair, well before any timer would.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::TestNode;

const KEYS: usize = 200;

fn flags(interval: &str) -> [&str; 6] {
    [
        "--gossip-interval",
        "100ms",
        "--max-hint-bytes",
        "0",
        "--anti-entropy-interval",
        interval,
    ]
}
/// A write may be slow right after the kill, before the failure detector notices.
const TIMEOUT_MS: &str = "10000";

fn key(i: usize) -> String {
    format!("ae/conv/{i:03}")
}

fn value(i: usize) -> String {
    format!("written-while-node-2-was-down-{i}")
}

/// Every key's `/debug/local` answer, identical on all nodes (the whole JSON: versions,
/// dots, values, timestamps, context and token). `Err` names the first key that differs.
async fn all_identical(nodes: &[&TestNode]) -> Result<(), String> {
    let errors = for_each_bounded(0..KEYS, 16, |i| async move {
        let k = key(i);
        let mut first: Option<serde_json::Value> = None;
        for (j, node) in nodes.iter().enumerate() {
            let set = try_local(node, &k)
                .await?
                .ok_or_else(|| format!("{k:?} is not stored on node {}", j + 1))?;
            match &first {
                None => first = Some(set),
                Some(f) if *f == set => {}
                Some(f) => {
                    return Err(format!(
                        "{k:?} differs: node 1 has {f}, node {} has {set}",
                        j + 1
                    ))
                }
            }
        }
        let set = first.unwrap_or_default();
        let live = live_values(&set);
        if live != [value(i).into_bytes()] {
            return Err(format!("{k:?}: live values {:?}", lossy(&live)));
        }
        Ok(())
    })
    .await;
    match errors.first() {
        None => Ok(()),
        Some(e) => Err(format!("{} key(s) not converged; e.g. {e}", errors.len())),
    }
}

/// Starts 3 nodes with `interval`, kills node 2, writes `KEYS` keys through node 1 (nodes 1
/// and 3 store them), and restarts node 2 on its addresses. Returns the cluster and the
/// keys moved by anti-entropy on nodes 1 and 3 up to the restart.
async fn node_2_misses_every_write(interval: &str) -> (Cluster, u64) {
    let mut cluster = Cluster::start(3, &flags(interval)).await;

    cluster.nodes[1].sigkill().await;
    eprintln!("node 2 killed");

    // 200 writes at the default W=2 through node 1: nodes 1 and 3 store them, node 2
    // misses every one (no stand-in exists for a 3-node ring, and hints are off anyway).
    let q = [("timeout_ms", TIMEOUT_MS)];
    let errors = {
        let node1 = &cluster.nodes[0];
        let q = &q;
        for_each_bounded(0..KEYS, 8, |i| async move {
            try_put(node1, &key(i), value(i).as_bytes(), None, q)
                .await
                .map(|_| ())
        })
        .await
    };
    assert_no_errors(&errors, "writes with node 2 down");
    {
        let (n1, n3) = (&cluster.nodes[0], &cluster.nodes[2]);
        wait_until(
            Duration::from_secs(10),
            "every key on nodes 1 and 3",
            || async move {
                for i in 0..KEYS {
                    local_has_exactly(n1, &key(i), &[value(i).as_bytes()]).await?;
                    local_has_exactly(n3, &key(i), &[value(i).as_bytes()]).await?;
                }
                Ok(())
            },
        )
        .await;
    }

    // The keys moved so far by the survivors; the restarted node 2 starts from zero.
    let before = counters_sum(&[&cluster.nodes[0], &cluster.nodes[2]], &MOVED).await;
    assert_eq!(
        cluster.hints_pending_total(&[0, 2]).await,
        0,
        "hints are off (--max-hint-bytes 0): none may be queued"
    );

    cluster.nodes[1].restart_same_addrs().await;
    eprintln!("node 2 restarted");
    (cluster, before)
}

const MOVED: [&str; 2] = ["ae_keys_pulled", "ae_keys_pushed"];

/// Each node's count of finished anti-entropy exchanges.
async fn exchanges(nodes: &[&TestNode]) -> Vec<u64> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(counter(&replication_json(n).await, "ae_exchanges"));
    }
    out
}

/// Waits (bounded by `limit`) until every node has finished `more` exchanges since `since`.
/// A node runs its exchanges one after another, and adds an exchange's keys to its counters
/// right after counting it, so after two more the one in flight at `since` is fully counted:
/// the counters can be read without a sleep.
async fn wait_exchanges_since(nodes: &[&TestNode], since: &[u64], more: u64, limit: Duration) {
    wait_until(
        limit,
        &format!("{more} more anti-entropy exchanges on every node"),
        || async move {
            let now = exchanges(nodes).await;
            if now.iter().zip(since).all(|(n, s)| *n >= s + more) {
                Ok(())
            } else {
                Err(format!("exchanges {since:?} then, {now:?} now"))
            }
        },
    )
    .await;
}

/// Waits (bounded by `limit`) until anti-entropy on `nodes` has moved (pulled + pushed) at
/// least the `KEYS` node 2 missed since `before`; returns the total moved then.
async fn wait_moved_every_missed_key(nodes: &[&TestNode], before: u64, limit: Duration) -> u64 {
    wait_until(
        limit,
        &format!("anti-entropy to move at least the {KEYS} keys node 2 missed"),
        || async move {
            let moved = counters_sum(nodes, &MOVED).await;
            if moved.saturating_sub(before) >= KEYS as u64 {
                Ok(moved)
            } else {
                Err(format!(
                    "moved {} keys (pulled+pushed over all nodes) since node 2 came back",
                    moved.saturating_sub(before)
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_alone_repairs_a_replica_that_missed_writes() {
    let (cluster, before) = node_2_misses_every_write("1s").await;
    let restarted = Instant::now();

    // No reads through the cluster from here on: only anti-entropy may repair node 2.
    {
        let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
        let nodes = &nodes;
        wait_until(
            Duration::from_secs(25),
            "all 3 replicas to hold identical sets for every key (anti-entropy only)",
            || async move { all_identical(nodes).await },
        )
        .await;
    }
    eprintln!(
        "replicas identical {:?} after the restart",
        restarted.elapsed()
    );

    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    // An exchange's counters are added when it ends: wait until the keys are counted, then
    // until every exchange in flight at convergence has ended, before reading the total.
    wait_moved_every_missed_key(&nodes, before, Duration::from_secs(10)).await;
    wait_exchanges_since(&nodes, &exchanges(&nodes).await, 2, Duration::from_secs(15)).await;
    let after = counters_sum(&nodes, &MOVED).await;
    eprintln!("keys pulled+pushed: {before} before node 2 came back, {after} after convergence");
    let other_repairs = counters_sum(&nodes, &["hints_delivered", "read_repairs"]).await;
    assert_eq!(
        other_repairs, 0,
        "no hint delivery or read repair may have taken part"
    );

    // Roots match: exchanges keep running (at least one per node per second) and move
    // nothing. Every node must finish 3 more within 15 s (a 1 s interval), or the timer
    // stopped.
    let per_node_before = exchanges(&nodes).await;
    let exchanges_before: u64 = per_node_before.iter().sum();
    wait_exchanges_since(&nodes, &per_node_before, 3, Duration::from_secs(15)).await;
    let exchanges_after = counters_sum(&nodes, &["ae_exchanges"]).await;
    let moved_later = counters_sum(&nodes, &MOVED).await;
    eprintln!(
        "while converged: {} exchanges, {} keys moved",
        exchanges_after - exchanges_before,
        moved_later - after
    );
    assert_eq!(
        moved_later,
        after,
        "identical replicas, yet anti-entropy moved {} more keys across {} exchanges",
        moved_later - after,
        exchanges_after - exchanges_before
    );
    all_identical(&nodes)
        .await
        .unwrap_or_else(|e| panic!("after the quiet period: {e}"));
}

/// With a 30 s interval no periodic exchange runs during the test: the restarted node's
/// catch-up (every owned range, once it sees the ring and its peers) must do the repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_without_waiting_for_the_timer() {
    let (cluster, before) = node_2_misses_every_write("30s").await;
    let restarted = Instant::now();
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    {
        let nodes = &nodes;
        wait_until(
            Duration::from_secs(20),
            "all 3 replicas identical for every key, by node 2's catch-up (interval 30 s)",
            || async move { all_identical(nodes).await },
        )
        .await;
    }
    eprintln!(
        "replicas identical {:?} after the restart",
        restarted.elapsed()
    );
    // The catch-up's counters are added as each of its exchanges ends: poll for them.
    wait_moved_every_missed_key(&nodes, before, Duration::from_secs(10)).await;
    let other_repairs = counters_sum(&nodes, &["hints_delivered", "read_repairs"]).await;
    assert_eq!(
        other_repairs, 0,
        "no hint delivery or read repair may have taken part"
    );
}
