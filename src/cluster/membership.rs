//! Membership through chitchat gossip, behind a typed view.
//!
//! Membership is not liveness (docs/design.md §3): the ring is built from every member that
//! joined and was not removed, dead ones included, so a blip never moves data. The failure
//! detector (phi accrual) only decides who is *healthy*. A member leaves the view when
//! chitchat has held it dead for the dead-node grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::agreement::{Disagreement, PeerRing, Rejoin, RingHashes, SplitTracker};
use super::departed::{Departure, Departures};
use super::gossip_guard::{GossipGuard, GuardedSocket};
use super::persisted::Persisted;
use super::ring::Ring;
use super::supervise::{self, Current, GossipHealth, GossipPhase, Rebind, Respawn};
use super::NodeId;

/// The keys each node publishes. Kept here, behind [`Member`], so no other code reads
/// chitchat's strings.
pub const KEY_HTTP_ADDR: &str = "http_addr";
pub const KEY_RPC_ADDR: &str = "rpc_addr";
pub const KEY_STATE: &str = "state";
pub const KEY_VNODES: &str = "vnodes";
/// `removed:<node id>` = `removed,<ms>` or `left,<ms>`: the departed ids, published by
/// every node (see [`super::departed`]).
pub const KEY_REMOVED_PREFIX: &str = "removed:";
/// How much a joining or leaving node still has to move (ranges or keys), for status.
pub const KEY_TO_MOVE: &str = "to_move";
/// The hashes of this node's read and write rings (`<read>/<write>`, hex), so every node
/// can tell whether its peers route as it does (see `agreement`).
pub const KEY_RING: &str = "ring";
/// Consecutive gossip rounds a peer's ring may differ before it counts as a split: a
/// join or leave takes a few rounds to reach everyone, and each node gossips its hash one
/// round after it rebuilt its ring.
pub const SPLIT_AFTER_ROUNDS: u32 = 10;
/// Present, naming the reason (`no_space`, `fsync_failed`), while the node takes no writes;
/// absent while it does, so a node of an older build reads as writable.
pub const KEY_NO_WRITES: &str = "no_writes";
/// Rounds a gossip instance started again may take to hear of every member the view
/// holds before the view follows it anyway (a member may have gone for good meanwhile).
pub const CATCH_UP_ROUNDS: u32 = 60;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Takes writes for its future ranges while it pulls them; serves no reads yet.
    Joining,
    Normal,
    /// Hands its data to the future owners; still serves reads.
    Leaving,
    /// Gone: in neither ring.
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "joining" => Some(MemberState::Joining),
            "normal" => Some(MemberState::Normal),
            "leaving" => Some(MemberState::Leaving),
            "left" => Some(MemberState::Left),
            _ => None,
        }
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: NodeId,
    pub http_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub state: MemberState,
    pub live: bool,
    pub vnodes: u16,
    /// What a joining or leaving member still has to move.
    pub to_move: Option<u64>,
    /// Whether its storage takes writes (see `kv::writable`). A member that does not is
    /// a down replica for writes, and still serves reads.
    pub writable: bool,
}

/// What this node knows of the cluster at one moment. Cheap to clone (an `Arc`).
///
/// Two rings, as Garage keeps several layout versions while data moves: `ring` holds the
/// members that have the data (normal and leaving) and serves reads; `write_ring` holds
/// the members that will (normal and joining). Writes go to the owners in both. When no
/// member is joining or leaving they are the same ring.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub self_id: NodeId,
    pub members: BTreeMap<NodeId, Member>,
    /// Nodes gossip says are gone for good: they left, or an operator removed them. They
    /// are in no ring and not in `members`; unlike a node merely not heard of yet, they
    /// will not come back under this id.
    pub departed: BTreeSet<NodeId>,
    pub ring: Arc<Ring>,
    pub write_ring: Arc<Ring>,
    /// Restarted on a persisted membership and not yet confirmed by live peers: the node
    /// takes no KV request (see `agreement::Rejoin`).
    pub rejoining: bool,
    /// Live members whose gossiped ring has differed from this node's for more than
    /// [`SPLIT_AFTER_ROUNDS`] rounds.
    pub disagreements: Vec<Disagreement>,
}

impl ClusterView {
    /// Whether requests should go to `id` now. This node is always healthy to itself.
    pub fn is_healthy(&self, id: NodeId) -> bool {
        id == self.self_id || self.members.get(&id).is_some_and(|m| m.live)
    }

