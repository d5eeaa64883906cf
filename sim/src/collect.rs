//! After the final heal and settle: probe read-your-writes, then gather every node's
//! view of the cluster and of every key, for the checker.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::history::{Event, OpKind, Outcome};
use crate::http;
use crate::workload::{addr, decode_value, key_name, now_ms, values_read, History};

/// One node's final state.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub node_id: String,
    pub ring_hash: String,
    pub write_ring_hash: String,
    pub hints_pending: u64,
    /// Member id → state, as this node sees them.
    pub members: BTreeMap<String, String>,
    pub local: BTreeMap<String, StoredSet>,
    pub preflist: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StoredSet {
    #[serde(default)]
    pub versions: Vec<StoredVersion>,
    #[serde(default)]
    pub context: Vec<DotJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StoredVersion {
    pub dot: DotJson,
    pub tombstone: bool,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct DotJson {
    pub actor: String,
    pub counter: u64,
}

impl StoredSet {
    pub fn covers(&self, actor: &str, counter: u64) -> bool {
        self.context
            .iter()
            .any(|d| d.actor == actor && d.counter >= counter)
    }
}

/// A write then a read on another node, with nothing else in flight.
#[derive(Clone, Debug)]
pub struct Probe {
    pub key: String,
    pub value: String,
    pub write: Outcome,
    pub read: Outcome,
    pub read_values: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// Nodes that answered, by number.
    pub nodes: BTreeMap<usize, NodeState>,
    /// Nodes that did not answer (crashed for good, or left).
    pub silent: Vec<usize>,
    pub probes: Vec<Probe>,
    /// What each removed node answered to a KV read after the settle (`None`: nothing).
    pub removed_answers: Vec<(usize, Option<u16>)>,
    /// Reads of the probes through nodes restarted after them.
    pub restart_reads: Vec<RestartRead>,
}

/// A probe's key read again through a node that crashed and restarted after the probe's
/// write: a restarted node must not answer before it knows the ring its data belongs to.
#[derive(Clone, Debug)]
pub struct RestartRead {
    pub key: String,
    pub value: String,
    /// The nodes that were restarted, and the one read through.
    pub restarted: Vec<usize>,
    pub node: usize,
    /// The first answer that was not "unavailable" (503 or no reply), or the last one.
    pub read: Outcome,
    pub read_values: Vec<String>,
    /// Answers "unavailable" before it (a rejoining node says 503).
    pub unavailable: u32,
}

/// How long a read after a restart may keep meeting "unavailable".
const REJOIN_BUDGET: Duration = Duration::from_secs(30);
/// Between two tries of a read after a restart: short, so the read lands as early after
/// the restart as the node answers at all.
const REJOIN_RETRY: Duration = Duration::from_millis(10);

/// Reads every acknowledged probe through the restarted nodes (in turn) as soon as they
/// answer, retrying only while they answer 503 or not at all.
pub async fn read_after_restart(restarted: &[usize], probes: &[Probe]) -> Vec<RestartRead> {
    let mut out = Vec::new();
    if restarted.is_empty() {
        return out;
    }
    for (i, p) in probes
        .iter()
        .filter(|p| p.write == Outcome::Status(204))
        .enumerate()
    {
        let node = restarted[i % restarted.len()];
        let deadline = now_ms() + REJOIN_BUDGET.as_millis() as u64;
        let mut unavailable = 0u32;
        let (read, read_values) = loop {
            let r = http::request(
                addr(node),
                Method::GET,
                &format!("/kv/{}", p.key),
                &[],
                Bytes::new(),
                TIMEOUT,
            )
            .await;
            let answer = match &r {
                Ok(r) => (Outcome::Status(r.status), values_read(r)),
                Err(e) => (Outcome::NoReply(e.clone()), Vec::new()),
            };
            let retry = matches!(answer.0, Outcome::Status(503) | Outcome::NoReply(_));
            if !retry || now_ms() >= deadline {
                break answer;
            }
            unavailable = unavailable.saturating_add(1);
            tokio::time::sleep(REJOIN_RETRY).await;
        };
        out.push(RestartRead {
            key: p.key.clone(),
            value: p.value.clone(),
            restarted: restarted.to_vec(),
            node,
            read,
            read_values,
            unavailable,
        });
    }
    out
}

const TIMEOUT: Duration = Duration::from_secs(5);

async fn get_json(node: usize, path: &str) -> Option<(u16, serde_json::Value)> {
    let reply = http::request(addr(node), Method::GET, path, &[], Bytes::new(), TIMEOUT)
        .await
        .ok()?;
    Some((
        reply.status,
        reply.json().unwrap_or(serde_json::Value::Null),
    ))
}

/// Read-your-writes at the configured quorums: for each key, a write through one node and
/// a read through another. The writes enter the history like any other.
pub async fn probe(nodes: &[usize], keys: usize, seed: u64, history: &History) -> Vec<Probe> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x9e37);
    let mut out = Vec::new();
    for k in 0..keys {
        let key = key_name(k);
        let a = nodes[rng.gen_range(0..nodes.len())];
        let b = nodes[rng.gen_range(0..nodes.len())];
        let value = format!("probe-{k}");
        let start = now_ms();
        let w = http::request(
            addr(a),
            Method::PUT,
            &format!("/kv/{key}"),
            &[],
            Bytes::from(value.clone()),
            TIMEOUT,
        )
        .await;
        let write = match &w {
            Ok(r) => Outcome::Status(r.status),
            Err(e) => Outcome::NoReply(e.clone()),
        };
        history.borrow_mut().push(Event {
            client: 0,
            key: key.clone(),
            node: a,
            kind: OpKind::BlindWrite,
            start_ms: start,
            end_ms: now_ms(),
            value: Some(value.clone()),
            token_in: None,
            outcome: write.clone(),
            token_out: w.as_ref().ok().and_then(|r| r.header("x-causality-token")),
            dot: w.as_ref().ok().and_then(|r| r.header("x-ringkv-dot")),
            read: Vec::new(),
        });
        let r = http::request(
            addr(b),
            Method::GET,
            &format!("/kv/{key}"),
            &[],
            Bytes::new(),
            TIMEOUT,
        )
        .await;
        let (read, read_values) = match &r {
            Ok(r) => (Outcome::Status(r.status), values_read(r)),
            Err(e) => (Outcome::NoReply(e.clone()), Vec::new()),
        };
        out.push(Probe {
            key,
            value,
            write,
            read,
            read_values,
        });
    }
    out
}

