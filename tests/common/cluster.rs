//! Multi-node helpers for the `cluster_*` tests: a cluster of `TestNode`s joined through
//! node 1's gossip address, bounded polling, and typed access to `/cluster`,
//! `/debug/replication`, `/debug/preflist/{key}` and `/debug/local/{key}`.
//!
//! Nodes are numbered from 1 in messages ("node 2"), and indexed from 0 in `Cluster::nodes`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::{debug_local_path, json_body, TestNode, TOKEN_HEADER};

/// How long a cluster may take to agree on its members and their health.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Gossip round used by every cluster test: fast failure detection.
pub const FAST_GOSSIP: [&str; 2] = ["--gossip-interval", "100ms"];

/// Fast gossip, and anti-entropy off: only hinted handoff may bring a replica back up to
/// date, so tests of hints prove what hints did.
#[allow(dead_code)]
pub const HINTS_ONLY: [&str; 4] = ["--gossip-interval", "100ms", "--anti-entropy-interval", "0"];

const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Polls `f` until it returns `Ok`, for at most `timeout` (attempts 50 ms apart; one
/// attempt is also cut off at the deadline plus 5 s). Panics with `what` and the last
/// `Err` when time runs out.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let budget = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        let last = match tokio::time::timeout(budget, f()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => e,
            Err(_) => format!("one attempt took longer than {budget:?}"),
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:?} ({attempts} attempts) waiting for: {what}\nlast state: {last}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A set of nodes, node 1 first; the others were started with `--seed <node 1's gossip>`.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
}

impl Cluster {
    /// Starts `n` nodes, each with `extra` flags (plus the seed for nodes 2..n), and waits
    /// until every node sees `n` live members and the same ring.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        assert!(n >= 1);
        let first = TestNode::start_with(extra).await;
        let seed = first.gossip_addr.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--seed", seed.as_str()]);
        // The others join concurrently: each waits for its own /ready.
        let others = futures::future::join_all((1..n).map(|_| TestNode::start_with(&args))).await;
        let mut nodes = vec![first];
        nodes.extend(others);
        let cluster = Cluster { nodes };
        cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
        for (i, node) in cluster.nodes.iter().enumerate() {
            eprintln!(
                "node {}: id={} http={} rpc={} gossip={} log={}",
                i + 1,
                node.node_id,
                node.addr,
                node.rpc_addr,
                node.gossip_addr,
                node.log_path().display()
            );
        }
        cluster
    }

    /// Indexes of every node.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.node_id == id)
            .unwrap_or_else(|| {
                panic!(
                    "no node has id {id:?}; ids: {:?}",
                    self.nodes.iter().map(|n| &n.node_id).collect::<Vec<_>>()
                )
            })
    }

    /// Waits until every node in `up` (indexes) sees every node of the cluster as a member,
    /// exactly the nodes in `up` as live, and all of them agree on the ring hash.
    pub async fn wait_health(&self, up: &[usize], timeout: Duration) {
        let want_live: BTreeSet<String> =
            up.iter().map(|&i| self.nodes[i].node_id.clone()).collect();
        let want_members: BTreeSet<String> = self.nodes.iter().map(|n| n.node_id.clone()).collect();
        let nodes = &self.nodes;
        let (want_live, want_members) = (&want_live, &want_members);
        let what = format!(
            "nodes {:?} to see members {want_members:?} with live {want_live:?} and one ring hash",
            up.iter().map(|i| i + 1).collect::<Vec<_>>()
        );
        wait_until(timeout, &what, || async move {
            let mut hashes = BTreeSet::new();
            for &i in up {
                let c = try_json(&nodes[i], "/cluster").await?;
                let members = c["members"].as_array().cloned().unwrap_or_default();
                let ids: BTreeSet<String> = members
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect();
                let live: BTreeSet<String> = members
                    .iter()
                    .filter(|m| m["live"].as_bool() == Some(true))
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect();
                if &ids != want_members || &live != want_live {
                    return Err(format!(
                        "node {} sees members {ids:?}, live {live:?}",
                        i + 1
                    ));
                }
                hashes.insert(c["ring_hash"].as_str().unwrap_or("?").to_owned());
            }
            if hashes.len() != 1 {
                return Err(format!("ring hashes differ: {hashes:?}"));
            }
            Ok(())
        })
        .await;
    }

    /// Waits until no node in `which` holds a hint.
    pub async fn wait_hints_drained(&self, which: &[usize], timeout: Duration) {
        let nodes = &self.nodes;
        wait_until(timeout, "hints to drain to 0", || async move {
            let mut pending = Vec::new();
            for &i in which {
                let r = try_json(&nodes[i], "/debug/replication").await?;
                let total = r["hints_pending_total"]
                    .as_u64()
                    .ok_or(format!("no hints_pending_total in {r}"))?;
                if total > 0 {
                    pending.push(format!("node {}: {}", i + 1, r["hints_pending"]));
                }
            }
            if pending.is_empty() {
                Ok(())
            } else {
                Err(pending.join("; "))
            }
        })
        .await;
    }

    /// Sum of `hints_pending_total` over `which`.
    pub async fn hints_pending_total(&self, which: &[usize]) -> u64 {
        let mut total = 0;
        for &i in which {
            total += counter(
                &replication_json(&self.nodes[i]).await,
                "hints_pending_total",
            );
        }
        total
    }
}

