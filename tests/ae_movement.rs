//! Data movement when the member set changes (N=3, 128 vnodes):
//! - a 4th node joins a 3-node cluster: it pulls the keys of the ranges it will own before it
//!   turns normal (and ready), the old owners move and drop what they no longer own,
//!   and every key (including those written during the join) ends up on exactly its 3
//!   preference-list nodes;
//! - then a node leaves (`POST /admin/leave`) while writes go on: it moves everything out,
//!   exits 0, and the remaining 3 hold every key;
//! - a dead node removed by an operator (`POST /admin/remove/{id}`): the survivors
//!   re-replicate its ranges.
//!
//! The expected placement comes from the crate's own ring (`ringkv::cluster::ring`), built
//! from the member ids, and is cross-checked with the servers' ring hash and
//! `/debug/preflist`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::TestNode;
use reqwest::StatusCode;
use ringkv::cluster::ring::{moved_fraction, Ring};
use ringkv::cluster::NodeId;

const N: usize = 3;
const MOVED: [&str; 2] = ["ae_keys_pulled", "ae_keys_pushed"];
const VNODES: u16 = 128;
const FLAGS: [&str; 4] = [
    "--gossip-interval",
    "100ms",
    "--anti-entropy-interval",
    "2s",
];
/// How long data may take to settle after a membership change.
const SETTLE: Duration = Duration::from_secs(30);
/// How long a joining node may take to pull its ranges and turn ready.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a freshly started cluster may take to place the first writes exactly (catch-ups
/// from its formation may still be running and copy keys to non-owners for a while).
const SETUP_SETTLE: Duration = Duration::from_secs(60);

fn ring_of<'a>(ids: impl IntoIterator<Item = &'a String>) -> Ring {
    Ring::new(
        ids.into_iter()
            .map(|s| s.parse::<NodeId>().expect("node id is 16 hex digits")),
        VNODES,
    )
}

/// The preference list of `key` in `ring`, as the id strings the servers show.
fn expected_preflist(ring: &Ring, key: &str) -> BTreeSet<String> {
    ring.preference_list(key.as_bytes(), N)
        .iter()
        .map(|id| id.to_string())
        .collect()
}

fn ids(nodes: &[&TestNode]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.node_id.clone()).collect()
}

/// Writes every key (value = `value_of(key)`) through the nodes in turn.
async fn write_all(nodes: &[&TestNode], keys: &[String]) {
    let errors = for_each_bounded(keys.iter().enumerate(), 16, |(i, k)| async move {
        let node = nodes[i % nodes.len()];
        try_put(node, k, value_of(k).as_bytes(), None, &[])
            .await
            .map(|_| ())
    })
    .await;
    assert_no_errors(&errors, "initial writes");
}

fn value_of(key: &str) -> String {
    format!("value-of-{key}")
}

/// Runs `fut` while writing fresh keys (`{prefix}/{i}`) through `writers` in turn, one at a
/// time, until `fut` is done (at most `MAX_DURING` keys). Returns `fut`'s output and the
/// keys written; every write must succeed (all nodes are up, data merely moves).
async fn writing_during<F: std::future::Future>(
    writers: &[&TestNode],
    prefix: &str,
    fut: F,
) -> (F::Output, Vec<String>) {
    const MAX_DURING: usize = 400;
    let done = std::sync::atomic::AtomicBool::new(false);
    let work = async {
        let out = fut.await;
        done.store(true, std::sync::atomic::Ordering::Release);
        out
    };
    let writes = async {
        let mut written = Vec::new();
        for i in 0..MAX_DURING {
            if done.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            let k = format!("{prefix}/{i:03}");
            let node = writers[i % writers.len()];
            if let Err(e) = try_put(node, &k, value_of(&k).as_bytes(), None, &[]).await {
                panic!("a write while data moves failed: {e}");
            }
            written.push(k);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        written
    };
    futures::join!(work, writes)
}

/// Checks `/debug/preflist` on `via` agrees with the library's ring for every key.
async fn check_preflists(via: &TestNode, ring: &Ring, keys: &[String]) {
    let errors = for_each_bounded(keys.iter(), 16, |k| async move {
        let got: BTreeSet<String> = preflist(via, k).await.into_iter().collect();
        let want = expected_preflist(ring, k);
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "{k:?}: /debug/preflist {got:?}, ring says {want:?}"
            ))
        }
    })
    .await;
    assert_no_errors(&errors, "/debug/preflist vs the library ring");
}

