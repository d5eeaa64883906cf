//! A split ring is never silent. Three real nodes agree on their ring: `/cluster` says
//! `ring_agreement: true`, the gauge is 0 and `ringkv health` exits 0. Then a peer joins
//! their gossip that announces a ring of its own (as a node of a release that places
//! vnodes differently would): a chitchat node on loopback, publishing a complete member
//! record and a ring hash that is not theirs. Every real node takes it into its ring, and
//! once the difference has outlasted a few gossip rounds, each shows it in `/cluster`
//! (`ring_agreement: false`, the member named), in `ringkv status` (a warning line), in
//! `ringkv_ring_disagreements` (1), and `ringkv health` exits non-zero with the reason,
//! while `/ready` stays 200. When that peer goes away (dead, so its word no longer
//! counts), agreement comes back.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};
use common::cluster::*;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const FAKE_ID: &str = "00000000000fa4e1";
const FAKE_RING: &str = "0123456789abcdef/0123456789abcdef";

async fn ringkv(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env_remove("RINGKV_NODE")
        .output()
        .await
        .expect("run ringkv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn gauge(node: &TestNode, name: &str) -> Result<i64, String> {
    let resp = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let text = resp.text().await.map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

async fn ready_status(node: &TestNode) -> StatusCode {
    node.client
        .get(node.url("/ready"))
        .send()
        .await
        .expect("GET /ready")
        .status()
}

/// A free UDP port on loopback (bound and released: the fake binds it right after).
fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("local addr")
}

#[tokio::test]
async fn a_member_gossiping_another_ring_is_reported_everywhere() {
    let cluster = Cluster::start(3, &FAST_GOSSIP).await;

    // Healthy: agreement, gauge 0, health exits 0.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let c = cluster_json(node).await;
        assert_eq!(
            c["ring_agreement"],
            Value::Bool(true),
            "node {}: {c}",
            i + 1
        );
        assert_eq!(c["ring_disagreements"], serde_json::json!([]));
        assert_eq!(c["rejoining"], Value::Bool(false));
        assert_eq!(gauge(node, "ringkv_ring_disagreements").await, Ok(0));
        let (ok, text) = ringkv(&["health", "--node", &node.base_url()]).await;
        assert!(
            ok,
            "node {}: health failed on a healthy cluster: {text}",
            i + 1
        );
        let (ok, text) = ringkv(&["status", "--node", &node.base_url()]).await;
        assert!(ok && !text.contains("WARNING"), "status: {text}");
    }

    // The peer with its own ring.
    let gossip = free_udp();
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let fake = spawn_chitchat(
        ChitchatConfig {
            chitchat_id: ChitchatId::new(FAKE_ID.to_owned(), 1, gossip),
            cluster_id: "ringkv".to_owned(),
            gossip_interval: Duration::from_millis(100),
            listen_addr: gossip,
            seed_nodes: vec![cluster.nodes[0].gossip_addr.to_string()],
            failure_detector_config: FailureDetectorConfig {
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V1,
        },
        vec![
            ("http_addr".to_owned(), nowhere.to_string()),
            ("rpc_addr".to_owned(), nowhere.to_string()),
            ("state".to_owned(), "normal".to_owned()),
            ("vnodes".to_owned(), "16".to_owned()),
            ("ring".to_owned(), FAKE_RING.to_owned()),
        ],
        &UdpTransport,
    )
    .await
    .expect("start the fake peer");

    for (i, node) in cluster.nodes.iter().enumerate() {
        let c = wait_until(
            Duration::from_secs(20),
            &format!("node {} reports the split", i + 1),
            || async {
                let c = try_json(node, "/cluster").await?;
                (c["ring_agreement"] == Value::Bool(false))
                    .then_some(c.clone())
                    .ok_or_else(|| c.to_string())
            },
        )
        .await;
        let d = c["ring_disagreements"].as_array().expect("disagreements");
        assert_eq!(d.len(), 1, "only the fake differs: {c}");
        assert_eq!(d[0]["id"], FAKE_ID);
        assert_eq!(d[0]["ring_hash"], "0123456789abcdef");
        assert_eq!(d[0]["write_ring_hash"], "0123456789abcdef");
        assert_ne!(c["ring_hash"], "0123456789abcdef");
        assert_eq!(gauge(node, "ringkv_ring_disagreements").await, Ok(1));
        assert_eq!(
            ready_status(node).await,
            StatusCode::OK,
            "a split node still serves"
        );
        let (ok, text) = ringkv(&["status", "--node", &node.base_url()]).await;
        assert!(ok, "status: {text}");
        assert!(
            text.contains("WARNING: ring disagreement") && text.contains(FAKE_ID),
            "status shows the split: {text}"
        );
        let (ok, text) = ringkv(&["health", "--node", &node.base_url()]).await;
        assert!(!ok, "health passed during a split: {text}");
        assert!(
            text.contains("ring disagrees") && text.contains(FAKE_ID),
            "health names the reason: {text}"
        );
    }

    // The fake goes away: once it is dead its ring no longer counts.
    fake.shutdown().await.expect("stop the fake peer");
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_until(
            Duration::from_secs(30),
            &format!("node {} agrees again", i + 1),
            || async {
                let c = try_json(node, "/cluster").await?;
                (c["ring_agreement"] == Value::Bool(true))
                    .then_some(())
                    .ok_or_else(|| c.to_string())
            },
        )
        .await;
        assert_eq!(gauge(node, "ringkv_ring_disagreements").await, Ok(0));
        let (ok, text) = ringkv(&["health", "--node", &node.base_url()]).await;
        assert!(ok, "node {}: health after the split ended: {text}", i + 1);
    }
}
