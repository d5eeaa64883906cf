//! Replication on a healthy 4-node cluster (N=3): every key lands on exactly the 3 nodes of
//! its preference list and nowhere else, is readable through any node, and a write sent to
//! a node outside the preference list is forwarded to a replica.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::*;

const KEYS: usize = 1_000;
const CONCURRENCY: usize = 16;
const SAMPLE: usize = 60;
/// Bound on the whole write (or read) phase.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

fn key(i: usize) -> String {
    format!("repl/{i:04}")
}

fn value(i: usize) -> String {
    format!("value-{i}-{}", "x".repeat(i % 37))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_on_exactly_their_preference_list_and_writes_forward() {
    let cluster = Cluster::start(4, &FAST_GOSSIP).await;
    let nodes = &cluster.nodes;
    let c = cluster_json(&nodes[0]).await;
    assert_eq!(c["effective"]["n"], 3, "{c}");

    // 1,000 writes through node 1, 16 at a time.
    let start = Instant::now();
    let errors = tokio::time::timeout(
        PHASE_LIMIT,
        for_each_bounded(0..KEYS, CONCURRENCY, |i| async move {
            try_put(&nodes[0], &key(i), value(i).as_bytes(), None, &[]).await?;
            Ok(())
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("writing {KEYS} keys took longer than {PHASE_LIMIT:?}"));
    assert_no_errors(&errors, "writes through node 1");
    eprintln!("wrote {KEYS} keys through node 1 in {:?}", start.elapsed());

    // Every key reads back through node 3 with its exact value.
    let start = Instant::now();
    let errors = tokio::time::timeout(
        PHASE_LIMIT,
        for_each_bounded(0..KEYS, CONCURRENCY, |i| async move {
            let got = try_get_value(&nodes[2], &key(i), &[]).await?;
            if got != value(i).as_bytes() {
                return Err(format!(
                    "GET {:?} via node 3: got {:?}, want {:?}",
                    key(i),
                    String::from_utf8_lossy(&got),
                    value(i)
                ));
            }
            Ok(())
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("reading {KEYS} keys took longer than {PHASE_LIMIT:?}"));
    assert_no_errors(&errors, "reads through node 3");
    eprintln!("read {KEYS} keys through node 3 in {:?}", start.elapsed());

    // A sample: the preference list (the same from every node) holds the value, the 4th
    // node does not hold the key at all. The third replica may still be catching up (W=2).
    let sample: Vec<usize> = (0..KEYS).step_by(KEYS / SAMPLE).collect();
    assert!(sample.len() >= 50);
    let mut excluded_count = [0usize; 4];
    // For the forwarding check: per node, sample keys it does not replicate.
    let mut not_replicated_by: Vec<Vec<usize>> = vec![Vec::new(); 4];
    for &i in &sample {
        let k = key(i);
        let prefs = preflist(&nodes[i % 4], &k).await;
        for (j, node) in nodes.iter().enumerate() {
            let other = preflist(node, &k).await;
            assert_eq!(
                other,
                prefs,
                "node {} and node {} disagree on the preference list of {k:?}",
                i % 4 + 1,
                j + 1
            );
        }
        assert_eq!(prefs.len(), 3, "preference list of {k:?}: {prefs:?}");
        let replicas: BTreeSet<usize> = prefs.iter().map(|id| cluster.index_of(id)).collect();
        assert_eq!(replicas.len(), 3, "{k:?}: duplicate ids in {prefs:?}");
        let outsider = (0..4).find(|j| !replicas.contains(j)).expect("a 4th node");
        excluded_count[outsider] += 1;
        not_replicated_by[outsider].push(i);

        let v = value(i);
        let (nodes_ref, k_ref, v_ref, replicas_ref) = (nodes, &k, v.as_bytes(), &replicas);
        wait_until(
            Duration::from_secs(10),
            &format!("{k:?} on exactly nodes {replicas:?} (0-based)"),
            || async move {
                for (j, node) in nodes_ref.iter().enumerate() {
                    if replicas_ref.contains(&j) {
                        local_has_exactly(node, k_ref, &[v_ref]).await?;
                    } else if let Some(set) = try_local(node, k_ref).await? {
                        return Err(format!(
                            "{k_ref:?} is stored on node {}, outside its preference list: {set}",
                            j + 1
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
    }
    eprintln!(
        "sample of {} keys: times each node was the outsider: {excluded_count:?}",
        sample.len()
    );

    // Writes through a node outside the key's preference list are forwarded to a replica.
    let before: Vec<u64> = futures::future::join_all(
        nodes
            .iter()
            .map(|n| async { counter(&replication_json(n).await, "forwarded") }),
    )
    .await;
    let mut forwarded_by = [0u64; 4];
    let mut checked = Vec::new();
    for (outsider, keys) in not_replicated_by.iter().enumerate() {
        for &i in keys.iter().take(5) {
            let k = key(i);
            let v = format!("forwarded-via-node-{}-{i}", outsider + 1);
            let tok = try_put(&nodes[outsider], &k, v.as_bytes(), None, &[])
                .await
                .unwrap_or_else(|e| panic!("write through a non-replica: {e}"));
            assert!(!tok.is_empty());
            forwarded_by[outsider] += 1;
            checked.push((outsider, i, k, v));
        }
    }
    assert!(
        checked.len() >= 4,
        "expected the sample to give several keys outside some node's preference list"
    );
    for (outsider, i, k, v) in &checked {
        // The new value is read back through the non-replica, and is stored on the replicas
        // (and still not on the outsider). Without a token, the new write supersedes the old
        // value only if the coordinator had seen it: it is a replica, so it had.
        let got = try_get_value(&nodes[*outsider], k, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            *v,
            "GET {k:?} (key {i}) via node {} after a forwarded write",
            outsider + 1
        );
        let (nodes_ref, k_ref, v_ref) = (nodes, k.as_str(), v.as_bytes());
        let outsider = *outsider;
        wait_until(
            Duration::from_secs(10),
            &format!("forwarded write of {k:?} on its 3 replicas only"),
            || async move {
                for (j, node) in nodes_ref.iter().enumerate() {
                    if j == outsider {
                        if let Some(set) = try_local(node, k_ref).await? {
                            return Err(format!(
                                "{k_ref:?} stored on node {} (not a replica): {set}",
                                j + 1
                            ));
                        }
                    } else {
                        local_has_exactly(node, k_ref, &[v_ref]).await?;
                    }
                }
                Ok(())
            },
        )
        .await;
    }
    for (j, node) in nodes.iter().enumerate() {
        let after = counter(&replication_json(node).await, "forwarded");
        assert!(
            after >= before[j] + forwarded_by[j],
            "node {}: `forwarded` went {} -> {after}, but {} writes were sent to it for keys it does not replicate",
            j + 1,
            before[j],
            forwarded_by[j]
        );
    }
    // Node 1 wrote keys it does not replicate too (1/4 of them): those were forwarded.
    assert!(
        before[0] > 0,
        "node 1 coordinated {KEYS} writes, some outside its preference lists, yet forwarded none"
    );
    for (j, node) in nodes.iter().enumerate() {
        let r = replication_json(node).await;
        assert_eq!(
            counter(&r, "hints_pending_total"),
            0,
            "node {}: a healthy cluster leaves no hints: {r}",
            j + 1
        );
    }
}