/// One pass: keys whose holder set among `nodes` is not exactly their preference list in
/// `ring`, described.
async fn misplaced(nodes: &[&TestNode], ring: &Ring, keys: &[String]) -> Vec<String> {
    for_each_bounded(keys.iter(), 16, |k| async move {
        let held = holders(nodes, k).await?;
        let want = expected_preflist(ring, k);
        if held == want {
            Ok(())
        } else {
            Err(format!("{k:?} held by {held:?}, preference list {want:?}"))
        }
    })
    .await
}

/// Waits until every key sits on exactly its preference-list nodes in `ring`.
async fn wait_placed(
    nodes: &[&TestNode],
    ring: &Ring,
    keys: &[String],
    limit: Duration,
    what: &str,
) {
    let started = Instant::now();
    wait_until(limit, what, || async move {
        let bad = misplaced(nodes, ring, keys).await;
        match bad.first() {
            None => Ok(()),
            Some(e) => Err(format!("{} key(s) misplaced; e.g. {e}", bad.len())),
        }
    })
    .await;
    eprintln!("{what}: settled in {:?}", started.elapsed());
}

/// Every key reads back its value, through the nodes in turn.
async fn check_readable(nodes: &[&TestNode], keys: &[String], what: &str) {
    let errors = for_each_bounded(keys.iter().enumerate(), 16, |(i, k)| async move {
        let node = nodes[i % nodes.len()];
        let got = try_get_value(node, k, &[]).await?;
        if got == value_of(k).as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "{k:?} via {}: got {:?}",
                node.addr,
                String::from_utf8_lossy(&got)
            ))
        }
    })
    .await;
    assert_no_errors(&errors, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_moves_its_share_and_a_leave_hands_everything_off() {
    const KEYS: usize = 600;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("ae/move/{i:04}")).collect();
    let mut cluster = Cluster::start(3, &FLAGS).await;
    {
        let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
        write_all(&nodes, &keys).await;
        let ring3 = ring_of(&ids(&nodes));
        let hash = wait_settled_members(
            &[
                (0, &cluster.nodes[0]),
                (1, &cluster.nodes[1]),
                (2, &cluster.nodes[2]),
            ],
            &ids(&nodes),
            SETTLE,
        )
        .await;
        assert_eq!(
            hash,
            ring3.hash_hex(),
            "the servers' ring hash differs from the library's ring of the 3 member ids"
        );
        wait_placed(
            &nodes,
            &ring3,
            &keys,
            SETUP_SETTLE,
            "600 keys on all 3 nodes",
        )
        .await;
    }

    // ---- Join: 3 -> 4. ----
    let join_started = Instant::now();
    let (node4, during_join) = {
        let writers: Vec<&TestNode> = cluster.nodes.iter().collect();
        writing_during(
            &writers,
            "ae/move/during-join",
            start_joiner(&cluster.nodes[0], &FLAGS, JOIN_TIMEOUT),
        )
        .await
    };
    // The harness returns once node 4's /ready is 200, which a joiner answers only after
    // it pulled its ranges.
    eprintln!(
        "node 4 ({}) ready {:?} after its start; {} keys written meanwhile",
        node4.node_id,
        join_started.elapsed(),
        during_join.len()
    );
    let mut all_keys = keys.clone();
    all_keys.extend(during_join);
    cluster.nodes.push(node4);
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    let all_ids = ids(&nodes);
    let old_ids = ids(&nodes[..3]);
    let (ring3, ring4) = (ring_of(&old_ids), ring_of(&all_ids));
    let id4: NodeId = nodes[3].node_id.parse().expect("node 4 id");

    // What the ring says must move: the keys whose replica set changes are exactly those
    // node 4 now replicates (3 -> 4 nodes at N=3), about its replica share of all keys.
    let moved = moved_fraction(&ring3, &ring4, N);
    let share4 = ring4.replica_share(N)[&id4];
    let expected_est = share4 * KEYS as f64;
    let expected_keys: BTreeSet<&String> = keys
        .iter()
        .filter(|k| ring4.preference_list(k.as_bytes(), N).contains(&id4))
        .collect();
    eprintln!(
        "ring: moved fraction 3->4 = {moved:.4}, node 4 replica share = {share4:.4}; \
         expect ~{expected_est:.0} of {KEYS} keys on node 4 (exactly {} by key hash)",
        expected_keys.len()
    );
    assert!(
        (moved - share4).abs() < 1e-9,
        "3->4 at N=3: the moved fraction ({moved}) should equal the new node's replica share ({share4})"
    );

    let hash = wait_settled_members(
        &nodes.iter().copied().enumerate().collect::<Vec<_>>(),
        &all_ids,
        SETTLE,
    )
    .await;
    assert_eq!(hash, ring4.hash_hex(), "4-member ring hash");
    eprintln!(
        "4 members normal {:?} after node 4's start",
        join_started.elapsed()
    );

    // Node 4 turned normal only after pulling: it holds its keys now, without waiting.
    let node4 = nodes[3];
    let mut held_by_4 = BTreeSet::new();
    for k in &keys {
        if local(node4, k).await.is_some() {
            held_by_4.insert(k);
        }
    }
    let pulled_by_4 = counter(&replication_json(node4).await, "ae_keys_pulled");
    eprintln!(
        "node 4 holds {} keys, ae_keys_pulled = {pulled_by_4}",
        held_by_4.len()
    );
    let tolerance = expected_est * 0.35 + 10.0;
    for (what, got) in [
        ("keys held by node 4", held_by_4.len() as f64),
        ("ae_keys_pulled on node 4", pulled_by_4 as f64),
    ] {
        assert!(
            (got - expected_est).abs() <= tolerance,
            "{what}: {got}, expected {expected_est:.0} ± {tolerance:.0} (replica share {share4:.4})"
        );
    }
    let missing: Vec<&&String> = expected_keys.difference(&held_by_4).collect();
    assert!(
        missing.is_empty(),
        "node 4 turned normal without {} of the keys it replicates, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );

    check_preflists(nodes[0], &ring4, &all_keys).await;
    wait_placed(
        &nodes,
        &ring4,
        &all_keys,
        SETTLE,
        "after the join, every key on exactly its 3 preference-list nodes",
    )
    .await;
    // `keys_handed_off` is the JSON name of the count of keys moved to their new owners.
    let moved = counters_sum(&nodes[..3], &["keys_handed_off"]).await;
    eprintln!("keys_handed_off on nodes 1-3: {moved}");
    assert!(
        moved >= expected_keys.len() as u64,
        "old owners dropped {} keys node 4 took over, but keys_handed_off sums to {moved}",
        expected_keys.len()
    );
    check_readable(&nodes, &all_keys, "reads after the join").await;

    // ---- Leave: 4 -> 3 (node 2 leaves). ----
    let leaver = 1;
    let (status, body) = post_empty(&cluster.nodes[leaver], "/admin/leave").await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST /admin/leave: {body}");
    let leave_started = Instant::now();
    let (exit, during_leave) = {
        let (first, rest) = cluster.nodes.split_at_mut(1);
        let (leaving, others) = rest.split_first_mut().expect("4 nodes");
        let writers = [&first[0], &others[0], &others[1]];
        writing_during(
            &writers,
            "ae/move/during-leave",
            leaving.wait_exited(Duration::from_secs(30)),
        )
        .await
    };
    let Some(exit) = exit else {
        panic!(
            "node 2 did not exit within 30 s of POST /admin/leave\n--- log ---\n{}",
            cluster.nodes[leaver].log_tail(60)
        );
    };
    assert!(
        exit.success(),
        "node 2 exited with {exit} after leaving\n--- log ---\n{}",
        cluster.nodes[leaver].log_tail(60)
    );
    eprintln!(
        "node 2 left and exited 0 in {:?}; {} keys written meanwhile",
        leave_started.elapsed(),
        during_leave.len()
    );

    let rest: Vec<&TestNode> = [0, 2, 3].iter().map(|&i| &cluster.nodes[i]).collect();
    let rest_ids = ids(&rest);
    let ring_rest = ring_of(&rest_ids);
    // It moved everything out before it left: the remaining 3 hold every key it had.
    let bad = misplaced(&rest, &ring_rest, &all_keys).await;
    assert!(
        bad.is_empty(),
        "node 2 exited after leaving, but {} key(s) are not on all 3 remaining nodes; e.g. {:?}",
        bad.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
    let hash = wait_settled_members(
        &[0, 2, 3]
            .iter()
            .map(|&i| (i, &cluster.nodes[i]))
            .collect::<Vec<_>>(),
        &rest_ids,
        SETTLE,
    )
    .await;
    assert_eq!(hash, ring_rest.hash_hex(), "ring hash after the leave");
    all_keys.extend(during_leave);
    check_preflists(rest[0], &ring_rest, &all_keys).await;
    wait_placed(
        &rest,
        &ring_rest,
        &all_keys,
        SETTLE,
        "after the leave, every key on all 3 remaining nodes",
    )
    .await;
    check_readable(&rest, &all_keys, "reads after the leave").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_dead_node_re_replicates_its_ranges() {
    const KEYS: usize = 300;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("ae/remove/{i:03}")).collect();
    let mut cluster = Cluster::start(4, &FLAGS).await;
    {
        let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
        write_all(&nodes, &keys).await;
        let ring4 = ring_of(&ids(&nodes));
        check_preflists(nodes[0], &ring4, &keys).await;
        wait_placed(
            &nodes,
            &ring4,
            &keys,
            SETUP_SETTLE,
            "before the failure, every key on its 3 preference-list nodes",
        )
        .await;
    }

    let dead = 2;
    let dead_id = cluster.nodes[dead].node_id.clone();
    let lost_replica = {
        let ring4 = ring_of(&ids(&cluster.nodes.iter().collect::<Vec<_>>()));
        keys.iter()
            .filter(|k| expected_preflist(&ring4, k).contains(&dead_id))
            .count()
    };
    let moved_before = {
        let rest: Vec<&TestNode> = [0, 1, 3].iter().map(|&i| &cluster.nodes[i]).collect();
        counters_sum(&rest, &MOVED).await
    };
    cluster.nodes[dead].sigkill().await;
    eprintln!("node 3 ({dead_id}) killed");

    // Bad requests first: not a member, and a node removing itself.
    let (status, body) = post_empty(&cluster.nodes[0], "/admin/remove/00000000000000ab").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "removing a non-member: {body}"
    );
    let own = format!("/admin/remove/{}", cluster.nodes[0].node_id);
    let (status, body) = post_empty(&cluster.nodes[0], &own).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a node removing itself: {body}"
    );

    // `remove` refuses a member the failure detector still holds live (409 member_live).
    cluster.wait_health(&[0, 1, 3], CONVERGE_TIMEOUT).await;
    let (status, body) = post_empty(&cluster.nodes[0], &format!("/admin/remove/{dead_id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST /admin/remove: {body}");
    let removed_at = Instant::now();

    let survivors = [0, 1, 3];
    let rest: Vec<&TestNode> = survivors.iter().map(|&i| &cluster.nodes[i]).collect();
    let rest_ids = ids(&rest);
    let ring_rest = ring_of(&rest_ids);
    let hash = wait_settled_members(
        &survivors
            .iter()
            .map(|&i| (i, &cluster.nodes[i]))
            .collect::<Vec<_>>(),
        &rest_ids,
        SETTLE,
    )
    .await;
    assert_eq!(hash, ring_rest.hash_hex(), "ring hash after the removal");
    eprintln!(
        "3 members agree {:?} after the removal",
        removed_at.elapsed()
    );
    check_preflists(rest[0], &ring_rest, &keys).await;
    wait_placed(
        &rest,
        &ring_rest,
        &keys,
        SETTLE,
        "after the removal, every key on its 3 preference-list nodes among the survivors",
    )
    .await;
    check_readable(&rest, &keys, "reads after the removal").await;

    // The survivors' catch-up filled the dead node's ranges (placement was checked before
    // any read, so read repair had no part in it).
    let moved_after = counters_sum(&rest, &MOVED).await;
    eprintln!(
        "keys pulled+pushed by the survivors: {moved_before} before the kill, {moved_after} after; \
         {lost_replica} keys had a replica on the dead node"
    );
    assert!(
        moved_after - moved_before >= lost_replica as u64,
        "{lost_replica} keys lost a replica, but the survivors' anti-entropy moved only {}",
        moved_after - moved_before
    );
}
