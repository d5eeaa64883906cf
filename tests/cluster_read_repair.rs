//! Read repair: with hints off (`--max-hint-bytes 0`), a node that was down while keys
//! were written stays without them after it returns, until a read at R=3 finds it stale
//! and the coordinator repairs it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;

const KEYS: usize = 20;
/// How long node 2 must stay stale without reads (no hints, no anti-entropy).
const STALE_FOR: Duration = Duration::from_secs(3);

fn key(i: usize) -> String {
    format!("repair/{i:02}")
}

fn value(i: usize) -> String {
    format!("repaired-value-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_r3_repairs_the_replica_that_missed_the_writes() {
    let mut args = FAST_GOSSIP.to_vec();
    // Hints off, and anti-entropy off: only read repair may fix the stale replica.
    args.extend(["--max-hint-bytes", "0", "--anti-entropy-interval", "0"]);
    let mut cluster = Cluster::start(3, &args).await;

    cluster.nodes[1].sigkill().await;
    eprintln!("node 2 killed");
    let refused_before = counter(&replication_json(&cluster.nodes[0]).await, "hints_refused");
    for i in 0..KEYS {
        try_put(
            &cluster.nodes[0],
            &key(i),
            value(i).as_bytes(),
            None,
            &[("w", "1")],
        )
        .await
        .unwrap_or_else(|e| panic!("write at w=1 with node 2 down: {e}"));
    }
    // Node 3 has them (node 1 sent them along); no hint is kept anywhere.
    {
        let nodes = &cluster.nodes;
        wait_until(
            Duration::from_secs(10),
            "every key on nodes 1 and 3",
            || async move {
                for i in 0..KEYS {
                    for j in [0, 2] {
                        local_has_exactly(&nodes[j], &key(i), &[value(i).as_bytes()]).await?;
                    }
                }
                Ok(())
            },
        )
        .await;
    }
    for j in [0, 2] {
        let r = replication_json(&cluster.nodes[j]).await;
        assert_eq!(
            counter(&r, "hints_pending_total"),
            0,
            "node {}: hints are off, yet some are pending: {r}",
            j + 1
        );
    }
    // Each of those writes tried to leave a hint for node 2 on node 1 (the only stand-in),
    // which refused it: counted, in the background.
    {
        let node1 = &cluster.nodes[0];
        wait_until(
            Duration::from_secs(10),
            "node 1 to count a refused hint per write",
            || async move {
                let r = try_json(node1, "/debug/replication").await?;
                if counter(&r, "hints_refused") >= refused_before + KEYS as u64 {
                    Ok(())
                } else {
                    Err(format!("{KEYS} writes missed node 2 with hints off (refused before: {refused_before}): {r}"))
                }
            },
        )
        .await;
    }

    cluster.nodes[1].restart_same_addrs().await;
    eprintln!("node 2 restarted");
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;

    // Node 2 is stale, and stays so: nothing but a read will repair it.
    let node2 = &cluster.nodes[1];
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < STALE_FOR {
        for i in 0..KEYS {
            if let Some(set) = local(node2, &key(i)).await {
                panic!(
                    "{:?} reached node 2 {:?} after its restart, with hints off and no read: {set}",
                    key(i),
                    started.elapsed()
                );
            }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("node 2 stayed stale for {STALE_FOR:?} ({rounds} checks of {KEYS} keys)");

    let repairs_before: Vec<u64> = {
        let mut v = Vec::new();
        for n in &cluster.nodes {
            v.push(counter(&replication_json(n).await, "read_repairs"));
        }
        v
    };
    // Reads at R=3, alternating coordinators 1 and 3, all answer with the value.
    for i in 0..KEYS {
        let via = if i % 2 == 0 { 0 } else { 2 };
        let got = try_get_value(&cluster.nodes[via], &key(i), &[("r", "3")])
            .await
            .unwrap_or_else(|e| panic!("read at r=3: {e}"));
        assert_eq!(got, value(i).as_bytes(), "GET {:?} r=3", key(i));
    }
    // Node 2's own copies appear, repaired in the background.
    {
        let node2 = &cluster.nodes[1];
        wait_until(
            Duration::from_secs(10),
            "node 2's own copies of every key after reads at r=3",
            || async move {
                for i in 0..KEYS {
                    local_has_exactly(node2, &key(i), &[value(i).as_bytes()]).await?;
                }
                Ok(())
            },
        )
        .await;
    }
    // The coordinator counts a repair once the replica acknowledged it: poll.
    let nodes = &cluster.nodes;
    let before = &repairs_before;
    let repaired = wait_until(
        Duration::from_secs(10),
        "read_repairs to count a repair of node 2 per key on its coordinator",
        || async move {
            let mut repaired = 0;
            for j in [0, 2] {
                let after = counter(&try_json(&nodes[j], "/debug/replication").await?, "read_repairs");
                let coordinated = (0..KEYS).filter(|i| (i % 2 == 0) == (j == 0)).count() as u64;
                if after < before[j] + coordinated {
                    return Err(format!(
                        "node {} coordinated {coordinated} reads that each found node 2 stale, but read_repairs went {} -> {after}",
                        j + 1,
                        before[j]
                    ));
                }
                repaired += after - before[j];
            }
            Ok(repaired)
        },
    )
    .await;
    eprintln!("read repairs by nodes 1 and 3: {repaired}");
}
