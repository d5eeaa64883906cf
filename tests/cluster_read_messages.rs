//! Reads that ask R: on 3 real nodes (N = 3, R = 2) in steady state, internode messages
//! per GET, from `/metrics`, stay ≤ 1.2 with `--read-repair-chance 0` (every coordinator
//! is a replica: its own copy and one peer's) and near 1.1 at the default chance; and a
//! replica that stalls (SIGSTOP) holds no read longer than the speculative-retry delay
//! plus one call, far under the RPC timeout.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::metrics::metric;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const KEYS: usize = 30;
const GETS: usize = 300;

fn key(i: usize) -> String {
    format!("msgs/{i:02}")
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

/// Writes every key and waits until all three nodes hold it: reads then find nothing to
/// repair, and count only what asking costs.
async fn loaded(extra: &[&str]) -> Cluster {
    let mut args = FAST_GOSSIP.to_vec();
    args.extend_from_slice(extra);
    let cluster = Cluster::start(3, &args).await;
    for i in 0..KEYS {
        try_put(
            &cluster.nodes[i % 3],
            &key(i),
            value(i).as_bytes(),
            None,
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let nodes = &cluster.nodes;
    wait_until(
        Duration::from_secs(15),
        "every key on every node",
        || async move {
            for i in 0..KEYS {
                for n in nodes {
                    local_has_exactly(n, &key(i), &[value(i).as_bytes()]).await?;
                }
            }
            Ok(())
        },
    )
    .await;
    cluster
}

/// (read messages sent + read repairs, reads served), summed over the nodes.
async fn read_counts(cluster: &Cluster) -> (u64, u64) {
    let (mut sent, mut served) = (0, 0);
    for n in &cluster.nodes {
        sent += metric(n, "ringkv_read_rpcs_sent_total").await
            + metric(n, "ringkv_read_repairs_total").await;
        served += metric(n, "ringkv_reads_served_total").await;
    }
    (sent, served)
}

/// GETs at R=2, spread over the three coordinators; returns messages per GET.
async fn messages_per_get(cluster: &Cluster) -> f64 {
    // Warm-up: the latency estimates start cold.
    for i in 0..KEYS {
        try_get_value(&cluster.nodes[i % 3], &key(i), &[("r", "2")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (sent0, served0) = read_counts(cluster).await;
    for g in 0..GETS {
        let i = g % KEYS;
        let got = try_get_value(&cluster.nodes[g % 3], &key(i), &[("r", "2")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, value(i).as_bytes(), "GET {:?}", key(i));
    }
    let (sent1, served1) = read_counts(cluster).await;
    let served = served1 - served0;
    assert_eq!(served, GETS as u64, "reads_served counts each GET once");
    (sent1 - sent0) as f64 / served as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_chance_zero_a_get_sends_about_one_message() {
    let cluster = loaded(&["--read-repair-chance", "0"]).await;
    let per_get = messages_per_get(&cluster).await;
    eprintln!("read-repair-chance 0: {per_get:.3} internode messages per GET ({GETS} GETs)");
    // Each coordinator is a replica: its own copy, plus one peer. Fewer than 1 would mean
    // a read skipped its quorum; more than 1.2, that reads ask more than R.
    assert!(
        (1.0..=1.2).contains(&per_get),
        "{per_get:.3} messages per GET at R=2, chance 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_chance_one_read_in_ten_asks_everyone() {
    let cluster = loaded(&[]).await;
    let all_before: u64 = {
        let mut s = 0;
        for n in &cluster.nodes {
            s += metric(n, "ringkv_reads_asking_all_total").await;
        }
        s
    };
    let per_get = messages_per_get(&cluster).await;
    let mut all = 0;
    for n in &cluster.nodes {
        all += metric(n, "ringkv_reads_asking_all_total").await;
    }
    let all = all - all_before;
    eprintln!(
        "read-repair-chance 0.1 (default): {per_get:.3} internode messages per GET, {all} of {} reads asked all",
        GETS + KEYS
    );
    // 0.1 of 330 reads is 33 (σ ≈ 5.4): 10..60 fails only on a broken draw.
    assert!((10..60).contains(&all), "{all} reads asked every replica");
    assert!(
        (1.02..=1.3).contains(&per_get),
        "{per_get:.3} messages per GET at R=2, chance 0.1"
    );
}

fn signal(node: &common::TestNode, sig: Signal) {
    let pid = node.pid().expect("node is running");
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

/// Node 1 coordinates reads while one peer, then the other, is stopped: whichever it
/// prefers, one phase stops that one, and the read must not wait for it past the
/// speculative delay. Without the retry, such a read waits the whole RPC timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_does_not_hold_a_read_past_the_speculative_delay() {
    let cluster = loaded(&["--read-repair-chance", "0", "--rpc-timeout", "5s"]).await;
    let node1 = &cluster.nodes[0];
    for round in 0..3 {
        for i in 0..KEYS {
            try_get_value(node1, &key(i), &[("r", "2")])
                .await
                .unwrap_or_else(|e| panic!("warm-up {round}: {e}"));
        }
    }
    let retries_before = metric(node1, "ringkv_read_speculative_retries_total").await;
    let mut slowest = Duration::ZERO;
    for stopped in [1, 2] {
        signal(&cluster.nodes[stopped], Signal::SIGSTOP);
        // Few enough reads to finish well before the failure detector marks the node
        // down (after which reads skip it and nothing here would be tested).
        for i in 0..10 {
            let started = Instant::now();
            let got = try_get_value(node1, &key(i), &[("r", "2")]).await;
            let took = started.elapsed();
            slowest = slowest.max(took);
            let got = got.unwrap_or_else(|e| panic!("node {} stopped: {e}", stopped + 1));
            assert_eq!(got, value(i).as_bytes());
            assert!(
                took < Duration::from_millis(1500),
                "GET {:?} took {took:?} with node {} stopped",
                key(i),
                stopped + 1
            );
        }
        signal(&cluster.nodes[stopped], Signal::SIGCONT);
        cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    }
    let retries = metric(node1, "ringkv_read_speculative_retries_total").await - retries_before;
    eprintln!("slowest read with a replica stopped: {slowest:?}; speculative retries: {retries}");
    assert!(
        retries >= 1,
        "no read asked a stopped replica, so none was retried: the test proved nothing"
    );
}