    /// Healthy, and its storage takes writes: a replica a write can go to.
    pub fn takes_writes(&self, id: NodeId) -> bool {
        self.is_healthy(id) && self.member(id).is_some_and(|m| m.writable)
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether data is moving (a member is joining or leaving).
    pub fn in_transition(&self) -> bool {
        self.ring.hash() != self.write_ring.hash()
    }

    /// A view of this node alone, before gossip has told it anything.
    pub fn alone(me: Member) -> Self {
        let ring = Arc::new(Ring::new([me.id], me.vnodes));
        ClusterView {
            self_id: me.id,
            members: BTreeMap::from([(me.id, me)]),
            departed: BTreeSet::new(),
            write_ring: ring.clone(),
            ring,
            rejoining: false,
            disagreements: Vec::new(),
        }
    }

    /// The view a node restarted on a persisted membership starts from: the members it
    /// had, none live but itself, and rejoining until its peers confirm the ring.
    pub fn rejoining(me: Member, persisted: &Persisted) -> Self {
        let mut members = persisted.members.clone();
        members.insert(me.id, me.clone());
        let (read, write) = ClusterView::rings(&members);
        ClusterView {
            self_id: me.id,
            members,
            departed: BTreeSet::new(),
            ring: Arc::new(read),
            write_ring: Arc::new(write),
            rejoining: true,
            disagreements: Vec::new(),
        }
    }

    /// This node's ring hashes, as it gossips them.
    pub fn ring_hashes(&self) -> RingHashes {
        RingHashes::of(&self.ring, &self.write_ring)
    }

    /// Whether any member holds data (normal or leaving). A joiner that has heard of no
    /// such member yet sees only joiners, itself at least, and its rings are a stand-in
    /// made of joiners.
    pub fn knows_holders(&self) -> bool {
        self.members
            .values()
            .any(|m| matches!(m.state, MemberState::Normal | MemberState::Leaving))
    }

    /// The two rings of a member set (see [`ClusterView`]), each member with the vnode
    /// count it gossips.
    pub fn rings(members: &BTreeMap<NodeId, Member>) -> (Ring, Ring) {
        rings_of(members.values().map(|m| (m.id, m.state, m.vnodes)))
    }
}

/// The read and write rings of a member set given as (id, state, vnodes): the one place
/// that decides which states each ring takes. The node builds its rings with it, and so
/// do the tools that check placement from `/cluster`, so the two cannot drift apart.
pub fn rings_of(members: impl IntoIterator<Item = (NodeId, MemberState, u16)>) -> (Ring, Ring) {
    let members: Vec<(NodeId, MemberState, u16)> = members.into_iter().collect();
    let with = |states: &[MemberState]| -> Vec<(NodeId, u16)> {
        members
            .iter()
            .filter(|(_, state, _)| states.contains(state))
            .map(|&(id, _, vnodes)| (id, vnodes))
            .collect()
    };
    let mut read = with(&[MemberState::Normal, MemberState::Leaving]);
    let mut write = with(&[MemberState::Normal, MemberState::Joining]);
    // A cluster of joiners only (all started at once) has no one to pull from: they
    // all hold nothing, so the joiners are the ring.
    if read.is_empty() {
        read = write.clone();
    }
    if write.is_empty() {
        write = read.clone();
    }
    (Ring::weighted(read), Ring::weighted(write))
}

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub cluster_id: String,
    pub me: Member,
    /// Where the gossip socket is bound (it was bound already; this is for chitchat).
    pub gossip_listen: SocketAddr,
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub dead_node_grace: Duration,
    pub phi_threshold: f64,
    /// Chitchat's generation: must grow across restarts of one node.
    pub generation: u64,
    /// The membership kept in the data dir, if any (see `persisted`).
    pub persisted: Option<Persisted>,
    /// The node was a member of a cluster before (it joined through seeds), whether or not
    /// its record names a peer: it may have been stopped before it could write one, and
    /// its data still belongs to that cluster's ring. It then waits for its peers' word
    /// before it serves, even with no record to start from.
    pub was_member: bool,
    /// Node ids gossip may track (`--max-gossip-members`, see `gossip_guard`).
    pub max_gossip_members: usize,
}

/// Hands chitchat a socket bound beforehand (see `Network::bind_gossip`).
struct PreboundTransport(Mutex<Option<Box<dyn Socket>>>);

#[async_trait]
impl Transport for PreboundTransport {
    async fn open(&self, _listen_addr: std::net::SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.0
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip socket lock poisoned"))?
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket was opened already"))
    }
}

/// Changes this node's published state; cheap to clone.
#[derive(Clone)]
pub struct MembershipCtl {
    /// The instance now: gossip may have been started again since (`supervise`).
    chitchat: Current,
}

