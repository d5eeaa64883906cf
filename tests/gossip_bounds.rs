//! The ids gossip tracks stay bounded (`cluster::gossip_guard`): a raw UDP socket sends
//! two real nodes' gossip port datagrams naming thousands of invented node ids; the node's
//! tracked-id count and RSS stay bounded, and the two nodes stay live to each other; then
//! well-formed deltas that grow one invented id's keys past the byte bound, with the same
//! outcome. (No cluster secret is configured: the bounds hold for a peer that is
//! authenticated.)

mod common;

use std::time::{Duration, Instant};

use chitchat::transport::{Socket, UdpSocket};
use common::cluster::*;
use common::gossip_wire::{ack_with_keys, ack_with_low_max_version, fake_id, syn};
use common::TestNode;
use ringkv::cluster::gossip_guard::ids_named;

const MAX_IDS: usize = 64;

async fn loopback_udp() -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback UDP socket")
}

/// The guard counts ids from chitchat's own decoding of a datagram.
#[tokio::test]
async fn the_ids_a_datagram_names_are_counted() {
    let mut socket = UdpSocket::open("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let raw = loopback_udp().await;
    let from = raw.local_addr().expect("addr");
    let ids: Vec<_> = (0..300).map(|n| fake_id(n, from)).collect();
    for (datagram, want) in [
        (syn("c", &ids, 1), 300),
        (syn("c", &ids[..1], 1), 1),
        (syn("c", &[], 1), 0),
        (ack_with_low_max_version(&ids[0], 2, 2), 1),
    ] {
        raw.send_to(&datagram, addr).await.expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), socket.recv())
            .await
            .expect("a datagram within 5 s")
            .expect("it decodes");
        assert_eq!(ids_named(&got.envelope), want);
    }
}

fn rss_kib(node: &TestNode) -> u64 {
    let pid = node.pid().expect("the node runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_ids_stay_bounded_and_the_nodes_stay_live() {
    let max = MAX_IDS.to_string();
    let args = ["--gossip-interval", "100ms", "--max-gossip-members", &max];
    let cluster = Cluster::start(2, &args).await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let victim = &cluster.nodes[0];
    let rss_before = rss_kib(victim);
    let raw = loopback_udp().await;
    let from = raw.local_addr().expect("addr");

    // One datagram naming far more ids than the bound: dropped whole.
    let many: Vec<_> = (0..1000).map(|n| fake_id(n, from)).collect();
    raw.send_to(&syn("ringkv", &many, 1), victim.gossip_addr)
        .await
        .expect("send");
    wait_until(
        Duration::from_secs(10),
        "the oversized datagram to be dropped",
        || async {
            match common::metrics::metric(victim, "ringkv_gossip_dropped_too_many_ids_total").await
            {
                n if n >= 1 => Ok(()),
                n => Err(format!("dropped {n}")),
            }
        },
    )
    .await;

    // Many datagrams of new ids, each within the bound: 4,000 ids in 100 datagrams, 10 ms
    // apart, while the tracked count is sampled. A gossip round (100 ms) can take in
    // about 10 of them before it notices the bound was passed.
    let per_datagram = 40u64;
    let mut tracked_max = 0;
    let started = Instant::now();
    for batch in 0..100u64 {
        let ids: Vec<_> = (0..per_datagram)
            .map(|n| fake_id(10_000 + batch * per_datagram + n, from))
            .collect();
        raw.send_to(&syn("ringkv", &ids, 1), victim.gossip_addr)
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
        if batch % 10 == 0 {
            let t = common::metrics::metric(victim, "ringkv_gossip_tracked_ids").await;
            tracked_max = tracked_max.max(t);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood took over 60 s"
        );
    }
    let slack = 12 * per_datagram as usize;
    assert!(
        tracked_max <= (MAX_IDS + slack) as u64,
        "tracked ids reached {tracked_max}; the bound is {MAX_IDS} plus one round's datagrams"
    );
    let over = common::metrics::metric(victim, "ringkv_gossip_over_id_bound_total").await;
    assert!(
        over >= 1,
        "the bound was never passed: the flood did not reach chitchat"
    );
    let dropped = common::metrics::metric(victim, "ringkv_gossip_dropped_not_member_total").await;
    assert!(dropped >= 1, "no datagram was dropped while restricted");

    // Both nodes see each other live, every node's tracked ids are back within the bound,
    // and the victim's memory did not grow by the flood.
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(30),
            "tracked ids within the bound",
            || async {
                match common::metrics::metric(node, "ringkv_gossip_tracked_ids").await {
                    n if n <= MAX_IDS as u64 => Ok(()),
                    n => Err(format!("{n} tracked")),
                }
            },
        )
        .await;
    }
    let rss_after = rss_kib(victim);
    eprintln!(
        "tracked max {tracked_max} (bound {MAX_IDS}), over the bound {over} time(s), \
         {dropped} datagram(s) dropped while restricted, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        victim
            .log_text()
            .contains("more node ids than --max-gossip-members"),
        "{}",
        victim.log_tail(20)
    );
    try_put(victim, "after/flood", b"v", None, &[("w", "all")])
        .await
        .unwrap_or_else(|e| panic!("a write at W=all after the flood: {e}"));
}

