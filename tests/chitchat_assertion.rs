//! A chitchat 0.13 bug, and what ringkv does about it.
//!
//! The bug: a delta whose `SetMaxVersion` is below one of its own key versions passes
//! chitchat's checks (`check_delta_status` compares only the declared max version), is
//! applied, raises the node's max version past the declared one, and then trips
//! `assert!(node_delta.max_version >= self.max_version)` (`state.rs:237`), which panics
//! inside chitchat's server task: gossip stops, the process lives on. The first test shows
//! it against the crate alone; the second sends the same two datagrams to a real node
//! and shows gossip started again (`cluster::supervise`), `/ready` 503 meanwhile and 200
//! after, and the node still live to its peer.

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport, UdpSocket};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};
use common::cluster::*;
use common::gossip_wire::{ack_with_low_max_version, fake_id, syn};
use common::TestNode;

const CLUSTER: &str = "assertion-test";

/// Hands chitchat a socket bound beforehand, so the test knows its port.
struct Prebound(Mutex<Option<Box<dyn Socket>>>);

#[async_trait]
impl Transport for Prebound {
    async fn open(&self, _: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.0
            .lock()
            .expect("lock")
            .take()
            .ok_or_else(|| anyhow::anyhow!("opened twice"))
    }
}

async fn loopback_udp() -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback UDP socket")
}

#[tokio::test]
async fn chitchat_panics_on_a_delta_whose_max_version_is_below_its_own_key() {
    let socket = UdpSocket::open("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new("victim", 1, addr),
        cluster_id: CLUSTER.into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: addr,
        seed_nodes: vec![],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let transport = Prebound(Mutex::new(Some(Box::new(socket))));
    let handle = spawn_chitchat(config, vec![], &transport)
        .await
        .expect("spawn chitchat");
    let ended = handle.termination_watcher();
    tokio::pin!(ended);
    let peer = loopback_udp().await;
    let fake = fake_id(1, peer.local_addr().expect("addr"));

    // The Syn makes chitchat track the id; a well-formed delta for it is applied.
    peer.send_to(&syn(CLUSTER, std::slice::from_ref(&fake), 1), addr)
        .await
        .expect("send");
    peer.send_to(&ack_with_low_max_version(&fake, 5, 5), addr)
        .await
        .expect("send");
    let tracked = async {
        loop {
            let known = handle.with_chitchat(|c| c.node_state(&fake).map(|s| s.max_version()));
            if known.await == Some(5) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), tracked)
        .await
        .expect("chitchat applies a well-formed delta within 10 s");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut ended)
            .await
            .is_err(),
        "a well-formed delta does not stop chitchat"
    );

    // The crafted delta: a key at version 10 under a declared max version of 7 (above
    // the 5 chitchat holds, so it is taken as an update).
    peer.send_to(&ack_with_low_max_version(&fake, 10, 7), addr)
        .await
        .expect("send");
    let end = tokio::time::timeout(Duration::from_secs(10), &mut ended)
        .await
        .expect("chitchat's task ends within 10 s of the crafted delta");
    let err = end.expect_err("it ends in error");
    assert!(err.to_string().contains("panicked"), "{err:#}");
}

async fn ready_status(node: &TestNode) -> Option<(u16, String)> {
    let resp = node.client.get(node.url("/ready")).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_its_gossip_again_after_chitchat_panics() {
    let cluster = Cluster::start(2, &FAST_GOSSIP).await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let (victim, peer_node) = (&cluster.nodes[0], &cluster.nodes[1]);
    let before = common::metrics::metric(victim, "ringkv_gossip_restarts_total").await;
    assert_eq!(before, 0);

    let raw = loopback_udp().await;
    let fake = fake_id(7, raw.local_addr().expect("addr"));
    raw.send_to(
        &syn("ringkv", std::slice::from_ref(&fake), 1),
        victim.gossip_addr,
    )
    .await
    .expect("send");
    // Give the Syn a moment to be processed first: the delta applies only to an id
    // chitchat tracks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.send_to(&ack_with_low_max_version(&fake, 10, 7), victim.gossip_addr)
        .await
        .expect("send");

    // Poll /ready closely: the 503 lasts until the new instance has heard of its peer,
    // a few gossip rounds of 100 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_503 = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "gossip was not started again and caught up within 30 s (503 seen: {saw_503:?})\n{}",
            victim.log_tail(30)
        );
        match ready_status(victim).await {
            Some((503, body)) if body.contains("gossip") => saw_503 = Some(body),
            Some((200, _)) if saw_503.is_some() => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = saw_503.unwrap_or_default();
    assert!(body.contains("not_ready"), "{body}");
    let restarts = common::metrics::metric(victim, "ringkv_gossip_restarts_total").await;
    assert_eq!(restarts, 1, "ringkv_gossip_restarts_total");
    let log = victim.log_text();
    assert!(
        log.contains("gossip stopped; starting it again on the same address"),
        "{}",
        victim.log_tail(30)
    );
    let workers = try_json(victim, "/debug/workers")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        workers.to_string().contains("restarted 1 time"),
        "/debug/workers: {workers}"
    );

    // Both nodes see each other live again, and a write through the victim replicates.
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    try_put(victim, "after/panic", b"v", None, &[("w", "all")])
        .await
        .unwrap_or_else(|e| panic!("a write at W=all after the restart: {e}"));
    local_has_exactly(peer_node, "after/panic", &[b"v"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