impl MembershipCtl {
    /// Publishes this node's state (joining/normal/leaving/left).
    pub async fn set_state(&self, state: MemberState) {
        self.chitchat
            .get()
            .lock()
            .await
            .self_node_state()
            .set(KEY_STATE, state.as_str());
    }

    /// Publishes how much this node still has to move (shown by `ringkv status`).
    pub async fn set_to_move(&self, to_move: Option<u64>) {
        let chitchat = self.chitchat.get();
        let mut c = chitchat.lock().await;
        match to_move {
            Some(n) => c.self_node_state().set(KEY_TO_MOVE, n),
            None => c.self_node_state().delete(KEY_TO_MOVE),
        }
    }

    /// Publishes this node's copy of the departed ids (`removed:<id>` keys), and withdraws
    /// the ones the set no longer holds. Every node publishes the whole set, so a removal
    /// outlives the node that made it (see [`super::departed`]).
    pub async fn publish_departures(&self, departures: &Departures) {
        let chitchat = self.chitchat.get();
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        let stale: Vec<String> = state
            .key_values()
            .filter_map(|(k, _)| {
                let id: NodeId = k.strip_prefix(KEY_REMOVED_PREFIX)?.parse().ok()?;
                departures.get(id).is_none().then(|| k.to_owned())
            })
            .collect();
        for key in stale {
            state.delete(&key);
        }
        for (id, dep) in departures.iter() {
            state.set(format!("{KEY_REMOVED_PREFIX}{id}"), dep.encode());
        }
    }

    /// Every departure any node publishes, as this node has heard them (ids that do not
    /// parse are skipped; times are clamped to `now_ms`).
    pub async fn heard_departures(&self, now_ms: u64) -> Vec<(NodeId, Departure)> {
        let chitchat = self.chitchat.get();
        let c = chitchat.lock().await;
        c.node_states()
            .values()
            .flat_map(|s| s.key_values())
            .filter_map(|(k, v)| {
                let id = k.strip_prefix(KEY_REMOVED_PREFIX)?.parse().ok()?;
                Some((id, Departure::decode(v, now_ms)?))
            })
            .collect()
    }

    /// Publishes whether this node's storage takes writes.
    pub async fn set_write_state(&self, state: crate::kv::writable::WriteState) {
        let chitchat = self.chitchat.get();
        let mut c = chitchat.lock().await;
        if state.takes_writes() {
            c.self_node_state().delete(KEY_NO_WRITES);
        } else {
            c.self_node_state().set(KEY_NO_WRITES, state.as_str());
        }
    }
}

pub struct Membership {
    current: Current,
    view: watch::Receiver<Arc<ClusterView>>,
    refresher: tokio::task::JoinHandle<()>,
    /// Watches chitchat's task and starts it again when it ends (`supervise::keep`).
    keeper: tokio::task::JoinHandle<()>,
    keeper_stop: CancellationToken,
    health: Arc<GossipHealth>,
    guard: Arc<GossipGuard>,
}

/// chitchat's settings for this node under `generation`, gossiping to `seeds`.
fn chitchat_config(
    config: &MembershipConfig,
    generation: u64,
    seeds: Vec<String>,
) -> ChitchatConfig {
    let me = &config.me;
    ChitchatConfig {
        chitchat_id: ChitchatId::new(me.id.to_string(), generation, me.gossip_addr),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: config.gossip_interval,
        listen_addr: config.gossip_listen,
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            // Heartbeats come once per gossip round; anything far beyond that is an
            // outage, not a sample of the interval distribution.
            max_interval: config.gossip_interval * 10,
            initial_interval: config.gossip_interval * 5,
            dead_node_grace_period: config.dead_node_grace,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        // Every ringkv release gossips with chitchat 0.13+, which decodes the compressed V1
        // digest; a mixed-version cluster would need V0 here during the upgrade.
        protocol_version: chitchat::ProtocolVersion::V1,
    }
}

/// Starts chitchat again for `supervise::keep`: seeded with the configured seeds and
/// every member the view holds, so that the new instance finds its peers even when this
/// node was given no seeds (the first node of its cluster).
struct Restart {
    config: MembershipConfig,
    view: watch::Receiver<Arc<ClusterView>>,
    guard: Arc<GossipGuard>,
}

