//! Large values move in byte-bounded batches: hint delivery, anti-entropy refill and a
//! leave's data movement all finish when their keys hold 1 MiB values.
//!
//! The frame limit is lowered (`--max-frame-bytes 3 MiB`, with `--max-siblings 2` so the
//! startup check passes) so that 24 values of 1 MiB overflow a frame eight times over in
//! every batch the old count-bounded way (128 hints, 512 keys per call): the same
//! overflow as 200 values against the default 96 MiB frame, at a fraction of the I/O.
//! Each call now carries two values.
//!
//! 1. Three nodes (N=3, W=2); node 3 is stopped while the values are written. Once it is
//!    back, every hint drains and it holds every key.
//! 2. Node 2 loses its disk: it is killed, its data dir wiped, and a node on an empty data
//!    dir (so a new node id) takes its place. It joins, the old id is removed, and
//!    anti-entropy alone (no hints delivered, no client writes) refills it.
//! 3. Node 3 leaves: it moves everything to the new owners and exits.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::listing::list_prefix;
use common::TestNode;
use reqwest::StatusCode;

const KEYS: usize = 24;
const VALUE_BYTES: usize = 1024 * 1024;
const FLAGS: [&str; 12] = [
    "--gossip-interval",
    "100ms",
    "--max-frame-bytes",
    "3145728",
    "--max-siblings",
    "2",
    "--anti-entropy-interval",
    "2s",
    "--fsync",
    "periodic",
    // A 1 MiB replica write in a debug build on a loaded 2-core machine can take more
    // than the default 2 s.
    "--rpc-timeout",
    "10s",
];
const STEP: Duration = Duration::from_secs(40);

fn key(i: usize) -> String {
    format!("large/{i:03}")
}

fn value(i: usize) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|j| ((i * 31 + j) % 251) as u8)
        .collect()
}