/// GET `path` on `node` as JSON; `Err` (not a panic) on a transport error or a non-200.
pub async fn try_json(node: &TestNode, path: &str) -> Result<Value, String> {
    let resp = node
        .client
        .get(node.url(path))
        .send()
        .await
        .map_err(|e| format!("GET {path} on {}: {e}", node.addr))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("GET {path} on {}: reading body: {e}", node.addr))?;
    if status != StatusCode::OK {
        return Err(format!(
            "GET {path} on {}: {status} {}",
            node.addr,
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON ({e})"))
}

/// `GET /cluster` (must be 200 JSON).
pub async fn cluster_json(node: &TestNode) -> Value {
    try_json(node, "/cluster")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `GET /debug/replication` (must be 200 JSON).
pub async fn replication_json(node: &TestNode) -> Value {
    try_json(node, "/debug/replication")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A non-negative integer field of a JSON object, failing the test when absent.
pub fn counter(json: &Value, name: &str) -> u64 {
    json[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer `{name}` in {json}"))
}

/// `GET /debug/preflist/{key}`: the preference list (node ids, in ring order).
pub async fn preflist(node: &TestNode, key: &str) -> Vec<String> {
    let path = format!("/debug/preflist/{}", utf8_percent_encode(key, KEY_SET));
    let body = try_json(node, &path)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        body["key"].as_str(),
        Some(key),
        "preflist of {key:?}: {body}"
    );
    body["preference_list"]
        .as_array()
        .unwrap_or_else(|| panic!("preflist of {key:?}: no preference_list array: {body}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("preflist of {key:?}: non-string id in {body}"))
                .to_owned()
        })
        .collect()
}

/// `GET /debug/local/{key}`: `Ok(Some(set))` when stored here, `Ok(None)` on 404, `Err` on
/// anything else.
pub async fn try_local(node: &TestNode, key: &str) -> Result<Option<Value>, String> {
    let path = debug_local_path(key);
    let resp = node
        .client
        .get(node.url(&path))
        .send()
        .await
        .map_err(|e| format!("GET {path} on {}: {e}", node.addr))?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => Ok(Some(json_body(resp, &path).await)),
        other => Err(format!(
            "GET {path} on {}: unexpected {other}: {}",
            node.addr,
            resp.text().await.unwrap_or_default()
        )),
    }
}

/// `GET /debug/local/{key}`, failing the test on anything but 200 or 404.
pub async fn local(node: &TestNode, key: &str) -> Option<Value> {
    try_local(node, key).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The live (non-tombstone) values of a `/debug/local` answer, decoded, sorted.
pub fn live_values(set: &Value) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = set["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("/debug/local answer without `versions`: {set}"))
        .iter()
        .filter(|v| v["tombstone"].as_bool() != Some(true))
        .map(|v| {
            let value = v["value"]
                .as_str()
                .unwrap_or_else(|| panic!("live version without string value: {v}"));
            match v["encoding"].as_str() {
                Some("utf8") => value.as_bytes().to_vec(),
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .unwrap_or_else(|e| panic!("bad base64 in {v}: {e}")),
                other => panic!("unknown encoding {other:?} in {v}"),
            }
        })
        .collect();
    out.sort();
    out
}

/// Whether `node` stores exactly the live values `want` for `key` (sorted compare).
pub async fn local_has_exactly(node: &TestNode, key: &str, want: &[&[u8]]) -> Result<(), String> {
    let mut want: Vec<Vec<u8>> = want.iter().map(|v| v.to_vec()).collect();
    want.sort();
    match try_local(node, key).await? {
        None => Err(format!("{key:?} not stored on {}", node.addr)),
        Some(set) => {
            let got = live_values(&set);
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{key:?} on {}: live values {:?}, want {:?}; stored set {set}",
                    node.addr,
                    lossy(&got),
                    lossy(&want)
                ))
            }
        }
    }
}

pub fn lossy(values: &[Vec<u8>]) -> Vec<String> {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// `PUT /kv/{key}?{query}` with an optional token.
pub async fn put_q(
    node: &TestNode,
    key: &str,
    value: &[u8],
    token: Option<&str>,
    query: &[(&str, &str)],
) -> Result<Response, String> {
    let mut req = node
        .client
        .put(node.kv_url(key))
        .query(query)
        .body(value.to_vec());
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    req.send()
        .await
        .map_err(|e| format!("PUT {key:?} via {}: {e}", node.addr))
}

/// PUT that must answer 204 within the request timeout; returns the token or a description
/// of what went wrong (status, body, elapsed).
pub async fn try_put(
    node: &TestNode,
    key: &str,
    value: &[u8],
    token: Option<&str>,
    query: &[(&str, &str)],
) -> Result<String, String> {
    let start = Instant::now();
    let resp = put_q(node, key, value, token, query).await?;
    let status = resp.status();
    let tok = super::token(&resp);
    let body = resp.text().await.unwrap_or_default();
    match (status, tok) {
        (StatusCode::NO_CONTENT, Some(t)) => Ok(t),
        _ => Err(format!(
            "PUT {key:?} {query:?} via {}: {status} after {:?}: {body}",
            node.addr,
            start.elapsed()
        )),
    }
}

/// GET `/kv/{key}?{query}` that must answer 200; returns the value or a description.
pub async fn try_get_value(
    node: &TestNode,
    key: &str,
    query: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    let resp = node
        .client
        .get(node.kv_url(key))
        .query(query)
        .send()
        .await
        .map_err(|e| format!("GET {key:?} via {}: {e}", node.addr))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("GET {key:?}: body: {e}"))?;
    if status == StatusCode::OK {
        Ok(body.to_vec())
    } else {
        Err(format!(
            "GET {key:?} {query:?} via {}: {status} after {:?}: {}",
            node.addr,
            start.elapsed(),
            String::from_utf8_lossy(&body)
        ))
    }
}

/// Runs `f` over `items`, `concurrency` at a time, and returns every error (in no order).
pub async fn for_each_bounded<I, T, F, Fut>(items: I, concurrency: usize, f: F) -> Vec<String>
where
    I: IntoIterator<Item = T>,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(concurrency)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// Fails the test if `errors` is not empty, showing the first few.
pub fn assert_no_errors(errors: &[String], what: &str) {
    assert!(
        errors.is_empty(),
        "{what}: {} failure(s); first ones:\n{}",
        errors.len(),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---- Helpers for the anti-entropy and data-movement tests (`ae_*`). ----

impl TestNode {
    /// Waits (bounded) for the process to exit on its own; `None` if it is still running
    /// after `limit`. The process is left reaped, so `restart` can tell it stopped.
    pub async fn wait_exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.wait_exit(limit).await
    }
}

/// Starts a fresh node that joins the cluster through `seed`'s gossip address, and waits
/// (up to `ready_timeout`) for its `/ready`, which a joining node answers only once it has
/// pulled its ranges: that may take longer than the 10 s `TestNode::start_with` allows.
pub async fn start_joiner(seed: &TestNode, extra: &[&str], ready_timeout: Duration) -> TestNode {
    let seed_addr = seed.gossip_addr.to_string();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--seed", seed_addr.as_str()]);
    TestNode::start_with_ready_timeout(&args, ready_timeout).await
}

/// `POST {path}` on `node` with an empty body: (status, body as JSON or a JSON string).
pub async fn post_empty(node: &TestNode, path: &str) -> (StatusCode, Value) {
    let resp = node
        .client
        .post(node.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", node.addr));
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, json)
}

/// Waits until every node in `nodes` (index, node) sees exactly the members `want`, each
/// live, `normal` and with nothing left to move, and all agree on one ring hash (equal to
/// their write ring hash); returns that hash.
pub async fn wait_settled_members(
    nodes: &[(usize, &TestNode)],
    want: &BTreeSet<String>,
    timeout: Duration,
) -> String {
    let what = format!(
        "nodes {:?} to see exactly members {want:?}, all live and normal, with one ring hash",
        nodes.iter().map(|(i, _)| i + 1).collect::<Vec<_>>()
    );
    wait_until(timeout, &what, || async move {
        let mut hashes = BTreeSet::new();
        for (i, node) in nodes {
            let c = try_json(node, "/cluster").await?;
            let members = c["members"].as_array().cloned().unwrap_or_default();
            let ids: BTreeSet<String> = members
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            let unsettled: Vec<String> = members
                .iter()
                .filter(|m| {
                    m["live"].as_bool() != Some(true)
                        || m["state"] != "normal"
                        || !m["to_move"].is_null()
                })
                .map(|m| {
                    format!(
                        "{} live={} state={} to_move={}",
                        m["id"], m["live"], m["state"], m["to_move"]
                    )
                })
                .collect();
            if &ids != want || !unsettled.is_empty() {
                return Err(format!(
                    "node {} sees members {ids:?}; not live+normal: {unsettled:?}",
                    i + 1
                ));
            }
            let ring = c["ring_hash"].as_str().unwrap_or("?").to_owned();
            // Nothing moves: the write ring (when shown) is the read ring.
            if let Some(write) = c["write_ring_hash"].as_str() {
                if write != ring {
                    return Err(format!(
                        "node {}: write ring {write} differs from ring {ring}",
                        i + 1
                    ));
                }
            }
            hashes.insert(ring);
        }
        if hashes.len() != 1 {
            return Err(format!("ring hashes differ: {hashes:?}"));
        }
        Ok(hashes.into_iter().next().unwrap_or_default())
    })
    .await
}

/// The ids of the nodes in `nodes` that store `key` (per `/debug/local`).
pub async fn holders(nodes: &[&TestNode], key: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for node in nodes {
        if try_local(node, key).await?.is_some() {
            out.insert(node.node_id.clone());
        }
    }
    Ok(out)
}

/// Sum of the named `/debug/replication` counters over `nodes`.
pub async fn counters_sum(nodes: &[&TestNode], names: &[&str]) -> u64 {
    let mut total = 0;
    for node in nodes {
        let r = replication_json(node).await;
        for name in names {
            total += counter(&r, name);
        }
    }
    total
}