impl Respawn for Restart {
    async fn spawn(
        &self,
        keys: Vec<(String, String)>,
        socket: Box<dyn Socket>,
        generation: u64,
    ) -> anyhow::Result<ChitchatHandle> {
        let mut seeds = self.config.seeds.clone();
        {
            let view = self.view.borrow();
            seeds.extend(
                view.members
                    .values()
                    .filter(|m| m.id != view.self_id)
                    .map(|m| m.gossip_addr.to_string()),
            );
        }
        let socket = Box::new(GuardedSocket::new(socket, self.guard.clone()));
        let transport = PreboundTransport(Mutex::new(Some(socket)));
        spawn_chitchat(
            chitchat_config(&self.config, generation, seeds),
            keys,
            &transport,
        )
        .await
    }
}

#[derive(Debug, thiserror::Error)]
#[error("starting gossip: {0:#}")]
pub struct MembershipError(anyhow::Error);

impl Membership {
    /// Gossip that is not started again when its task ends (a node that only asks its
    /// peers whether it was removed, and stops).
    pub async fn start(
        config: MembershipConfig,
        socket: Box<dyn Socket>,
        shutdown: CancellationToken,
    ) -> Result<Self, MembershipError> {
        Self::start_supervised(config, socket, None, shutdown).await
    }

    /// Starts gossip on `socket`; when chitchat's task ends, `rebind` gives a new socket
    /// on the same address and it is started again (see `supervise`).
    pub async fn start_supervised(
        config: MembershipConfig,
        socket: Box<dyn Socket>,
        rebind: Option<Rebind>,
        shutdown: CancellationToken,
    ) -> Result<Self, MembershipError> {
        let me = config.me.clone();
        let initial = vec![
            (KEY_HTTP_ADDR.to_owned(), me.http_addr.to_string()),
            (KEY_RPC_ADDR.to_owned(), me.rpc_addr.to_string()),
            (KEY_STATE.to_owned(), me.state.as_str().to_owned()),
            (KEY_VNODES.to_owned(), me.vnodes.to_string()),
        ];
        let guard = Arc::new(GossipGuard::new(config.max_gossip_members));
        let socket = Box::new(GuardedSocket::new(socket, guard.clone()));
        let transport = PreboundTransport(Mutex::new(Some(socket)));
        let chitchat_config = chitchat_config(&config, config.generation, config.seeds.clone());
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(MembershipError)?;
        let current = Current::new(handle.chitchat());
        let health = Arc::new(GossipHealth::new(guard.clone()));
        let (initial, gate) = initial_view(&me, config.persisted.as_ref(), config.was_member);
        let (tx, view) = watch::channel(Arc::new(initial));
        let refresher = tokio::spawn(refresh(
            current.clone(),
            health.clone(),
            guard.clone(),
            me,
            config.gossip_interval,
            tx,
            Agreement {
                gate,
                split: SplitTracker::new(SPLIT_AFTER_ROUNDS),
                published: None,
            },
            shutdown,
        ));
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(supervise::keep(
            handle,
            config.generation,
            current.clone(),
            Restart {
                config,
                view: view.clone(),
                guard: guard.clone(),
            },
            rebind,
            health.clone(),
            keeper_stop.clone(),
        ));
        Ok(Membership {
            current,
            view,
            refresher,
            keeper,
            keeper_stop,
            health,
            guard,
        })
    }

    /// Whether gossip runs, and how often it was started again.
    pub fn health(&self) -> Arc<GossipHealth> {
        self.health.clone()
    }

    /// The bound on the ids gossip tracks, and what it dropped.
    pub fn guard(&self) -> Arc<GossipGuard> {
        self.guard.clone()
    }

    /// The latest view, and a way to wait for changes.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    pub fn control(&self) -> MembershipCtl {
        MembershipCtl {
            chitchat: self.current.clone(),
        }
    }

    pub async fn shutdown(self) {
        self.refresher.abort();
        let _ = self.refresher.await;
        // The keeper shuts the instance that runs now down, whichever it is.
        self.keeper_stop.cancel();
        let _ = self.keeper.await;
    }
}

/// The first view, and the rejoin gate: a record naming peers means the node had a ring,
/// and it starts from it, rejoining; otherwise it starts alone, as a new node does.
fn initial_view(
    me: &Member,
    persisted: Option<&Persisted>,
    was_member: bool,
) -> (ClusterView, Rejoin) {
    match persisted {
        Some(p) if p.has_peers(me.id) => {
            tracing::info!(
                members = p.members.len(),
                "starting from the persisted membership; rejoining until peers confirm the ring"
            );
            let view = ClusterView::rejoining(me.clone(), p);
            (view, Rejoin::closed(p.members.clone()))
        }
        // Killed within a moment of joining, before its record named a peer: it has no
        // ring to start from, but must not serve as "a cluster of myself" either.
        _ if was_member => {
            tracing::info!("no persisted peers; rejoining until peers confirm the ring");
            let view = ClusterView::rejoining(me.clone(), &Persisted::default());
            (view, Rejoin::awaiting())
        }
        _ => (ClusterView::alone(me.clone()), Rejoin::open()),
    }
}

