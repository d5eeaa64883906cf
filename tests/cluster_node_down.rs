//! A node down in a 3-node cluster (N=3, R=2, W=2): reads and writes through the other two
//! keep succeeding, the writes leave hints for the dead node, and once it is back (same
//! addresses, same data dir) the hints are handed off: it holds every key written while
//! it was down, by its own copies. And hints for a peer removed for good drain too, even
//! when the node holding them is left alone.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;

const KEYS: usize = 200;
/// A request may be slow right after the kill (calls to the dead node fail or time out
/// before the failure detector notices), but must succeed within this.
const TIMEOUT_MS: &str = "10000";

fn key(i: usize) -> String {
    format!("down/{i:03}")
}

fn value(i: usize) -> String {
    format!("written-while-node-2-was-down-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_a_node_is_down_are_handed_off_when_it_returns() {
    let mut cluster = Cluster::start(3, &HINTS_ONLY).await;
    let node2_id = cluster.nodes[1].node_id.clone();

    // Keys written before the failure: one to read while node 2 is down, one to delete.
    for k in ["down/before", "down/doomed"] {
        try_put(&cluster.nodes[0], k, b"before", None, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    {
        let nodes = &cluster.nodes;
        wait_until(
            Duration::from_secs(10),
            "the keys written before the failure on all 3 nodes",
            || async move {
                for n in nodes {
                    for k in ["down/before", "down/doomed"] {
                        local_has_exactly(n, k, &[b"before"]).await?;
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    cluster.nodes[1].sigkill().await;
    let killed_at = Instant::now();
    eprintln!("node 2 ({node2_id}) killed");

    // Writes and reads alternate between nodes 1 and 3, one at a time, from the moment of
    // the kill (before and after the failure detector notices).
    let q = [("timeout_ms", TIMEOUT_MS)];
    let mut slowest = Duration::ZERO;
    for i in 0..KEYS {
        let (writer, reader) = if i % 2 == 0 { (0, 2) } else { (2, 0) };
        let started = Instant::now();
        try_put(
            &cluster.nodes[writer],
            &key(i),
            value(i).as_bytes(),
            None,
            &q,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "write {i} through node {} failed {:?} after the kill: {e}",
                writer + 1,
                killed_at.elapsed()
            )
        });
        let got = try_get_value(&cluster.nodes[reader], &key(i), &q)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "read {i} through node {} failed {:?} after the kill: {e}",
                    reader + 1,
                    killed_at.elapsed()
                )
            });
        assert_eq!(got, value(i).as_bytes(), "read of {:?}", key(i));
        slowest = slowest.max(started.elapsed());
    }
    for j in [0, 2] {
        let got = try_get_value(&cluster.nodes[j], "down/before", &q)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, b"before");
    }
    // A delete (which reads at R first) through node 3 while node 2 is down.
    let resp = cluster.nodes[2]
        .client
        .delete(cluster.nodes[2].kv_url("down/doomed"))
        .query(&q)
        .send()
        .await
        .expect("DELETE");
    common::expect_204_token(resp, "DELETE down/doomed with node 2 down").await;
    let resp = cluster.nodes[0].get("down/doomed").await;
    common::assert_error(
        resp,
        reqwest::StatusCode::NOT_FOUND,
        "not_found",
        "GET of a key deleted while node 2 is down",
    )
    .await;
    eprintln!(
        "{KEYS} writes + reads with node 2 down took {:?} (slowest pair {slowest:?})",
        killed_at.elapsed()
    );

    // The failure detector has called node 2 down by now (or will shortly).
    cluster.wait_health(&[0, 2], CONVERGE_TIMEOUT).await;

    // Quorums that need node 2 cannot be met: a read at r=3 fails fast (the failure
    // detector says node 2 is down), with the 503 error shape.
    let started = Instant::now();
    let resp = cluster.nodes[0]
        .client
        .get(cluster.nodes[0].kv_url("down/before"))
        .query(&[("r", "3"), ("timeout_ms", TIMEOUT_MS)])
        .send()
        .await
        .expect("GET r=3");
    common::assert_error(
        resp,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "GET r=3 with node 2 down",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a read at r=3 with node 2 known down took {:?}; it should fail fast",
        started.elapsed()
    );

    // Every write had node 2 in its preference list (N=3 of 3), so each left a hint, held
    // by nodes 1 and 3 (the only stand-ins there are), for node 2 only (the delete too).
    let mut total = 0;
    for j in [0, 2] {
        let r = replication_json(&cluster.nodes[j]).await;
        let pending = r["hints_pending"]
            .as_object()
            .unwrap_or_else(|| panic!("no hints_pending object: {r}"));
        for target in pending.keys() {
            assert_eq!(
                target,
                &node2_id,
                "node {} holds hints for a node that is up: {r}",
                j + 1
            );
        }
        let c = cluster_json(&cluster.nodes[j]).await;
        assert_eq!(
            c["hints_pending"],
            r["hints_pending"],
            "node {}: /cluster and /debug/replication disagree on hints",
            j + 1
        );
        total += counter(&r, "hints_pending_total");
        eprintln!("node {} replication: {r}", j + 1);
    }
    assert!(
        total > 0,
        "{KEYS} writes missed node 2, but nodes 1 and 3 hold no hints"
    );
    // Hints are per (target, key), and each of the KEYS keys was written once, missing
    // node 2: each must have left one.
    assert!(
        total >= KEYS as u64,
        "{KEYS} writes missed node 2, but only {total} hints are pending for it"
    );
    eprintln!("hints pending for node 2: {total} (for {KEYS} keys)");

    // Node 2 has none of them yet: check its data dir after the restart, below, knowing
    // that it was down for all of those writes.
    cluster.nodes[1].restart_same_addrs().await;
    eprintln!("node 2 restarted after {:?}", killed_at.elapsed());
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    cluster
        .wait_hints_drained(&cluster.all(), Duration::from_secs(30))
        .await;

    // Node 2's own store holds every key written while it was down, with its value (and
    // only that value: nothing else was ever written to those keys).
    let node2 = &cluster.nodes[1];
    let missing = for_each_bounded(0..KEYS, 8, |i| async move {
        local_has_exactly(node2, &key(i), &[value(i).as_bytes()]).await
    })
    .await;
    assert_no_errors(&missing, "node 2's own copies after the handoff");
    local_has_exactly(node2, "down/before", &[b"before"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The delete reached node 2 as a hint too: its own copy is a tombstone, no live value.
    let doomed = local(node2, "down/doomed")
        .await
        .unwrap_or_else(|| panic!("node 2 lost down/doomed entirely (expected a tombstone)"));
    assert!(
        live_values(&doomed).is_empty(),
        "node 2 still holds a live value of a key deleted while it was down: {doomed}"
    );
    let resp = cluster.nodes[1].get("down/doomed").await;
    common::assert_error(
        resp,
        reqwest::StatusCode::NOT_FOUND,
        "not_found",
        "GET via node 2 of a key deleted while it was down",
    )
    .await;

    let delivered: u64 = {
        let mut sum = 0;
        for j in [0, 2] {
            sum += counter(
                &replication_json(&cluster.nodes[j]).await,
                "hints_delivered",
            );
        }
        sum
    };
    assert!(
        delivered >= total,
        "{total} hints were pending, but nodes 1 and 3 delivered {delivered}"
    );
}

/// With 4 nodes (N=3), the hint for a down replica goes to the stand-in: the healthy node
/// outside the key's preference list. It holds the hint, not the data, and hands it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hint_for_a_down_replica_is_held_by_the_node_outside_the_preference_list() {
    const N_KEYS: usize = 80;
    let stand_in_key = |i: usize| format!("stand-in/{i:03}");
    let stand_in_value = |i: usize| format!("held-for-node-4-{i}");

    let mut cluster = Cluster::start(4, &HINTS_ONLY).await;
    let down = 3;
    let down_id = cluster.nodes[down].node_id.clone();
    // Preference lists, from the full ring (a dead member keeps its place in it).
    let mut prefs: Vec<Vec<usize>> = Vec::new();
    for i in 0..N_KEYS {
        let p = preflist(&cluster.nodes[0], &stand_in_key(i)).await;
        prefs.push(p.iter().map(|id| cluster.index_of(id)).collect());
    }
    // Per node, the hints for node 4 it must end up holding: one per key that node 4
    // replicates and it does not.
    let mut want_hints = [0u64; 4];
    for p in &prefs {
        if p.contains(&down) {
            let outsider = (0..4).find(|j| !p.contains(j)).expect("outsider");
            want_hints[outsider] += 1;
        }
    }
    assert_eq!(want_hints[down], 0);
    eprintln!("expected hints for node 4, per node: {want_hints:?}");

    cluster.nodes[down].sigkill().await;
    let q = [("timeout_ms", TIMEOUT_MS)];
    for i in 0..N_KEYS {
        try_put(
            &cluster.nodes[i % 3],
            &stand_in_key(i),
            stand_in_value(i).as_bytes(),
            None,
            &q,
        )
        .await
        .unwrap_or_else(|e| panic!("write with node 4 down: {e}"));
    }
    {
        let nodes = &cluster.nodes;
        let (down_id, want_hints) = (&down_id, &want_hints);
        wait_until(
            Duration::from_secs(10),
            "each stand-in to hold the hints for the keys node 4 replicates and it does not",
            || async move {
                let mut got = [0u64; 4];
                for (j, got_j) in got.iter_mut().enumerate().take(3) {
                    let r = try_json(&nodes[j], "/debug/replication").await?;
                    *got_j = r["hints_pending"][down_id]["count"].as_u64().unwrap_or(0);
                    if counter(&r, "hints_pending_total") != *got_j {
                        return Err(format!("node {} holds hints for another node: {r}", j + 1));
                    }
                }
                if &got == want_hints {
                    Ok(())
                } else {
                    Err(format!(
                        "hints for node 4 per node: {got:?}, want {want_hints:?}"
                    ))
                }
            },
        )
        .await;
    }
    // A stand-in holds the hint, not the data: outsiders still do not store the key.
    for (i, p) in prefs.iter().enumerate() {
        for j in (0..3).filter(|j| !p.contains(j)) {
            if let Some(set) = local(&cluster.nodes[j], &stand_in_key(i)).await {
                panic!(
                    "{:?} is stored on node {}, outside its preference list {p:?}: {set}",
                    stand_in_key(i),
                    j + 1
                );
            }
        }
    }

    cluster.nodes[down].restart_same_addrs().await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    cluster
        .wait_hints_drained(&cluster.all(), Duration::from_secs(30))
        .await;
    let node4 = &cluster.nodes[down];
    for (i, p) in prefs.iter().enumerate() {
        let k = stand_in_key(i);
        if p.contains(&down) {
            local_has_exactly(node4, &k, &[stand_in_value(i).as_bytes()])
                .await
                .unwrap_or_else(|e| panic!("node 4's own copy after the handoff: {e}"));
        } else if let Some(set) = local(node4, &k).await {
            panic!("{k:?} reached node 4, outside its preference list {p:?}: {set}");
        }
    }
}

/// A two-node cluster loses its second node for good: the survivor holds hints for it (it
/// is its own stand-in), the operator removes the dead node, and the survivor, now alone in
/// its view, hands the hints to the keys' owner (itself) at once instead of keeping them
/// until they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_removed_peer_drain_when_the_holder_is_left_alone() {
    const WRITES: usize = 20;
    let mut cluster = Cluster::start(2, &HINTS_ONLY).await;
    let dead_id = cluster.nodes[1].node_id.clone();
    cluster.nodes[1].sigkill().await;
    let q = [("timeout_ms", TIMEOUT_MS), ("w", "1")];
    let pair_key = |i: usize| format!("pair/{i:02}");
    for i in 0..WRITES {
        try_put(&cluster.nodes[0], &pair_key(i), b"alone", None, &q)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let held = cluster.hints_pending_total(&[0]).await;
    assert!(held > 0, "the survivor holds no hints for the dead node");

    // `remove` refuses a member the failure detector still holds live (409 member_live).
    cluster.wait_health(&[0], CONVERGE_TIMEOUT).await;
    let (status, body) = post_empty(&cluster.nodes[0], &format!("/admin/remove/{dead_id}")).await;
    assert_eq!(
        status,
        reqwest::StatusCode::ACCEPTED,
        "POST /admin/remove: {body}"
    );
    // The default hint age is an hour: draining within seconds means they were rerouted.
    cluster
        .wait_hints_drained(&[0], Duration::from_secs(30))
        .await;
    let r1 = [("timeout_ms", TIMEOUT_MS), ("r", "1")];
    for i in 0..WRITES {
        let got = try_get_value(&cluster.nodes[0], &pair_key(i), &r1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, b"alone", "{}", pair_key(i));
    }
}
