//! Corrupt data on disk is detected, never served, and repaired from the other replicas.
//!
//! Bytes are flipped inside stored values of a stopped node's redb file (found by searching
//! the file for the known values), then the node restarts on it. Reads through any node
//! answer the right value or an error, never a wrong value; the corruption shows in
//! `/metrics`; anti-entropy restores the damaged copies. A file whose tail is overwritten
//! fails startup with exit code 1 and a message, not a panic.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::metrics::metric;
use common::*;
use reqwest::StatusCode;

const KEYS: usize = 90;
/// Keys 0..READ_CORRUPTED are corrupted and read by clients right after the restart.
const READ_CORRUPTED: usize = 15;
/// Keys READ_CORRUPTED..CORRUPTED are corrupted and read by nobody: only the scrub and
/// anti-entropy can find and restore them.
const CORRUPTED: usize = 30;
/// Enough keys that the middle of the file is mostly leaf pages, where a flip lands in data.
const MID_FILE_KEYS: usize = 2000;
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

fn key(i: usize) -> String {
    format!("corrupt/key-{i:03}")
}

/// A long, distinctive value: found in the file by searching for it.
fn value(i: usize) -> Vec<u8> {
    format!("<value {i:03} of the corruption test>")
        .repeat(4)
        .into_bytes()
}

fn data_file(dir: &Path) -> std::path::PathBuf {
    dir.join("ringkv.redb")
}

/// Flips one byte in the middle of every copy of `needle` in the file (redb may keep old
/// copies of a page); returns how many copies it damaged.
fn flip_inside(bytes: &mut [u8], needle: &[u8]) -> usize {
    let mut found = 0;
    let mut at = 0;
    while let Some(pos) = bytes
        .get(at..)
        .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
    {
        let start = at + pos;
        bytes[start + needle.len() / 2] ^= 0x5a;
        found += 1;
        at = start + needle.len();
    }
    found
}

fn corrupt_values(dir: &Path, which: std::ops::Range<usize>) {
    let path = data_file(dir);
    let mut bytes = std::fs::read(&path).expect("read the data file");
    for i in which {
        let copies = flip_inside(&mut bytes, &value(i));
        assert!(
            copies > 0,
            "value of {} not found in {}",
            key(i),
            path.display()
        );
    }
    std::fs::write(&path, bytes).expect("write the data file");
}