/// The refresher's ring-agreement state (see `agreement`).
struct Agreement {
    gate: Rejoin,
    split: SplitTracker,
    /// The ring hashes this node gossips now.
    published: Option<RingHashes>,
}

/// The ring each peer gossips, newest generation of each node id.
fn collect_rings(
    states: &BTreeMap<ChitchatId, NodeState>,
    live: &BTreeSet<&ChitchatId>,
) -> BTreeMap<NodeId, PeerRing> {
    let mut newest: BTreeMap<NodeId, (u64, PeerRing)> = BTreeMap::new();
    for (cid, state) in states {
        let Ok(id) = cid.node_id.parse::<NodeId>() else {
            continue;
        };
        let ring = PeerRing {
            live: live.contains(cid),
            hashes: state.get(KEY_RING).and_then(RingHashes::parse),
        };
        match newest.get(&id) {
            Some((generation, _)) if *generation >= cid.generation_id => {}
            _ => {
                newest.insert(id, (cid.generation_id, ring));
            }
        }
    }
    newest.into_iter().map(|(id, (_, r))| (id, r)).collect()
}

/// Rebuilds the view from chitchat's state once per gossip round, and publishes it when
/// something changed. Polling (rather than chitchat's live-nodes watch) also notices
/// members that went dead and members that published new keys.
#[allow(clippy::too_many_arguments)]
async fn refresh(
    current: Current,
    health: Arc<GossipHealth>,
    guard: Arc<GossipGuard>,
    me: Member,
    interval: Duration,
    tx: watch::Sender<Arc<ClusterView>>,
    mut agreement: Agreement,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut catching_up = 0u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let chitchat = current.get();
        let (mut members, departed, peer_rings, tracked) = {
            let c = chitchat.lock().await;
            let live: BTreeSet<&ChitchatId> = c.live_nodes().collect();
            let leaving: BTreeSet<&ChitchatId> = c.scheduled_for_deletion_nodes().collect();
            let (members, departed) = collect_members(c.node_states(), &live, &leaving, &me);
            let tracked = c.node_states().len();
            (
                members,
                departed,
                collect_rings(c.node_states(), &live),
                (tracked, state_bytes(c.node_states())),
            )
        };
        let (tracked, tracked_bytes) = tracked;
        let addrs = tx
            .borrow()
            .members
            .values()
            .map(|m| m.gossip_addr)
            .collect();
        if health.is_running() && guard.round(tracked, tracked_bytes, addrs) {
            health.request_restart();
            continue;
        }
        // While gossip is down, or started again and still learning its peers, the view
        // stays as it was (see `GossipPhase::CatchingUp`).
        match health.phase() {
            GossipPhase::Running => catching_up = 0,
            GossipPhase::Down => continue,
            GossipPhase::CatchingUp => {
                catching_up += 1;
                let known = tx
                    .borrow()
                    .members
                    .keys()
                    .all(|id| members.contains_key(id));
                if !known && catching_up < CATCH_UP_ROUNDS {
                    continue;
                }
                tracing::info!(
                    rounds = catching_up,
                    all_known = known,
                    "gossip caught up with its peers"
                );
                health.set(GossipPhase::Running);
                // The new instance publishes no ring hash until this node sets it.
                agreement.published = None;
            }
        }
        if agreement
            .gate
            .round(me.id, &mut members, &departed, &peer_rings)
        {
            tracing::info!("live peers confirm the ring; rejoined, serving");
        }
        let rejoining = agreement.gate.rejoining();
        let current = tx.borrow().clone();
        let mine = if current.members == members {
            current.ring_hashes()
        } else {
            let (read, write) = ClusterView::rings(&members);
            RingHashes::of(&read, &write)
        };
        let disagreements = agreement.split.round(me.id, mine, &peer_rings);
        if agreement.published != Some(mine) {
            chitchat
                .lock()
                .await
                .self_node_state()
                .set(KEY_RING, mine.to_string());
            agreement.published = Some(mine);
        }
        if current.members == members
            && current.departed == departed
            && current.rejoining == rejoining
            && current.disagreements == disagreements
        {
            continue;
        }
        let (read, write) = ClusterView::rings(&members);
        let same = |old: &Arc<Ring>, new: Ring| {
            if old.hash() == new.hash() {
                old.clone()
            } else {
                Arc::new(new)
            }
        };
        let ring = same(&current.ring, read);
        let write_ring = same(&current.write_ring, write);
        if ring.hash() != current.ring.hash() || write_ring.hash() != current.write_ring.hash() {
            tracing::info!(
                members = members.len(),
                ring = %ring.hash_hex(),
                write_ring = %write_ring.hash_hex(),
                "membership changed; rings rebuilt"
            );
            tracing::debug!(
                me = %me.id,
                members = ?members.values().map(|m| (m.id.to_string(), m.state.as_str(), m.live)).collect::<Vec<_>>(),
                departed = ?departed,
                "members"
            );
        }
        for (id, m) in &members {
            if let Some(old) = current.members.get(id) {
                if old.live != m.live {
                    tracing::info!(node = %id, live = m.live, "member health changed");
                }
            }
        }
        let _ = tx.send(Arc::new(ClusterView {
            self_id: me.id,
            members,
            departed,
            ring,
            write_ring,
            rejoining,
            disagreements,
        }));
    }
}