/// One id within the count bound, but with megabytes of keys (chitchat bounds neither a
/// node's keys nor their sizes): past 16 KiB per allowed id the state is shed, the
/// bytes tracked fall back under the bound on every node, and the cluster still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_piled_on_one_id_stay_bounded_in_bytes() {
    let max = MAX_IDS.to_string();
    let args = ["--gossip-interval", "100ms", "--max-gossip-members", &max];
    let cluster = Cluster::start(2, &args).await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let victim = &cluster.nodes[0];
    let bound = (MAX_IDS * ringkv::cluster::gossip_guard::STATE_BYTES_PER_ID) as u64;
    let raw = loopback_udp().await;
    let from = raw.local_addr().expect("addr");
    let id = fake_id(7, from);
    // The digest makes chitchat track the id; the deltas then pile keys on it.
    raw.send_to(
        &syn("ringkv", std::slice::from_ref(&id), 1),
        victim.gossip_addr,
    )
    .await
    .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let value = "x".repeat(1400);
    let per_datagram = 40u64;
    let mut version = 0u64;
    let mut sent_bytes = 0u64;
    let mut peak = 0u64;
    let started = Instant::now();
    // 4 times the bound in all, 20 ms apart.
    while sent_bytes < 4 * bound {
        let keys: Vec<(String, String)> = (0..per_datagram)
            .map(|n| (format!("pile-{}", version + n), value.clone()))
            .collect();
        sent_bytes += keys
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        raw.send_to(&ack_with_keys(&id, version, &keys), victim.gossip_addr)
            .await
            .expect("send");
        version += per_datagram;
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(common::metrics::metric(victim, "ringkv_gossip_tracked_bytes").await);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pile took over 60 s"
        );
    }
    let over = common::metrics::metric(victim, "ringkv_gossip_over_byte_bound_total").await;
    assert!(
        over >= 1,
        "the byte bound was never passed (peak {peak} of {bound}): the deltas did not apply"
    );
    // One round (100 ms) takes in about five datagrams (56 KiB each) past the bound.
    assert!(
        peak <= bound + 8 * per_datagram * 1410,
        "tracked bytes reached {peak}; the bound is {bound}"
    );
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(30),
            "tracked bytes within the bound",
            || async {
                match common::metrics::metric(node, "ringkv_gossip_tracked_bytes").await {
                    n if n <= bound => Ok(()),
                    n => Err(format!("{n} bytes tracked")),
                }
            },
        )
        .await;
    }
    assert!(
        victim.log_text().contains("more key and value bytes"),
        "{}",
        victim.log_tail(20)
    );
    try_put(victim, "after/pile", b"v", None, &[("w", "all")])
        .await
        .unwrap_or_else(|e| panic!("a write at W=all after the pile: {e}"));
    eprintln!(
        "sent {sent_bytes} bytes of keys; peak {peak} tracked of {bound}; shed {over} time(s)"
    );
}