/// GET through `node`: the exact value, or a JSON error. Anything else (a wrong value, a
/// dropped connection, a non-JSON error) fails the test. Returns whether it was the value.
async fn read_is_right_or_error(node: &TestNode, i: usize, query: &[(&str, &str)]) -> bool {
    let resp = node
        .client
        .get(node.kv_url(&key(i)))
        .query(query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {} {query:?} via {}: {e}", key(i), node.addr));
    let status = resp.status();
    let body = resp.bytes().await.expect("body");
    if status == StatusCode::OK {
        assert_eq!(
            body.as_ref(),
            value(i).as_slice(),
            "GET {} {query:?} via {} served a wrong value",
            key(i),
            node.addr
        );
        return true;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {} via {}: {status} without a JSON error ({e}): {}",
            key(i),
            node.addr,
            String::from_utf8_lossy(&body)
        )
    });
    assert!(
        json["error"].is_string() && json["message"].is_string(),
        "GET {} via {}: {status} {json}",
        key(i),
        node.addr
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_replica_is_never_served_and_is_repaired() {
    let mut c = Cluster::start(
        3,
        &[
            "--gossip-interval",
            "100ms",
            "--anti-entropy-interval",
            "1s",
        ],
    )
    .await;
    for i in 0..KEYS {
        let via = &c.nodes[i % 3];
        try_put(via, &key(i), &value(i), None, &[("w", "all")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let victim = 2;
    let status = c.nodes[victim].sigterm_and_wait().await;
    assert!(status.success(), "node 3 stopped with {status:?}");
    corrupt_values(c.nodes[victim].data_dir(), 0..CORRUPTED);
    c.nodes[victim].restart_same_addrs().await;
    c.wait_health(&c.all(), CONVERGE_TIMEOUT).await;

    // Right after the restart, every read of a key nobody left for anti-entropy alone:
    // right or an error, through every node, at r=all and at the default R.
    let mut right = 0;
    let mut errors = 0;
    for i in (0..READ_CORRUPTED).chain(CORRUPTED..KEYS) {
        for node in &c.nodes {
            for query in [&[("r", "all")][..], &[][..]] {
                if read_is_right_or_error(node, i, query).await {
                    right += 1;
                } else {
                    errors += 1;
                }
            }
        }
    }
    eprintln!("reads after the restart: {right} right, {errors} errors");
    let corrupt = metric(&c.nodes[victim], "ringkv_corrupt_records_total").await;
    assert!(
        corrupt >= READ_CORRUPTED as u64,
        "the corrupted node counted {corrupt} corrupt records, want at least {READ_CORRUPTED}"
    );

    // Anti-entropy (and read repair, for the keys read) restores every damaged copy.
    let victim_node = &c.nodes[victim];
    wait_until(
        REPAIR_TIMEOUT,
        "the corrupted node to hold every damaged key again",
        || async move {
            for i in 0..CORRUPTED {
                local_has_exactly(victim_node, &key(i), &[&value(i)]).await?;
            }
            Ok(())
        },
    )
    .await;
    let corrupt = metric(victim_node, "ringkv_corrupt_records_total").await;
    assert!(
        corrupt >= CORRUPTED as u64,
        "counted {corrupt} corrupt records, want at least {CORRUPTED}"
    );
    // Keys READ_CORRUPTED..CORRUPTED were read by no client: only anti-entropy moved them.
    let moved = counters_sum(
        &c.nodes.iter().collect::<Vec<_>>(),
        &["ae_keys_pulled", "ae_keys_pushed"],
    )
    .await;
    assert!(
        moved >= (CORRUPTED - READ_CORRUPTED) as u64,
        "anti-entropy moved {moved} keys, want at least {}",
        CORRUPTED - READ_CORRUPTED
    );

    // Repaired: every key, through every node, at r=all, is exactly its value.
    for i in 0..KEYS {
        for node in &c.nodes {
            let got = try_get_value(node, &key(i), &[("r", "all")])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, value(i), "{} via {}", key(i), node.addr);
        }
    }
}

#[tokio::test]
async fn a_single_node_with_a_corrupted_file_answers_right_values_or_json_errors() {
    // No scrub (it runs at anti-entropy's pace): the reads themselves find the damage.
    let mut node = TestNode::start_with(&["--anti-entropy-interval", "0"]).await;
    for i in 0..KEYS {
        try_put(&node, &key(i), &value(i), None, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let status = node.sigterm_and_wait().await;
    assert!(status.success(), "stopped with {status:?}");
    corrupt_values(node.data_dir(), 0..CORRUPTED);
    node.restart().await;

    let mut right = 0;
    for round in 0..2 {
        for i in 0..KEYS {
            if read_is_right_or_error(&node, i, &[]).await {
                right += 1;
            } else {
                assert!(i < CORRUPTED, "round {round}: undamaged {} failed", key(i));
            }
        }
    }
    // The undamaged keys read right, both rounds.
    assert!(right >= 2 * (KEYS - CORRUPTED), "{right} right reads");
    let corrupt = metric(&node, "ringkv_corrupt_records_total").await;
    assert!(corrupt >= CORRUPTED as u64, "counted {corrupt}");
    let log = node.log_text();
    assert!(
        log.contains("stored record is corrupt") && log.contains(&key(0)),
        "the log names the corrupt keys:\n{}",
        node.log_tail(50)
    );
    // The node still takes writes, and a damaged key written again reads right.
    try_put(&node, &key(0), b"rewritten", None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        try_get_value(&node, &key(0), &[]).await.unwrap(),
        b"rewritten"
    );
}

#[tokio::test]
async fn a_file_with_its_tail_overwritten_fails_startup_with_exit_code_1() {
    let mut node = TestNode::start().await;
    for i in 0..KEYS {
        try_put(&node, &key(i), &value(i), None, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let status = node.sigterm_and_wait().await;
    assert!(status.success(), "stopped with {status:?}");
    let path = data_file(node.data_dir());
    let mut bytes = std::fs::read(&path).unwrap();
    let tail = bytes.len().min(64 * 1024);
    let start = bytes.len() - tail;
    for (n, b) in bytes[start..].iter_mut().enumerate() {
        *b = (n as u8).wrapping_mul(31) ^ 0xa5;
    }
    std::fs::write(&path, bytes).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("serve")
        .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
        .args(["--gossip-addr", "127.0.0.1:0", "--data-dir"])
        .arg(node.data_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringkv serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node started on a file with a damaged tail and kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("startup refused:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("error: opening the store in"),
        "no clear message; stderr:\n{stderr}"
    );
}

/// Blind damage: 16 bytes flipped in the middle of a stopped node's file, whatever they
/// hit (values, B-tree pages, free space). The node either refuses to start (exit code 1
/// and a message), or starts and answers every key with its right value or a JSON error:
/// never a wrong value, never a dropped connection.
#[tokio::test]
async fn sixteen_bytes_flipped_mid_file_never_give_a_wrong_value_or_a_dropped_connection() {
    use tokio::io::AsyncBufReadExt;

    let mut node = TestNode::start_with(&["--anti-entropy-interval", "0"]).await;
    for i in 0..MID_FILE_KEYS {
        try_put(&node, &key(i), &value(i), None, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let status = node.sigterm_and_wait().await;
    assert!(status.success(), "stopped with {status:?}");
    let path = data_file(node.data_dir());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("serve")
        .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
        .args([
            "--gossip-addr",
            "127.0.0.1:0",
            "--anti-entropy-interval",
            "0",
        ])
        .arg("--data-dir")
        .arg(node.data_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ringkv serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(READY_LINE_TIMEOUT, lines.next_line())
        .await
        .expect("neither a ready line nor an exit")
        .unwrap();
    let Some(line) = first else {
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("startup refused:\n{stderr}");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error: opening the store in"), "{stderr}");
        return;
    };
    let (addr, _) = parse_ready_line(&line).unwrap();
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .map_or(true, |r| r.status() != StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (mut right, mut errors) = (0, 0);
    for i in 0..MID_FILE_KEYS {
        let url = format!("http://{addr}{}", kv_path(&key(i)));
        let resp = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}: dropped connection: {e}", key(i)));
        let status = resp.status();
        let body = resp.bytes().await.expect("body");
        if status == StatusCode::OK {
            assert_eq!(
                body.as_ref(),
                value(i).as_slice(),
                "{} served wrong",
                key(i)
            );
            right += 1;
        } else {
            let json: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{}: {status} not JSON ({e})", key(i)));
            assert!(json["error"].is_string(), "{json}");
            errors += 1;
        }
    }
    eprintln!("after the flip: {right} right, {errors} JSON errors");
    // And a list over every key answers, or fails with a JSON error.
    let resp = client
        .get(format!("http://{addr}/kv?limit=1000"))
        .send()
        .await
        .expect("list: dropped connection");
    if resp.status() != StatusCode::OK {
        let json: serde_json::Value = resp.json().await.expect("list error is JSON");
        assert!(json["error"].is_string(), "{json}");
    }
    child.kill().await.ok();
}