/// A KV read through each removed node: it must not serve, so only a 503 or silence is
/// right.
pub async fn removed_answers(nodes: &[usize]) -> Vec<(usize, Option<u16>)> {
    let mut out = Vec::new();
    for &node in nodes {
        let reply = http::request(
            addr(node),
            Method::GET,
            &format!("/kv/{}", key_name(0)),
            &[],
            Bytes::new(),
            TIMEOUT,
        )
        .await;
        out.push((node, reply.ok().map(|r| r.status)));
    }
    out
}

/// Everything the checker needs from the nodes still running.
pub async fn gather(candidates: &[usize], keys: usize) -> Collected {
    let mut c = Collected::default();
    for &node in candidates {
        match node_state(node, keys).await {
            Some(state) => {
                c.nodes.insert(node, state);
            }
            None => c.silent.push(node),
        }
    }
    c
}

async fn node_state(node: usize, keys: usize) -> Option<NodeState> {
    let (_, cluster) = get_json(node, "/cluster").await?;
    let (_, repl) = get_json(node, "/debug/replication").await?;
    let s = |v: &serde_json::Value, k: &str| v.get(k)?.as_str().map(str::to_owned);
    let mut state = NodeState {
        node_id: s(&cluster, "node_id")?,
        ring_hash: s(&cluster, "ring_hash")?,
        write_ring_hash: s(&cluster, "write_ring_hash")?,
        hints_pending: repl.get("hints_pending_total")?.as_u64()?,
        ..Default::default()
    };
    for m in cluster.get("members")?.as_array()? {
        state.members.insert(s(m, "id")?, s(m, "state")?);
    }
    for k in 0..keys {
        let key = key_name(k);
        let (status, local) = get_json(node, &format!("/debug/local/{key}")).await?;
        let mut set: StoredSet = match status {
            200 => serde_json::from_value(local).ok()?,
            404 => StoredSet::default(),
            _ => return None,
        };
        for version in &mut set.versions {
            version.value = version.value.as_deref().map(decode_value);
        }
        state.local.insert(key.clone(), set);
        let (_, pl) = get_json(node, &format!("/debug/preflist/{key}")).await?;
        let list = pl
            .get("preference_list")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        state.preflist.insert(key, list);
    }
    Some(state)
}
