//! Cluster formation: `scripts/cluster.sh` brings up 3 nodes that agree on their members
//! and ring, and `ringkv status` shows them; a lone node with the default N=3, R=2, W=2
//! clamps to 1/1/1 and serves reads and writes.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::*;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const NODES: u16 = 3;

/// A cluster run by `scripts/cluster.sh`; stopped (`cluster.sh stop`) on drop.
struct ScriptCluster {
    dir: tempfile::TempDir,
    base: u16,
}

impl ScriptCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
    }

    /// Runs `cluster.sh ARGS` with this cluster's settings (and no other `RINGKV_*`
    /// variable from the environment).
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script())
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RINGKV_BIN", env!("CARGO_BIN_EXE_ringkv"))
            .env("RINGKV_CLUSTER_DIR", self.dir.path())
            .env("RINGKV_BASE_PORT", self.base.to_string())
            .env("RINGKV_WAIT_SECS", "30");
        cmd.output().expect("run scripts/cluster.sh")
    }

    fn url(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.base + 10 * i)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=NODES {
            let path = self.dir.path().join(format!("node{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!(
                "--- {} (last 40 lines) ---\n{tail}\n",
                path.display()
            ));
        }
        out
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let out = self.run(&["stop"]);
        if !out.status.success() {
            eprintln!(
                "cluster.sh stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Whether the TCP ports (HTTP, RPC) and the UDP port (gossip) of nodes 1..=NODES are free.
fn ports_free(base: u16) -> bool {
    (1..=NODES).all(|i| {
        let p = base + 10 * i;
        TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok()
    })
}

/// A base port derived from the pid, in 20000..32000: inside the range the brief allows and
/// below Linux's ephemeral range (32768+), where port-0 binds of other tests land.
fn pick_base_port() -> u16 {
    let pid = std::process::id();
    for attempt in 0..200u32 {
        let slot = (pid.wrapping_add(attempt.wrapping_mul(7919))) % 1190;
        let base = 20_000 + 10 * slot as u16;
        if ports_free(base) {
            return base;
        }
    }
    panic!("no free base port found in 20000..32000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_cluster_sh_agree_on_members_and_ring() {
    let cluster = ScriptCluster {
        dir: tempfile::Builder::new()
            .prefix("ringkv-cluster-sh-")
            .tempdir()
            .expect("tempdir"),
        base: pick_base_port(),
    };
    eprintln!(
        "cluster.sh: base port {}, dir {}",
        cluster.base,
        cluster.dir.path().display()
    );
    let out = tokio::task::block_in_place(|| {
        cluster.run(&["start", "3", "--", "--gossip-interval", "100ms"])
    });
    assert!(
        out.status.success(),
        "cluster.sh start 3 failed ({}):\nstdout: {}\nstderr: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );

    let client = http_client();
    let urls: Vec<String> = (1..=NODES).map(|i| cluster.url(i)).collect();
    let (client_ref, urls_ref) = (&client, &urls);
    let clusters: Vec<Value> = wait_until(
        Duration::from_secs(20),
        "every node to report 3 live members and the same ring hash",
        || async move {
            let mut bodies = Vec::new();
            for url in urls_ref {
                let resp = client_ref
                    .get(format!("{url}/cluster"))
                    .send()
                    .await
                    .map_err(|e| format!("{url}/cluster: {e}"))?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("{url}/cluster: {}", resp.status()));
                }
                let body: Value = resp.json().await.map_err(|e| e.to_string())?;
                let members = body["members"].as_array().cloned().unwrap_or_default();
                let live = members
                    .iter()
                    .filter(|m| m["live"].as_bool() == Some(true))
                    .count();
                if members.len() != 3 || live != 3 {
                    return Err(format!(
                        "{url}: {} members, {live} live: {body}",
                        members.len()
                    ));
                }
                bodies.push(body);
            }
            let hashes: std::collections::BTreeSet<&str> = bodies
                .iter()
                .map(|b| b["ring_hash"].as_str().unwrap_or("?"))
                .collect();
            if hashes.len() != 1 {
                return Err(format!("ring hashes differ: {hashes:?}"));
            }
            Ok(bodies)
        },
    )
    .await;

    // Every node lists the same three members, with the addresses cluster.sh gave them, and
    // sees itself among them.
    let mut ids: Vec<Vec<String>> = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let node = i as u16 + 1;
        let members = c["members"].as_array().expect("members");
        let mut these: Vec<String> = members
            .iter()
            .map(|m| m["id"].as_str().expect("member id").to_owned())
            .collect();
        these.sort();
        assert!(
            these.contains(&c["node_id"].as_str().expect("node_id").to_owned()),
            "node {node} is not among its own members: {c}"
        );
        let me = members
            .iter()
            .find(|m| m["id"] == c["node_id"])
            .expect("self member");
        let p = cluster.base + 10 * node;
        assert_eq!(me["http_addr"], format!("127.0.0.1:{p}"), "{c}");
        assert_eq!(me["rpc_addr"], format!("127.0.0.1:{}", p + 1), "{c}");
        assert_eq!(me["gossip_addr"], format!("127.0.0.1:{}", p + 2), "{c}");
        assert_eq!(c["effective"]["n"], 3, "{c}");
        assert_eq!(c["effective"]["r"], 2, "{c}");
        assert_eq!(c["effective"]["w"], 2, "{c}");
        let replica_shares: f64 = members
            .iter()
            .map(|m| m["replica_share"].as_f64().expect("replica_share"))
            .sum();
        assert!(
            (replica_shares - 3.0).abs() < 1e-6,
            "replica shares must sum to N=3: {c}"
        );
        ids.push(these);
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree on the member ids: {ids:?}"
    );
    let node_ids: Vec<&str> = clusters
        .iter()
        .map(|c| c["node_id"].as_str().expect("node_id"))
        .collect();
    assert_eq!(
        node_ids
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "three distinct node ids: {node_ids:?}"
    );

    // `ringkv status` prints a table with one UP row per member.
    let status = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["status", "--node", &cluster.url(2)])
            .env_remove("RINGKV_NODE")
            .output()
            .expect("run ringkv status")
    });
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "ringkv status failed ({}): {stdout}\n{}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    let up_rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("UP"))
        .collect();
    let down_rows = stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("DOWN"))
        .count();
    assert_eq!(up_rows.len(), 3, "expected 3 UP rows:\n{stdout}");
    assert_eq!(down_rows, 0, "expected no DOWN row:\n{stdout}");
    for id in &node_ids {
        assert!(
            up_rows.iter().any(|row| row.contains(id)),
            "no UP row for node {id}:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn lone_node_with_default_quorums_serves_reads_and_writes() {
    let node = TestNode::start().await;
    let c = cluster_json(&node).await;
    assert_eq!(
        c["members"].as_array().map(Vec::len),
        Some(1),
        "one member: {c}"
    );
    assert_eq!(c["members"][0]["id"].as_str(), Some(node.node_id.as_str()));
    assert_eq!(c["members"][0]["live"], true, "{c}");
    assert_eq!(c["node_id"].as_str(), Some(node.node_id.as_str()));
    assert_eq!(
        (
            &c["replication"]["n"],
            &c["replication"]["r"],
            &c["replication"]["w"]
        ),
        (&Value::from(3), &Value::from(2), &Value::from(2)),
        "configured factors are the defaults: {c}"
    );
    assert_eq!(
        (
            &c["effective"]["n"],
            &c["effective"]["r"],
            &c["effective"]["w"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "effective factors clamp to the one member: {c}"
    );
    assert_eq!(preflist(&node, "k").await, vec![node.node_id.clone()]);

    let t1 = node.put_ok("k", "v1", None).await;
    let (value, _, t2) = node.get_single("k").await;
    assert_eq!(value, b"v1");
    let t3 = node.put_ok("k", "v2", Some(&t2)).await;
    assert_ne!(t1, t3);
    let (value, _, t4) = node.get_single("k").await;
    assert_eq!(
        value, b"v2",
        "a write with the read's token replaces the value"
    );
    let resp = node.delete("k", Some(&t4)).await;
    expect_204_token(resp, "DELETE k").await;
    let resp = node.get("k").await;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET k after DELETE",
    )
    .await;
    let resp = node.delete("k", None).await;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "DELETE of a deleted key",
    )
    .await;

    // Explicit quorums resolve against the effective N: `w=all` is this node alone.
    let resp = node
        .client
        .put(node.url("/kv/q?w=all"))
        .body("x")
        .send()
        .await
        .expect("PUT");
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "PUT ?w=all on a lone node: {}",
        resp.text().await.unwrap_or_default()
    );
    let r = replication_json(&node).await;
    assert_eq!(counter(&r, "hints_pending_total"), 0, "{r}");
    assert_eq!(counter(&r, "forwarded"), 0, "{r}");
}
