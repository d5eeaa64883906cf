//! A full disk is a clear, recoverable state.
//!
//! Node 3 of a three-node cluster keeps its data dir on a small tmpfs, filled up with a
//! ballast file. Writes through it answer 507 `insufficient_storage` or succeed through the
//! other replicas; it announces in gossip that it takes no writes, and coordinators hint
//! around it. Once the ballast is removed it takes writes again, and every acknowledged
//! write reads back at r=all. Needs root for `mount -t tmpfs`; skipped, saying so, when
//! mounting is not permitted.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use reqwest::StatusCode;

const TMPFS_SIZE: &str = "size=24m";
const VALUE_BYTES: usize = 2048;
/// Bounds of the phase that fills the disk.
const MAX_FILL_WRITES: usize = 6000;
const FILL_DEADLINE: Duration = Duration::from_secs(120);

/// A tmpfs mounted over a directory, unmounted (lazily, so a leftover process cannot keep
/// it busy) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

enum Mounted {
    Yes(Tmpfs),
    NotPermitted(String),
}

impl Tmpfs {
    fn mount(dir: &Path) -> Mounted {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Mounted::Yes(Tmpfs {
                dir: dir.to_owned(),
            });
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let lower = stderr.to_lowercase();
        if lower.contains("permission denied")
            || lower.contains("not permitted")
            || lower.contains("must be superuser")
        {
            return Mounted::NotPermitted(stderr);
        }
        panic!("mount -t tmpfs failed: {stderr}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the filesystem of `dir` with a ballast file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create ballast");
    let chunk = vec![0x42u8; 64 * 1024];
    // The tmpfs is a few MiB: this ends on ENOSPC long before the bound.
    for _ in 0..100_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..64 {
        if f.write_all(&[0x42u8; 512]).is_err() {
            break;
        }
    }
    let _ = f.flush();
    path
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("disk-full value {i}:").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

async fn ready_json(node: &TestNode) -> serde_json::Value {
    let resp = node
        .client
        .get(node.url("/ready"))
        .send()
        .await
        .expect("GET /ready");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "/ready of a node out of space stays 200"
    );
    resp.json().await.expect("/ready JSON")
}

/// Whether `observer`'s `/cluster` shows the member `id` as writable.
async fn seen_writable(observer: &TestNode, id: &str) -> Result<bool, String> {
    let c = try_json(observer, "/cluster").await?;
    c["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == id)
        .and_then(|m| m["writable"].as_bool())
        .ok_or_else(|| format!("no writable flag for {id} in {c}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_clearly_and_recovers() {
    let extra = ["--gossip-interval", "100ms", "--handoff-interval", "500ms"];
    let mut c = Cluster::start(3, &extra).await;
    let full = 2;

    // Move node 3's data dir onto a small tmpfs.
    let status = c.nodes[full].sigterm_and_wait().await;
    assert!(status.success(), "{status:?}");
    let dir = c.nodes[full].data_dir().to_owned();
    let Some(_tmpfs) = onto_tmpfs(&dir) else {
        return;
    };
    c.nodes[full].restart_same_addrs().await;
    c.wait_health(&c.all(), CONVERGE_TIMEOUT).await;
    let ballast = fill(&dir);

    // Fill: write through every node until node 3 has said it is out of space and a
    // good number of writes went on after that, all bounded.
    let full_id = c.nodes[full].node_id.clone();
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut refused = 0usize;
    let mut after_flag = 0usize;
    let started = Instant::now();
    for i in 0..MAX_FILL_WRITES {
        if started.elapsed() > FILL_DEADLINE || after_flag >= 60 {
            break;
        }
        let key = format!("full/{i:05}");
        let via = &c.nodes[i % 3];
        let resp = put_q(via, &key, &value(i), None, &[]).await.unwrap();
        match resp.status() {
            StatusCode::NO_CONTENT => acked.push((key, value(i))),
            StatusCode::INSUFFICIENT_STORAGE => {
                let body: serde_json::Value = resp.json().await.expect("JSON error");
                assert_eq!(body["error"], "insufficient_storage", "{body}");
                assert!(body["message"].is_string(), "{body}");
                refused += 1;
            }
            other => panic!(
                "PUT {key} via node {}: {other}: {}",
                i % 3 + 1,
                resp.text().await.unwrap_or_default()
            ),
        }
        if after_flag > 0 || ready_json(&c.nodes[full]).await["writable"] == false {
            after_flag += 1;
        }
    }
    eprintln!(
        "fill: {} acknowledged, {refused} refused with 507, {after_flag} after the flag, in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(after_flag > 0, "node 3 never ran out of space");

    let ready = ready_json(&c.nodes[full]).await;
    assert_eq!(ready["writable"], false, "{ready}");
    assert_eq!(ready["write_state"], "no_space", "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("full"),
        "{ready}"
    );
    let (n1, id) = (&c.nodes[0], full_id.as_str());
    wait_until(
        Duration::from_secs(10),
        "node 1 to learn from gossip that node 3 takes no writes",
        || async move {
            match seen_writable(n1, id).await? {
                false => Ok(()),
                true => Err("still writable".into()),
            }
        },
    )
    .await;
    let status = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["status", "--node", &c.nodes[0].base_url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("warning: {full_id} takes no writes")),
        "`ringkv status` does not warn:\n{text}"
    );

    // Writes through the full node, and through the others, now succeed around it, with
    // hints held for it.
    let hints_before = counters_sum(&[&c.nodes[0], &c.nodes[1]], &["hints_stored"]).await;
    for i in 0..30 {
        let key = format!("around/{i:03}");
        let via = &c.nodes[if i % 2 == 0 { full } else { 0 }];
        try_put(via, &key, &value(i), None, &[])
            .await
            .unwrap_or_else(|e| panic!("a write around the full node failed: {e}"));
        acked.push((key, value(i)));
    }
    // A hint may be stored just after the write was answered (W was met without it).
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    wait_until(
        Duration::from_secs(10),
        "a hint for the full node for each of the 30 writes",
        || async move {
            let after = counters_sum(&[n1, n2], &["hints_stored"]).await;
            if after >= hints_before + 30 {
                Ok(())
            } else {
                Err(format!("{} hints", after - hints_before))
            }
        },
    )
    .await;

    // Space returns: the node takes writes again by itself.
    std::fs::remove_file(&ballast).unwrap();
    let node3 = &c.nodes[full];
    wait_until(
        Duration::from_secs(30),
        "node 3 to take writes again",
        || async move {
            let r = try_json(node3, "/ready").await?;
            // `writable` appears only while the node takes no writes.
            if r["status"] == "ready" && r.get("writable").is_none() {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    )
    .await;
    assert!(
        c.nodes[full].log_text().contains("space is back"),
        "the log says the node takes writes again"
    );
    for i in 0..10 {
        let key = format!("after/{i:03}");
        try_put(&c.nodes[full], &key, &value(i), None, &[("w", "all")])
            .await
            .unwrap_or_else(|e| panic!("a write after space returned failed: {e}"));
        acked.push((key, value(i)));
    }

    // Nothing acknowledged is lost: once the hints are home, every write reads back at
    // r=all through the node that was full.
    c.wait_hints_drained(&[0, 1], Duration::from_secs(60)).await;
    for (key, want) in &acked {
        let got = try_get_value(&c.nodes[full], key, &[("r", "all")])
            .await
            .unwrap_or_else(|e| panic!("acknowledged write lost: {e}"));
        assert_eq!(&got, want, "{key}");
    }
}

/// Moves a stopped node's data dir onto a fresh tmpfs; `None` when mounting is not
/// permitted (the caller skips, saying why).
fn onto_tmpfs(dir: &Path) -> Option<Tmpfs> {
    let saved = dir.with_extension("saved");
    std::fs::rename(dir, &saved).unwrap();
    std::fs::create_dir(dir).unwrap();
    let tmpfs = match Tmpfs::mount(dir) {
        Mounted::Yes(t) => t,
        Mounted::NotPermitted(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); the test needs root");
            return None;
        }
    };
    for entry in std::fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    Some(tmpfs)
}

/// Alone, a node out of space has nowhere to route writes: they answer 507 with the JSON
/// shape, reads go on, and writes resume once space returns.
#[tokio::test]
async fn a_single_full_node_answers_507_and_recovers() {
    let mut node = TestNode::start().await;
    let status = node.sigterm_and_wait().await;
    assert!(status.success(), "{status:?}");
    let dir = node.data_dir().to_owned();
    let Some(_tmpfs) = onto_tmpfs(&dir) else {
        return;
    };
    node.restart().await;
    try_put(
        &node,
        "alone/before",
        b"written before the disk filled",
        None,
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let ballast = fill(&dir);

    let mut acked: Vec<(String, Vec<u8>)> = vec![(
        "alone/before".into(),
        b"written before the disk filled".to_vec(),
    )];
    let mut refused = 0;
    for i in 0..MAX_FILL_WRITES {
        if refused >= 20 {
            break;
        }
        let key = format!("alone/{i:05}");
        let resp = put_q(&node, &key, &value(i), None, &[]).await.unwrap();
        match resp.status() {
            StatusCode::NO_CONTENT => {
                assert_eq!(
                    refused, 0,
                    "a write succeeded after one was refused, disk still full"
                );
                acked.push((key, value(i)));
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                let body: serde_json::Value = resp.json().await.expect("JSON error");
                assert_eq!(body["error"], "insufficient_storage", "{body}");
                refused += 1;
            }
            other => panic!(
                "PUT {key}: {other}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
    assert_eq!(refused, 20, "the node never ran out of space");
    let ready = ready_json(&node).await;
    assert_eq!(ready["write_state"], "no_space", "{ready}");
    eprintln!(
        "alone: {} acknowledged before the disk filled, then {refused} refused",
        acked.len()
    );
    // Reads go on while the disk is full.
    for (key, want) in &acked {
        let got = try_get_value(&node, key, &[])
            .await
            .unwrap_or_else(|e| panic!("a read while the disk is full failed: {e}"));
        assert_eq!(&got, want, "{key}");
    }

    std::fs::remove_file(&ballast).unwrap();
    let n = &node;
    wait_until(
        Duration::from_secs(30),
        "the node to take writes again",
        || async move {
            let r = try_json(n, "/ready").await?;
            // `writable` appears only while the node takes no writes.
            if r["status"] == "ready" && r.get("writable").is_none() {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    )
    .await;
    try_put(&node, "alone/after", b"space is back", None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    acked.push(("alone/after".into(), b"space is back".to_vec()));
    for (key, want) in &acked {
        let got = try_get_value(&node, key, &[])
            .await
            .unwrap_or_else(|e| panic!("acknowledged write lost: {e}"));
        assert_eq!(&got, want, "{key}");
    }
}