/// One member per node id: a restarted node has a new chitchat generation, and only the
/// newest one counts. Also returns the ids that departed (see [`ClusterView::departed`]).
/// The bytes of every key and value chitchat holds, deleted ones included (they are kept
/// until their grace passes): what `gossip_guard` bounds besides the id count.
fn state_bytes(states: &BTreeMap<ChitchatId, NodeState>) -> usize {
    states
        .values()
        .flat_map(|s| s.key_values_including_deleted())
        .fold(0usize, |sum, (k, v)| {
            sum.saturating_add(k.len()).saturating_add(v.value.len())
        })
}

fn collect_members(
    states: &BTreeMap<ChitchatId, NodeState>,
    live: &BTreeSet<&ChitchatId>,
    deleted: &BTreeSet<&ChitchatId>,
    me: &Member,
) -> (BTreeMap<NodeId, Member>, BTreeSet<NodeId>) {
    let removed: BTreeSet<NodeId> = states
        .values()
        .flat_map(|s| s.key_values())
        .filter_map(|(k, _)| k.strip_prefix(KEY_REMOVED_PREFIX)?.parse().ok())
        .collect();
    let mut newest: BTreeMap<NodeId, (u64, Member)> = BTreeMap::new();
    for (cid, state) in states {
        if deleted.contains(cid) {
            continue;
        }
        let Ok(id) = cid.node_id.parse::<NodeId>() else {
            continue;
        };
        let to_move = state.get(KEY_TO_MOVE).and_then(|v| v.parse().ok());
        let writable = state.get(KEY_NO_WRITES).is_none();
        let member = if id == me.id {
            let mut m = me.clone();
            if let Some(s) = state.get(KEY_STATE).and_then(MemberState::parse) {
                m.state = s;
            }
            m.live = true;
            m.to_move = to_move;
            m.writable = writable;
            m
        } else {
            let (Some(http), Some(rpc), Some(vnodes), Some(member_state)) = (
                state.get(KEY_HTTP_ADDR).and_then(|a| a.parse().ok()),
                state.get(KEY_RPC_ADDR).and_then(|a| a.parse().ok()),
                state.get(KEY_VNODES).and_then(|v| v.parse().ok()),
                state.get(KEY_STATE).and_then(MemberState::parse),
            ) else {
                // Not fully published yet (a delta can carry part of a node's keys): not
                // a member until it is. A default would be a guess, and nodes guessing
                // apart build different rings; a guessed "normal" for a node that left
                // would bring it back.
                continue;
            };
            Member {
                id,
                http_addr: http,
                rpc_addr: rpc,
                gossip_addr: cid.gossip_advertise_addr,
                state: member_state,
                live: live.contains(cid),
                vnodes,
                to_move,
                writable,
            }
        };
        match newest.get(&id) {
            Some((generation, _)) if *generation >= cid.generation_id => {}
            _ => {
                newest.insert(id, (cid.generation_id, member));
            }
        }
    }
    newest.insert(
        me.id,
        (
            u64::MAX,
            newest
                .get(&me.id)
                .map_or_else(|| me.clone(), |(_, m)| m.clone()),
        ),
    );
    // A member that left, or that an operator removed, is in no ring. This node stays in
    // its own view while it runs, so it can finish leaving.
    let (members, gone): (BTreeMap<_, _>, BTreeMap<_, _>) = newest
        .into_iter()
        .map(|(id, (_, m))| (id, m))
        .partition(|(id, m)| {
            *id == me.id || (m.state != MemberState::Left && !removed.contains(id))
        });
    let mut departed = removed;
    departed.extend(gone.into_keys());
    departed.remove(&me.id);
    (members, departed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Joining),
            Just(MemberState::Normal),
            Just(MemberState::Leaving),
            Just(MemberState::Left),
        ]
    }

    fn ids(ring: &Ring) -> BTreeSet<NodeId> {
        ring.members().iter().copied().collect()
    }

    /// One node's gossiped state in a generated run of [`collect_members`].
    #[derive(Clone, Debug)]
    struct Entry {
        id: u64,
        generation: u64,
        state: MemberState,
        vnodes: u16,
        live: bool,
        /// Scheduled for deletion by chitchat.
        deleted: bool,
        /// Which of the four required keys it has not published yet, if any.
        missing: Option<usize>,
        no_writes: bool,
        to_move: Option<u64>,
        /// The ids it publishes as departed (`removed:<id>`).
        removes: Vec<u64>,
    }

    const ME: NodeId = NodeId(1);

    fn addr(port: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap_or(u16::MAX)))
    }

    fn me() -> Member {
        Member {
            id: ME,
            http_addr: addr(1001),
            rpc_addr: addr(2001),
            gossip_addr: addr(3001),
            state: MemberState::Joining,
            live: true,
            vnodes: 8,
            to_move: None,
            writable: true,
        }
    }

    fn entry(generations: std::ops::Range<u64>) -> impl Strategy<Value = Entry> {
        (
            (1u64..7, generations, state(), 1u16..9, any::<bool>()),
            (
                proptest::bool::weighted(0.15),
                proptest::option::weighted(0.2, 0usize..4),
                any::<bool>(),
                proptest::option::of(0u64..50),
                proptest::collection::vec(1u64..9, 0..2),
            ),
        )
            .prop_map(
                |(
                    (id, generation, state, vnodes, live),
                    (deleted, missing, no_writes, to_move, removes),
                )| Entry {
                    id,
                    generation,
                    state,
                    vnodes,
                    live,
                    deleted,
                    missing,
                    no_writes,
                    to_move,
                    removes,
                },
            )
    }

    fn chitchat_id(node_id: String, e: &Entry) -> ChitchatId {
        ChitchatId::new(node_id, e.generation, addr(3000 + e.id * 10 + e.generation))
    }

    fn node_state(e: &Entry) -> NodeState {
        let mut s = NodeState::for_test();
        let required = [
            (KEY_HTTP_ADDR, addr(1000 + e.id).to_string()),
            (KEY_RPC_ADDR, addr(2000 + e.id).to_string()),
            (KEY_VNODES, e.vnodes.to_string()),
            (KEY_STATE, e.state.as_str().to_owned()),
        ];
        for (i, (k, v)) in required.into_iter().enumerate() {
            if e.missing != Some(i) {
                s.set(k, v);
            }
        }
        if e.no_writes {
            s.set(KEY_NO_WRITES, "no_space");
        }
        if let Some(n) = e.to_move {
            s.set(KEY_TO_MOVE, n);
        }
        for id in &e.removes {
            s.set(format!("{KEY_REMOVED_PREFIX}{}", NodeId(*id)), "removed,5");
        }
        s
    }

    /// Runs `collect_members` over the entries, each under its node id string.
    fn collect(entries: &[(String, Entry)]) -> (BTreeMap<NodeId, Member>, BTreeSet<NodeId>) {
        let states: BTreeMap<ChitchatId, NodeState> = entries
            .iter()
            .map(|(node_id, e)| (chitchat_id(node_id.clone(), e), node_state(e)))
            .collect();
        let flagged = |flag: fn(&Entry) -> bool| -> BTreeSet<&ChitchatId> {
            states
                .keys()
                .filter(|cid| {
                    entries
                        .iter()
                        .any(|(id, e)| flag(e) && chitchat_id(id.clone(), e) == **cid)
                })
                .collect()
        };
        let live = flagged(|e| e.live);
        let deleted = flagged(|e| e.deleted);
        collect_members(&states, &live, &deleted, &me())
    }

    /// Entries keyed by (id, generation), so no two share a chitchat id.
    fn entries(generations: std::ops::Range<u64>) -> impl Strategy<Value = Vec<(String, Entry)>> {
        proptest::collection::vec(entry(generations), 0..12).prop_map(|es| {
            let unique: BTreeMap<(u64, u64), Entry> =
                es.into_iter().map(|e| ((e.id, e.generation), e)).collect();
            unique
                .into_values()
                .map(|e| (NodeId(e.id).to_string(), e))
                .collect()
        })
    }

    fn published(e: &Entry) -> bool {
        !e.deleted && e.missing.is_none()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// This node is always a live member and never departed. Any other member comes
        /// from its newest fully published, not deleted generation, field for field; is
        /// not left and not removed. A node with such a generation is a member or
        /// departed, never silently dropped; and every removed id is departed.
        #[test]
        fn collect_members_keeps_the_newest_published_generation(entries in entries(0..4)) {
            let (members, departed) = collect(&entries);
            let mine = members.get(&ME);
            prop_assert!(mine.is_some_and(|m| m.live), "{:?}", mine);
            prop_assert!(!departed.contains(&ME));
            prop_assert!(members.keys().all(|id| !departed.contains(id)));
            let removed: BTreeSet<NodeId> =
                entries.iter().flat_map(|(_, e)| e.removes.iter().map(|r| NodeId(*r))).collect();
            for id in &removed {
                prop_assert!(*id == ME || departed.contains(id));
            }
            let ids: BTreeSet<u64> = entries.iter().map(|(_, e)| e.id).collect();
            for id in ids.into_iter().filter(|id| NodeId(*id) != ME) {
                let newest = entries
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| e.id == id && published(e))
                    .max_by_key(|e| e.generation);
                let got = members.get(&NodeId(id));
                match newest {
                    None => prop_assert!(got.is_none(), "{:?}", got),
                    Some(e) if e.state == MemberState::Left || removed.contains(&NodeId(id)) => {
                        prop_assert!(got.is_none());
                        prop_assert!(departed.contains(&NodeId(id)));
                    }
                    Some(e) => {
                        let want = Member {
                            id: NodeId(id),
                            http_addr: addr(1000 + id),
                            rpc_addr: addr(2000 + id),
                            gossip_addr: addr(3000 + id * 10 + e.generation),
                            state: e.state,
                            live: e.live,
                            vnodes: e.vnodes,
                            to_move: e.to_move,
                            writable: !e.no_writes,
                        };
                        prop_assert_eq!(got, Some(&want));
                    }
                }
            }
        }

        /// What cannot be trusted or is stale changes nothing: a state under an id that
        /// does not parse, a node that has not published all its keys yet, one chitchat
        /// deletes, or an older generation of a node whose newer one is published.
        #[test]
        fn collect_members_ignores_malformed_partial_deleted_and_stale_states(
            base in entries(1..4),
            noise in entry(0..1),
            kind in 0usize..4,
            missing in 0usize..4,
        ) {
            let mut noise = Entry { removes: Vec::new(), ..noise };
            let node_id = match kind {
                0 => "not-a-node-id".to_owned(),
                1 => { noise.missing = Some(missing); NodeId(noise.id).to_string() }
                2 => { noise.deleted = true; NodeId(noise.id).to_string() }
                _ => {
                    // Older than a published generation of the same node.
                    let newer = base.iter().any(|(_, e)| e.id == noise.id && published(e));
                    prop_assume!(newer);
                    NodeId(noise.id).to_string()
                }
            };
            prop_assume!(NodeId(noise.id) != ME || kind == 0 || kind == 2);
            let mut noisy = base.clone();
            noisy.push((node_id, noise));
            prop_assert_eq!(collect(&noisy), collect(&base));
        }

        /// Reads go to the holders (normal, leaving), writes to normal and joining; a side
        /// with nobody takes the other side's members; a departed member is in neither;
        /// the order the members come in does not matter.
        #[test]
        fn rings_of_takes_each_state_to_its_rings(
            members in proptest::collection::btree_map(1u64..64, (state(), 1u16..16), 0..10),
        ) {
            let list: Vec<(NodeId, MemberState, u16)> =
                members.iter().map(|(&id, &(s, v))| (NodeId(id), s, v)).collect();
            let (read, write) = rings_of(list.iter().copied());
            let with = |states: &[MemberState]| -> BTreeSet<NodeId> {
                list.iter().filter(|m| states.contains(&m.1)).map(|m| m.0).collect()
            };
            let holders = with(&[MemberState::Normal, MemberState::Leaving]);
            let writers = with(&[MemberState::Normal, MemberState::Joining]);
            let want_read = if holders.is_empty() { writers.clone() } else { holders };
            let want_write = if writers.is_empty() { want_read.clone() } else { writers };
            prop_assert_eq!(ids(&read), want_read);
            prop_assert_eq!(ids(&write), want_write);
            let (r2, w2) = rings_of(list.iter().rev().copied());
            prop_assert_eq!(r2.hash(), read.hash());
            prop_assert_eq!(w2.hash(), write.hash());
        }
    }
}
