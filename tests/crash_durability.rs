//! `--fsync always` durability: every write acknowledged with 204 before a SIGKILL is readable,
//! with its exact value, after the node restarts on the same data dir.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

const CYCLES: usize = 4;
const WRITERS: usize = 8;
/// Upper bound on writes per writer per cycle, so a loop always ends by itself.
const MAX_WRITES_PER_WRITER: usize = 5_000;
/// Upper bound on a cycle's write phase.
const CYCLE_DEADLINE: Duration = Duration::from_secs(30);
/// Acks to see before arming the kill timer, so every cycle kills a node under load.
const MIN_ACKS_BEFORE_KILL: usize = 20;

/// Acknowledged writes: (key, value).
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The value written under `key`: the key itself, then `len` pseudo-random bytes (often not
/// UTF-8).
fn value_for(key: &str, rng: &mut XorShift) -> Vec<u8> {
    let len = rng.range(0, 2048) as usize;
    let mut v = format!("{key}:").into_bytes();
    v.extend((0..len).map(|_| rng.next_u64() as u8));
    v
}

/// What the writers of one cycle share with the test.
#[derive(Clone, Default)]
struct Shared {
    /// Acknowledged writes of this cycle.
    acked: Acked,
    /// `acked.len()`, readable without the lock.
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Non-204 answers from the live node (each one is a failure).
    unexpected: Arc<Mutex<Vec<String>>>,
}

/// One writer: PUTs unique keys until the node stops answering, `stop` is set, the deadline
/// passes or it has written `MAX_WRITES_PER_WRITER` keys. Records each 204 in `acked`, and any
/// other HTTP status in `unexpected` (a live node must acknowledge every write).
async fn writer(node_url: String, cycle: usize, id: usize, seed: u64, shared: Shared) {
    let Shared {
        acked,
        acks,
        stop,
        unexpected,
    } = shared;
    let client = http_client();
    let mut rng = XorShift::new(seed ^ ((cycle as u64) << 32) ^ ((id as u64 + 1) * 0x9E37_79B9));
    let deadline = Instant::now() + CYCLE_DEADLINE;
    for i in 0..MAX_WRITES_PER_WRITER {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let key = format!("crash/c{cycle}/w{id}/{i:05}");
        let value = value_for(&key, &mut rng);
        let url = format!("{node_url}{}", kv_path(&key));
        match client.put(&url).body(value.clone()).send().await {
            Ok(resp) if resp.status() == StatusCode::NO_CONTENT => {
                acked.lock().expect("acked lock").push((key, value));
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                unexpected
                    .lock()
                    .expect("unexpected lock")
                    .push(format!("PUT {key}: {status} {body}"));
                return;
            }
            // Connection refused/reset: the node is gone. Not acknowledged, not our business.
            Err(_) => return,
        }
    }
}

/// Reads every acknowledged key back (8 readers) and returns the mismatches.
async fn verify(node: &TestNode, acked: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for chunk in acked.chunks(acked.len().div_ceil(8).max(1)) {
        let client = node.client.clone();
        let base = node.base_url();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            let mut bad = Vec::new();
            for (key, value) in chunk {
                let url = format!("{base}{}", kv_path(&key));
                match client.get(&url).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.bytes().await.unwrap_or_default();
                        if status != StatusCode::OK {
                            bad.push(format!("{key}: GET answered {status}"));
                        } else if body.as_ref() != value.as_slice() {
                            bad.push(format!(
                                "{key}: value differs ({} bytes, want {})",
                                body.len(),
                                value.len()
                            ));
                        }
                    }
                    Err(e) => bad.push(format!("{key}: GET failed: {e}")),
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(res) = set.join_next().await {
        bad.extend(res.expect("reader task panicked"));
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    survive_sigkill(&["--fsync", "always"]).await;
}

/// The same with the write-ahead log: what was acknowledged is in the log, replayed on
/// restart over whatever redb kept of its non-durable commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_with_the_wal() {
    survive_sigkill(&["--fsync", "always", "--wal", "--wal-max-bytes", "65536"]).await;
}

async fn survive_sigkill(args: &[&str]) {
    let (mut rng, seed) = XorShift::from_test_seed();
    eprintln!("crash_durability seed = {seed}, args {args:?}");
    let mut node = TestNode::start_with(args).await;
    let mut all_acked: Vec<(String, Vec<u8>)> = Vec::new();

    for cycle in 0..CYCLES {
        let shared = Shared::default();
        let Shared {
            acked,
            acks,
            stop,
            unexpected,
        } = shared.clone();
        let mut writers = tokio::task::JoinSet::new();
        for id in 0..WRITERS {
            writers.spawn(writer(node.base_url(), cycle, id, seed, shared.clone()));
        }

        // Wait (bounded) until the node is taking writes, then kill it after a random delay.
        let loaded = poll_until(2_000, Duration::from_millis(10), || {
            let n = acks.load(Ordering::Relaxed);
            async move { (n >= MIN_ACKS_BEFORE_KILL).then_some(n) }
        })
        .await;
        assert!(
            loaded.is_some(),
            "cycle {cycle}: fewer than {MIN_ACKS_BEFORE_KILL} acks in 20 s; unexpected: {:?}",
            unexpected.lock().expect("lock")
        );
        let delay = Duration::from_millis(rng.range(300, 800));
        tokio::time::sleep(delay).await;
        node.sigkill().await;
        stop.store(true, Ordering::Relaxed);

        let joined = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(res) = writers.join_next().await {
                res.expect("writer panicked");
            }
        })
        .await;
        assert!(
            joined.is_ok(),
            "cycle {cycle}: writers did not stop within 60 s"
        );
        let unexpected = unexpected.lock().expect("lock").clone();
        assert!(
            unexpected.is_empty(),
            "cycle {cycle}: the live node refused writes: {unexpected:?}"
        );

        let cycle_acked = std::mem::take(&mut *acked.lock().expect("lock"));
        eprintln!(
            "cycle {cycle}: killed after {delay:?} with {} acknowledged writes",
            cycle_acked.len()
        );
        all_acked.extend(cycle_acked);

        node.restart().await;
        let bad = verify(&node, &all_acked).await;
        assert!(
            bad.is_empty(),
            "cycle {cycle} (seed {seed}): {} of {} acknowledged writes lost or changed after SIGKILL; first: {:?}",
            bad.len(),
            all_acked.len(),
            &bad[..bad.len().min(20)]
        );
    }
}
