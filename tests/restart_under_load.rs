//! Restarts under load: five nodes, keys written at `w=all` first, then clients read and
//! read-modify-write (with tokens) through every node while nodes are SIGKILLed and
//! restarted, six times. A restarted node takes no KV request until its peers confirm the
//! ring it belonged to, so:
//! - no read of a key written at `w=all` answers 404 (503 is allowed while rejoining);
//! - no acknowledged write is lost: every element a client added with an acknowledged
//!   write is in the key's value at the end (`r=all`), even though a client that sees a
//!   404 writes without a token, as a 404 leaves it nothing else to do.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const NODES: usize = 5;
const KEYS: usize = 16;
const CLIENTS: usize = 8;
const RESTARTS: usize = 6;
/// Bound on the faulty phase; the whole test stays under a minute of load.
const FAULT_PHASE: Duration = Duration::from_secs(45);
/// Bound on one client's operations.
const MAX_OPS_PER_CLIENT: usize = 20_000;

fn key(i: usize) -> String {
    format!("rmw-{i:02}")
}

/// The elements of a stored value: a comma-separated set.
fn elements(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a read saw: the union of the elements of every sibling, and the token.
enum Read {
    Found(BTreeSet<String>, String),
    NotFound(String),
    /// 503, a connection error, or a timeout: the node is down or rejoining.
    Unavailable,
}

async fn read(client: &reqwest::Client, base: &str, key: &str, r: &str) -> Read {
    let url = format!("{base}{}", kv_path(key));
    let Ok(resp) = client.get(&url).query(&[("r", r)]).send().await else {
        return Read::Unavailable;
    };
    let status = resp.status();
    let tok = token(&resp);
    let Ok(body) = resp.bytes().await else {
        return Read::Unavailable;
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    match (status, tok) {
        (StatusCode::OK, Some(t)) => Read::Found(elements(&text), t),
        (StatusCode::MULTIPLE_CHOICES, Some(t)) => {
            let json: Value = serde_json::from_str(&text).expect("siblings JSON");
            let mut all = BTreeSet::new();
            for s in json["siblings"].as_array().expect("siblings array") {
                assert_eq!(s["encoding"], "utf8", "{json}");
                all.extend(elements(s["value"].as_str().expect("value")));
            }
            Read::Found(all, t)
        }
        (StatusCode::NOT_FOUND, _) => Read::NotFound(text),
        (StatusCode::SERVICE_UNAVAILABLE, _) => {
            let json: Value = serde_json::from_str(&text).expect("503 is JSON");
            assert_eq!(json["error"], "unavailable", "{json}");
            Read::Unavailable
        }
        (other, _) => panic!("GET {key} via {base}: unexpected {other}: {text}"),
    }
}

/// PUT; `true` when acknowledged (204).
async fn write(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    value: &str,
    token: Option<&str>,
) -> bool {
    let url = format!("{base}{}", kv_path(key));
    let mut req = client.put(&url).body(value.to_owned());
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    match req.send().await {
        Ok(resp) => match resp.status() {
            StatusCode::NO_CONTENT => true,
            StatusCode::SERVICE_UNAVAILABLE => false,
            other => panic!(
                "PUT {key} via {base}: unexpected {other}: {}",
                resp.text().await.unwrap_or_default()
            ),
        },
        Err(_) => false,
    }
}

#[derive(Default)]
struct Tally {
    /// key → elements added by acknowledged writes.
    acked: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// "GET key via node: body" of every 404.
    not_found: Mutex<Vec<String>>,
    reads: AtomicU64,
    unavailable: AtomicU64,
    writes_acked: AtomicU64,
}

async fn client_loop(
    id: usize,
    bases: Arc<Vec<String>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let client = http_client();
    let mut rng = XorShift::new(seed);
    for op in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let node = rng.range(0, bases.len() as u64) as usize;
        let base = &bases[node];
        let k = key(rng.range(0, KEYS as u64) as usize);
        tally.reads.fetch_add(1, Ordering::Relaxed);
        let (mut set, tok) = match read(&client, base, &k, "quorum").await {
            Read::Found(set, t) => (set, Some(t)),
            Read::NotFound(body) => {
                tally
                    .not_found
                    .lock()
                    .unwrap()
                    .push(format!("GET {k} via node {}: {body}", node + 1));
                // All a 404 allows: a write without a token.
                (BTreeSet::new(), None)
            }
            Read::Unavailable => {
                tally.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let element = format!("c{id}-{op}");
        set.insert(element.clone());
        let value = set.into_iter().collect::<Vec<_>>().join(",");
        if write(&client, base, &k, &value, tok.as_deref()).await {
            tally.writes_acked.fetch_add(1, Ordering::Relaxed);
            tally
                .acked
                .lock()
                .unwrap()
                .entry(k)
                .or_default()
                .insert(element);
        }
    }
}

#[tokio::test]
async fn restarted_nodes_never_answer_404_for_written_keys_and_lose_no_write() {
    let started = Instant::now();
    let mut cluster = Cluster::start(NODES, &FAST_GOSSIP).await;
    let (mut rng, seed) = XorShift::from_test_seed();
    eprintln!("seed {seed}");

    let mut initial = BTreeMap::new();
    for i in 0..KEYS {
        let node = &cluster.nodes[i % NODES];
        try_put(node, &key(i), b"init", None, &[("w", "all")])
            .await
            .unwrap_or_else(|e| panic!("initial write: {e}"));
        initial.insert(key(i), BTreeSet::from(["init".to_owned()]));
    }

    let bases: Arc<Vec<String>> = Arc::new(cluster.nodes.iter().map(TestNode::base_url).collect());
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                bases.clone(),
                tally.clone(),
                stop.clone(),
                seed.wrapping_add(id as u64 + 1),
            ))
        })
        .collect();

    let faults = Instant::now();
    let mut restarts = 0;
    let mut last = usize::MAX;
    while restarts < RESTARTS && faults.elapsed() < FAULT_PHASE {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 900))).await;
        let mut victim = rng.range(0, NODES as u64) as usize;
        if victim == last {
            victim = (victim + 1) % NODES;
        }
        last = victim;
        cluster.nodes[victim].sigkill().await;
        eprintln!("killed node {} at {:?}", victim + 1, faults.elapsed());
        tokio::time::sleep(Duration::from_millis(rng.range(100, 700))).await;
        cluster.nodes[victim].restart_same_addrs().await;
        eprintln!("node {} ready again at {:?}", victim + 1, faults.elapsed());
        restarts += 1;
    }
    // A little load after the last restart too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.expect("client task");
    }
    assert_eq!(restarts, RESTARTS, "restarts done within {FAULT_PHASE:?}");
    eprintln!(
        "{} reads, {} unavailable, {} writes acknowledged",
        tally.reads.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        tally.writes_acked.load(Ordering::Relaxed)
    );
    let not_found = tally.not_found.lock().unwrap().clone();
    assert!(
        not_found.is_empty(),
        "{} reads of keys written at w=all answered 404, e.g. {:?}",
        not_found.len(),
        &not_found[..not_found.len().min(5)]
    );
    assert!(
        tally.writes_acked.load(Ordering::Relaxed) > 0,
        "the load wrote nothing"
    );

    // Every acknowledged element, and the initial one, is there at the end.
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let acked = tally.acked.lock().unwrap().clone();
    let client = http_client();
    let base = cluster.nodes[0].base_url();
    for (k, init) in &initial {
        let want: BTreeSet<String> = acked.get(k).cloned().unwrap_or_default();
        let have = wait_until(
            Duration::from_secs(20),
            &format!("read {k} at r=all"),
            || {
                let (client, base) = (&client, &base);
                async move {
                    match read(client, base, k, "all").await {
                        Read::Found(set, _) => Ok(set),
                        Read::NotFound(b) => panic!("{k} not found at the end: {b}"),
                        Read::Unavailable => Err("unavailable".to_owned()),
                    }
                }
            },
        )
        .await;
        let lost: Vec<&String> = want.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "{k}: acknowledged elements lost: {lost:?} (have {have:?})"
        );
        // Every write read the value before it (no 404 happened), so the initial
        // element is in every version.
        assert!(
            have.is_superset(init),
            "{k}: the initial element was lost: {have:?}"
        );
    }
    eprintln!("total {:?}", started.elapsed());
}
