//! `/cluster`, `/debug/replication` and `/debug/preflist/{key}`: what this node knows of
//! the cluster and of its replication work.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::cluster::membership::{rings_of, MemberState};
use crate::cluster::ring::{key_position, Ring};
use crate::cluster::NodeId;
use crate::kv::Pending;
use crate::stats::ReplicationStats;

use super::error::ApiError;
use super::kv::key_from_uri;
use super::AppState;

/// One member as `/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberJson {
    /// The node id, 16 hex digits (see [`MemberJson::node_id`]).
    pub id: String,
    pub http_addr: String,
    pub rpc_addr: String,
    pub gossip_addr: String,
    pub live: bool,
    pub state: MemberState,
    pub vnodes: u16,
    /// Share of the key space this member is first in the preference list for.
    pub ownership: f64,
    /// Share of the key space this member holds a replica of (sums to N).
    pub replica_share: f64,
    /// What a joining or leaving member still has to move (ranges to pull, or keys to
    /// send to their new owners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_move: Option<u64>,
    /// Whether its storage takes writes (false while its disk is full, or after a failed
    /// fsync); a member that does not still serves reads.
    pub writable: bool,
}

impl MemberJson {
    pub fn node_id(&self) -> Result<NodeId, DocumentError> {
        self.id.parse().map_err(|source| DocumentError::BadId {
            id: self.id.clone(),
            source,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Factors {
    pub n: usize,
    pub r: usize,
    pub w: usize,
}

/// Hints pending for one target, as `/cluster` and `/debug/replication` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingJson {
    pub count: u64,
    pub bytes: u64,
}

impl From<Pending> for PendingJson {
    fn from(p: Pending) -> Self {
        PendingJson {
            count: p.count,
            bytes: p.bytes,
        }
    }
}

/// The `/cluster` document: what the node answers, and what the tools (`ringkv-tools`)
/// and tests read back, typed on both sides so a renamed field breaks the build rather
/// than a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterJson {
    pub node_id: String,
    pub cluster_id: String,
    /// The ring reads use: members that hold data (normal, leaving).
    pub ring_hash: String,
    /// The ring writes also go to while data moves (normal, joining); equal to
    /// `ring_hash` when nothing moves.
    pub write_ring_hash: String,
    pub members: Vec<MemberJson>,
    /// As configured.
    pub replication: Factors,
    /// In force, clamped to the member count.
    pub effective: Factors,
    /// Hints this node holds, per target node id.
    pub hints_pending: BTreeMap<String, PendingJson>,
    /// The ids that left or were removed, as this node keeps and gossips them.
    pub departed: Vec<DepartedJson>,
    /// False while a live member's gossiped ring has differed from this node's for more
    /// than a few gossip rounds: a split ring.
    pub ring_agreement: bool,
    /// The members whose ring differs, and the ring they gossip.
    pub ring_disagreements: Vec<DisagreementJson>,
    /// Restarted on its persisted membership and not yet confirmed by its peers: takes no
    /// KV request.
    pub rejoining: bool,
}

impl ClusterJson {
    /// The answering node's id.
    pub fn self_id(&self) -> Result<NodeId, DocumentError> {
        self.node_id.parse().map_err(|source| DocumentError::BadId {
            id: self.node_id.clone(),
            source,
        })
    }

    /// The read and write rings of the members listed, built as the node builds its own
    /// ([`rings_of`]).
    pub fn rings(&self) -> Result<(Ring, Ring), DocumentError> {
        let members = self
            .members
            .iter()
            .map(|m| Ok((m.node_id()?, m.state, m.vnodes)))
            .collect::<Result<Vec<_>, DocumentError>>()?;
        Ok(rings_of(members))
    }
}

/// A `/cluster` document that does not describe a cluster.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("/cluster names a node id {id:?} that is not 16 hex digits")]
    BadId {
        id: String,
        source: std::num::ParseIntError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DepartedJson {
    pub id: String,
    /// `left` or `removed`.
    pub kind: String,
    /// When the departure was first recorded (ms since the Unix epoch).
    pub at_ms: u64,
}

async fn departed(state: &AppState) -> Vec<DepartedJson> {
    state
        .admin
        .departures()
        .await
        .iter()
        .map(|(id, d)| DepartedJson {
            id: id.to_string(),
            kind: d.kind.as_str().to_owned(),
            at_ms: d.at_ms,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisagreementJson {
    pub id: String,
    pub ring_hash: String,
    pub write_ring_hash: String,
}

fn pending(state: &AppState) -> BTreeMap<String, Pending> {
    state
        .local
        .hint_ledger()
        .all()
        .into_iter()
        .map(|(t, p)| (crate::cluster::NodeId(t).to_string(), p))
        .collect()
}

#[utoipa::path(
    get,
    path = "/cluster",
    tag = "cluster",
    responses((status = 200, description = "What this node knows of the cluster: members, rings, factors, hints, departures", body = ClusterJson)),
)]
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<ClusterJson> {
    let view = state.coord.view();
    let ownership = view.ring.ownership();
    let conf = state.coord.configured();
    let eff = state.coord.replication();
    let shares = view.ring.replica_share(eff.n);
    let members = view
        .members
        .values()
        .map(|m| MemberJson {
            id: m.id.to_string(),
            http_addr: m.http_addr.to_string(),
            rpc_addr: m.rpc_addr.to_string(),
            gossip_addr: m.gossip_addr.to_string(),
            live: view.is_healthy(m.id),
            state: m.state,
            vnodes: m.vnodes,
            ownership: ownership.get(&m.id).copied().unwrap_or(0.0),
            replica_share: shares.get(&m.id).copied().unwrap_or(0.0),
            to_move: m.to_move,
            // This node's own state from its writer, which gossip merely echoes.
            writable: if m.id == view.self_id {
                state.local.write_state().takes_writes()
            } else {
                m.writable
            },
        })
        .collect();
    Json(ClusterJson {
        node_id: view.self_id.to_string(),
        cluster_id: state.cluster_id.clone(),
        ring_hash: view.ring.hash_hex(),
        write_ring_hash: view.write_ring.hash_hex(),
        members,
        replication: Factors {
            n: conf.n,
            r: conf.r,
            w: conf.w,
        },
        effective: Factors {
            n: eff.n,
            r: eff.r,
            w: eff.w,
        },
        hints_pending: pending(&state)
            .into_iter()
            .map(|(t, p)| (t, p.into()))
            .collect(),
        departed: departed(&state).await,
        ring_agreement: view.disagreements.is_empty(),
        ring_disagreements: view
            .disagreements
            .iter()
            .map(|d| DisagreementJson {
                id: d.id.to_string(),
                ring_hash: format!("{:016x}", d.theirs.read),
                write_ring_hash: format!("{:016x}", d.theirs.write),
            })
            .collect(),
        rejoining: view.rejoining,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplicationJson<'a> {
    /// Per target node id.
    #[schema(value_type = BTreeMap<String, PendingJson>)]
    hints_pending: BTreeMap<String, Pending>,
    hints_pending_total: u64,
    /// Merges from peers stored although they left a key over the sibling cap.
    merges_over_sibling_cap: u64,
    #[serde(flatten)]
    #[schema(value_type = ReplicationStats)]
    stats: &'a ReplicationStats,
}

#[utoipa::path(
    get,
    path = "/debug/replication",
    tag = "debug",
    responses((status = 200, description = "What the replication machinery did: hints, repairs, anti-entropy, data movement", body = ReplicationJson)),
)]
pub async fn replication(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let hints_pending = pending(&state);
    let hints_pending_total = hints_pending.values().map(|p| p.count).sum();
    let body = ReplicationJson {
        hints_pending,
        hints_pending_total,
        merges_over_sibling_cap: state.local.storage_stats().merges_over_sibling_cap.get(),
        stats: &state.stats,
    };
    Json(serde_json::to_value(&body).unwrap_or_default())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreflistJson {
    key: String,
    position: String,
    /// The N replicas, in ring order.
    preference_list: Vec<String>,
    /// Every member clockwise from the key: stand-ins come from past the first N.
    walk: Vec<String>,
}

#[utoipa::path(
    get,
    path = "/debug/preflist/{key}",
    tag = "debug",
    params(super::openapi::KeyPath),
    responses(
        (status = 200, description = "The key's ring position, preference list and walk", body = PreflistJson),
        (status = 400, description = "`bad_key`", body = super::error::ErrorBody),
    ),
)]
pub async fn preflist(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Json<PreflistJson>, ApiError> {
    let key = key_from_uri(&uri, "/debug/preflist/")?;
    let view = state.coord.view();
    Ok(Json(PreflistJson {
        key: key.as_str().to_owned(),
        position: format!("{:016x}", key_position(key.as_bytes())),
        preference_list: state
            .coord
            .policy()
            .read_nodes(&view, key.as_bytes())
            .iter()
            .map(|id| id.to_string())
            .collect(),
        walk: view
            .ring
            .walk(key.as_bytes())
            .map(|id| id.to_string())
            .collect(),
    }))
}