/// Every key stored on `node` with exactly its value.
async fn holds_every_key(node: &TestNode) -> Result<(), String> {
    let mut missing = Vec::new();
    for i in 0..KEYS {
        let want = value(i);
        if let Err(e) = local_has_exactly(node, &key(i), &[&want]).await {
            // The stored set is 1 MiB of base64: keep the message short.
            missing.push(format!(
                "{}: {}",
                key(i),
                e.chars().take(120).collect::<String>()
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {KEYS} keys missing or wrong on {}; first: {}",
            missing.len(),
            node.addr,
            missing[0]
        ))
    }
}

/// Node ids `node` sees as live members.
async fn live_ids(node: &TestNode) -> Result<Vec<String>, String> {
    let c = try_json(node, "/cluster").await?;
    let mut ids: Vec<String> = c["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["live"].as_bool() == Some(true))
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_drain_refill_and_leave_in_bounded_batches() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &FLAGS).await;

    // ---- 1. Hints of 1 MiB values drain. ----
    cluster.nodes[2].sigkill().await;
    cluster.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;
    let errors = for_each_bounded(0..KEYS, 2, |i| {
        let node = &cluster.nodes[i % 2];
        async move {
            try_put(node, &key(i), &value(i), None, &[("timeout_ms", "20000")])
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_no_errors(&errors, "writes with node 3 down");
    // The hint for the down replica is stored in the background, after the answer.
    let pending = wait_until(STEP, "a hint for node 3 of every write", || {
        let cluster = &cluster;
        async move {
            let pending = cluster.hints_pending_total(&[0, 1]).await;
            if pending >= KEYS as u64 {
                Ok(pending)
            } else {
                Err(format!("{pending} hints pending"))
            }
        }
    })
    .await;
    eprintln!(
        "{KEYS} values written, {pending} hints pending ({:?})",
        started.elapsed()
    );
    cluster.nodes[2].restart_same_addrs().await;
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    cluster.wait_hints_drained(&cluster.all(), STEP).await;
    let delivered = counters_sum(
        &[&cluster.nodes[0], &cluster.nodes[1]],
        &["hints_delivered"],
    )
    .await;
    assert!(delivered >= KEYS as u64, "hints delivered: {delivered}");
    wait_until(STEP, "node 3 to hold every key", || {
        holds_every_key(&cluster.nodes[2])
    })
    .await;
    eprintln!("hints drained ({:?})", started.elapsed());

    // ---- 2. A node that lost its disk is refilled by anti-entropy. ----
    let delivered_before = counters_sum(
        &[&cluster.nodes[0], &cluster.nodes[2]],
        &["hints_delivered"],
    )
    .await;
    let pushed_before =
        counters_sum(&[&cluster.nodes[0], &cluster.nodes[2]], &["ae_keys_pushed"]).await;
    let old_id = cluster.nodes[1].node_id.clone();
    cluster.nodes[1].sigkill().await;
    let dir = cluster.nodes[1].data_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).expect("wipe node 2's data dir");
    // A fresh process on an empty data dir, joining through node 1; a join pulls its
    // ranges before /ready, which may take a while on a loaded machine.
    cluster.nodes[1] = start_joiner(&cluster.nodes[0], &FLAGS, STEP).await;
    let new_id = cluster.nodes[1].node_id.clone();
    assert_ne!(new_id, old_id, "a wiped data dir means a new node id");
    // The old identity is gone for good: an operator removes it.
    let remove = format!("/admin/remove/{old_id}");
    wait_until(STEP, "the old id to be removed", || {
        let node = &cluster.nodes[0];
        let remove = remove.clone();
        async move {
            let (status, body) = post_empty(node, &remove).await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("POST {remove}: {status} {body}"))
            }
        }
    })
    .await;
    let mut want: Vec<String> = cluster.nodes.iter().map(|n| n.node_id.clone()).collect();
    want.sort();
    wait_until(STEP, "every node to see the three live members", || {
        let nodes = &cluster.nodes;
        let want = want.clone();
        async move {
            for node in nodes {
                let ids = live_ids(node).await?;
                if ids != want {
                    return Err(format!("{} sees live {ids:?}, want {want:?}", node.addr));
                }
            }
            Ok(())
        }
    })
    .await;
    wait_until(STEP, "the wiped node to hold every key again", || {
        holds_every_key(&cluster.nodes[1])
    })
    .await;
    // Anti-entropy moved every key into it (pulled by it, or pushed by the others), and
    // no hint was delivered meanwhile.
    let pulled = counter(&replication_json(&cluster.nodes[1]).await, "ae_keys_pulled");
    let pushed = counters_sum(&[&cluster.nodes[0], &cluster.nodes[2]], &["ae_keys_pushed"]).await
        - pushed_before;
    assert!(
        pulled + pushed >= KEYS as u64,
        "anti-entropy moved {pulled} + {pushed} keys into the wiped node"
    );
    let delivered_after = counters_sum(
        &[&cluster.nodes[0], &cluster.nodes[2]],
        &["hints_delivered"],
    )
    .await;
    assert_eq!(
        delivered_after, delivered_before,
        "no hint was delivered in step 2"
    );
    eprintln!("wiped node refilled ({:?})", started.elapsed());

    // ---- 3. A leave moves 1 MiB values out and finishes. ----
    let (status, body) = post_empty(&cluster.nodes[2], "/admin/leave").await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST /admin/leave: {body}");
    let exit = cluster.nodes[2].wait_exited(STEP).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "node 3 did not finish its leave within {STEP:?}: {exit:?}\n--- log ---\n{}",
        cluster.nodes[2].log_tail(60)
    );
    for i in [0, 1] {
        wait_until(STEP, "the remaining nodes to hold every key", || {
            holds_every_key(&cluster.nodes[i])
        })
        .await;
    }
    eprintln!("leave finished ({:?})", started.elapsed());

    // ---- A listing of 1 MiB values: the peer's scan replies stop at their byte budget
    // (two values each) and the pages still cover every key exactly once. ----
    // Bounded: at most one page per key, plus one.
    let listed = list_prefix(&cluster.nodes[0], "large/", 10, KEYS + 1)
        .await
        .unwrap_or_else(|(status, body)| panic!("listing of the large values: {status} {body}"));
    let want: Vec<String> = (0..KEYS).map(key).collect();
    assert_eq!(listed, want, "listing of the large values");
    eprintln!("listing complete ({:?})", started.elapsed());
}

/// A config whose frame cannot carry a key's largest sibling set is refused at startup
/// with a clear error, before the node binds anything.
#[tokio::test]
async fn a_frame_too_small_for_the_largest_value_is_refused_at_startup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases: [&[&str]; 2] = [
        // 2 MiB values x 64 siblings cannot fit the default 96 MiB frame.
        &["--max-value-bytes", "2097152"],
        &["--max-frame-bytes", "1048576"],
    ];
    for args in cases {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .arg("serve")
            .args(["--data-dir", &tmp.path().join("data").display().to_string()])
            .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
            .args(["--gossip-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ringkv serve");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("ringkv serve {args:?} did not exit on its own"))
            .expect("wait");
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            err.read_to_string(&mut stderr).await.expect("stderr");
        }
        assert!(!status.success(), "{args:?} was accepted: {stderr}");
        assert!(
            stderr.contains("--max-frame-bytes") && stderr.contains("--max-siblings"),
            "{args:?}: the error names the flags: {stderr}"
        );
    }
}
