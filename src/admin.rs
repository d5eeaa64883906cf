//! Membership changes an operator asks for, and the tasks that carry them out: joining
//! (pull every future range, then turn normal), leaving (hand everything off, then leave
//! the ring and exit), removing a dead member, and keeping the departed ids (every node
//! gossips and stores them; a node that hears it was removed stops serving).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::antientropy::AntiEntropy;
use crate::cluster::departed::{Departure, DepartureKind, Departures};
use crate::cluster::membership::{MemberState, MembershipCtl};
use crate::cluster::wait::wait_for;
use crate::cluster::NodeId;
use crate::identity::Identity;
use crate::peers::Peers;
use crate::readiness::{Readiness, REMOVED_MESSAGE};
use crate::rpc::{Request, Response};
use crate::store::Store;
use crate::worker::Worker;

/// How long a node that left waits for its live peers to see it gone (see
/// `Admin::wait_for_peers_to_see_the_leave`).
const LEFT_CONFIRM_LIMIT: Duration = Duration::from_secs(30);

/// Between two tries of a join's pull or a leave's handoff that left work undone: long
/// enough for the failure detector or the peer to change its mind, short enough that a
/// join or leave does not stall on one slow peer.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

pub struct Admin {
    pub ctl: MembershipCtl,
    pub peers: Peers,
    /// Pulls a joining node's ranges, and hands a leaving node's keys to their owners.
    pub ae: AntiEntropy,
    pub store: Arc<dyn Store>,
    /// Cancelled to stop the whole node (after a leave).
    pub node_shutdown: CancellationToken,
    pub gossip_interval: Duration,
    leaving: AtomicBool,
    /// Wakes the leave worker once an operator asked this node to leave.
    leave_requested: Notify,
    /// What the join and the leave are doing, for `/debug/workers`.
    join_status: Mutex<&'static str>,
    leave_status: Mutex<String>,
    /// Held while this node's own state changes (joining → normal, → leaving), so that a
    /// leave that starts while the join is finishing cannot be overwritten by "normal".
    transition: tokio::sync::Mutex<()>,
    /// This node's copy of the departed ids. A tokio mutex: it is held while the set is
    /// saved and published, so a removal and the keeper's round cannot interleave.
    departures: tokio::sync::Mutex<Departures>,
    /// Fenced through this when the cluster removed this node.
    readiness: Arc<Readiness>,
    /// Whether this node was given seeds other than itself: then it knows it was not
    /// removed only once it has heard from another node.
    needs_peer: bool,
}

impl Admin {
    pub fn new(
        ctl: MembershipCtl,
        peers: Peers,
        ae: AntiEntropy,
        store: Arc<dyn Store>,
        node_shutdown: CancellationToken,
        gossip_interval: Duration,
    ) -> Self {
        Admin {
            ctl,
            peers,
            ae,
            store,
            node_shutdown,
            gossip_interval,
            leaving: AtomicBool::new(false),
            leave_requested: Notify::new(),
            join_status: Mutex::new("not started"),
            leave_status: Mutex::new("not asked to leave".to_owned()),
            transition: tokio::sync::Mutex::new(()),
            departures: tokio::sync::Mutex::new(Departures::default()),
            readiness: Arc::new(Readiness::default()),
            needs_peer: false,
        }
    }

    /// Starts from the departed ids kept on disk, and fences through `readiness`.
    /// `needs_peer`: the node has seeds other than itself.
    pub fn with_departures(
        mut self,
        departures: Departures,
        readiness: Arc<Readiness>,
        needs_peer: bool,
    ) -> Self {
        self.departures = tokio::sync::Mutex::new(departures);
        self.readiness = readiness;
        self.needs_peer = needs_peer;
        self
    }

    fn set_join_status(&self, status: &'static str) {
        if let Ok(mut s) = self.join_status.lock() {
            *s = status;
        }
    }

    fn set_leave_status(&self, status: impl Into<String>) {
        if let Ok(mut s) = self.leave_status.lock() {
            *s = status.into();
        }
    }

    /// Joins: waits for a normal member to pull from, pulls every range this node will
    /// own, then turns normal. Until then it takes writes for those ranges (it is in the
    /// write ring) but serves no reads. Stops on `shutdown`.
    pub async fn join(&self, shutdown: &CancellationToken) {
        self.set_join_status("waiting for a live member to pull from");
        let mut view = self.peers.view.clone();
        let source = wait_for(
            &mut view,
            |v| {
                // A source to pull from must be live, not only known: the failure
                // detector needs a few gossip rounds to call a new peer live.
                v.ring
                    .members()
                    .iter()
                    .any(|id| *id != v.self_id && v.is_healthy(*id))
                    && v.write_ring.contains(v.self_id)
            },
            shutdown,
        )
        .await;
        if source.is_none() {
            return;
        }
        tracing::info!("joining: pulling this node's ranges from their owners");
        self.set_join_status("pulling this node's ranges");
        let started = tokio::time::Instant::now();
        loop {
            let failed = self.ae.sync_all(true, shutdown, Some(&self.ctl)).await;
            if shutdown.is_cancelled() || self.leaving.load(Ordering::Acquire) {
                return;
            }
            if failed == 0 {
                break;
            }
            tracing::warn!(failed, "some ranges could not be pulled yet; retrying");
            self.set_join_status("pulling this node's ranges; retrying some");
            self.ctl.set_to_move(Some(failed as u64)).await;
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let _transition = self.transition.lock().await;
        if self.leaving.load(Ordering::Acquire) {
            // Turning normal now would undo the leave's "leaving" or "left".
            tracing::info!("a leave began before the join finished; not turning normal");
            self.set_join_status("gave way to a leave");
            return;
        }
        if let Err(e) = Identity::mark_joined(self.store.as_ref()) {
            tracing::error!(error = %e, "could not record the join");
        }
        self.ctl.set_to_move(None).await;
        self.ctl.set_state(MemberState::Normal).await;
        self.set_join_status("joined: normal");
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            keys_pulled = self.ae.stats.ae_keys_pulled.get(),
            "joined: normal"
        );
    }

    /// Asks this node to leave: the leave worker hands every key to its owners in the
    /// ring without this node, then leaves the ring and stops the node. Returns false if
    /// a leave is already under way.
    pub fn start_leave(&self) -> bool {
        if self.leaving.swap(true, Ordering::AcqRel) {
            return false;
        }
        // A permit is kept if the worker is not waiting yet: the request is not lost.
        self.leave_requested.notify_one();
        true
    }

    async fn leave(&self, shutdown: &CancellationToken) {
        // `leaving` is set already (`start_leave`): a join finishing after this point
        // sees it under the same lock and stays out of the way.
        let transition = self.transition.lock().await;
        self.ctl.set_state(MemberState::Leaving).await;
        drop(transition);
        // Wait until this node's own view has it leaving, so moving its keys targets
        // the ring without it.
        self.set_leave_status("waiting for its own view to show it leaving");
        let mut view = self.peers.view.clone();
        if wait_for(&mut view, |v| !v.write_ring.contains(v.self_id), shutdown)
            .await
            .is_none()
        {
            return;
        }
        tracing::info!("leaving: handing this node's data to the remaining owners");
        loop {
            let remaining = self.ae.move_unowned(shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            self.set_leave_status(format!("moving data: {remaining} key(s) remaining"));
            self.ctl.set_to_move(Some(remaining)).await;
            if remaining == 0 {
                break;
            }
            tracing::info!(remaining, "keys still to hand off; retrying");
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        self.ctl.set_to_move(None).await;
        // Durably first: a restart on this data dir must never serve its stale copy.
        if let Err(e) = Identity::mark_left(self.store.as_ref()) {
            tracing::error!(error = %e, "could not record the leave; staying");
            self.set_leave_status("could not record the leave; staying");
            return;
        }
        self.ctl.set_state(MemberState::Left).await;
        self.set_leave_status("left; waiting for peers to hear it");
        self.wait_for_peers_to_see_the_leave(shutdown).await;
        tracing::info!("left the cluster; stopping");
        self.set_leave_status("left");
        self.node_shutdown.cancel();
    }

    /// Keeps gossiping "left" until every live peer says it has heard this node departed,
    /// for at most `LEFT_CONFIRM_LIMIT`. Stopping after a fixed number of rounds is not
    /// enough on a slow or lossy network: a peer that never heard "left" keeps this node
    /// as a dead leaving member, in its read ring and its hint targets, until an operator
    /// removes it. A peer that is down now hears it later from the others.
    async fn wait_for_peers_to_see_the_leave(&self, shutdown: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + LEFT_CONFIRM_LIMIT;
        loop {
            let view = self.peers.view();
            let me = view.self_id;
            let peers: Vec<_> = view
                .members
                .values()
                .filter(|m| m.id != me && m.live && m.state != MemberState::Left)
                .map(|m| (m.id, m.rpc_addr))
                .collect();
            let asks = peers.iter().map(|&(id, addr)| async move {
                let r = self
                    .peers
                    .call(addr, Request::Departed { node: me.0 })
                    .await;
                (id, matches!(r, Ok(Response::Departed(true))))
            });
            let unaware: Vec<NodeId> = tokio::select! {
                asked = futures::future::join_all(asks) => asked
                    .into_iter()
                    .filter(|(_, seen)| !seen)
                    .map(|(id, _)| id)
                    .collect(),
                _ = shutdown.cancelled() => return,
            };
            if unaware.is_empty() {
                tracing::debug!(
                    peers = peers.len(),
                    "every live peer has heard this node departed"
                );
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    ?unaware,
                    "peers have not heard this node left; stopping anyway"
                );
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.gossip_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes `id` out of the ring for good, on an operator's word: the removal is stored
    /// here first, then gossiped; every node that hears it keeps and gossips it too.
    /// Whether `id` may be removed (not live, or forced) is the caller's check.
    pub async fn remove(&self, id: NodeId, forced: bool) -> Result<(), crate::store::StoreError> {
        tracing::warn!(node = %id, forced, "removing a member on an operator's request");
        let mut departures = self.departures.lock().await;
        let dep = Departure {
            kind: DepartureKind::Removed,
            at_ms: self.peers.clock.now_ms(),
        };
        if departures.insert(id, dep) {
            departures.save(self.store.as_ref())?;
        }
        self.ctl.publish_departures(&departures).await;
        Ok(())
    }

    /// A copy of the departed ids this node keeps and gossips.
    pub async fn departures(&self) -> Departures {
        self.departures.lock().await.clone()
    }

    /// Once per gossip round: takes in the departures any node gossips (and the members
    /// gossip shows left), stores and republishes the set when it grew, and fences this
    /// node if it was removed. Stops on `shutdown`.
    pub async fn keep_departures(&self, shutdown: &CancellationToken) {
        self.ctl
            .publish_departures(&*self.departures.lock().await)
            .await;
        let mut ticker = tokio::time::interval(self.gossip_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.departures_round().await;
        }
    }

    async fn departures_round(&self) {
        let now_ms = self.peers.clock.now_ms();
        // The view first: every node it shows has had its gossip state read by the time
        // `heard` is taken, so "heard from a peer, and not removed" cannot be decided on
        // a peer's state that came in between.
        let view = self.peers.view();
        let heard = self.ctl.heard_departures(now_ms).await;
        let mut departures = self.departures.lock().await;
        let mut grew = false;
        let mut published = std::collections::BTreeSet::new();
        // Straight from gossip, not from the kept set: a full set may drop this node's
        // own (old) removal, and the node must obey it all the same.
        let mut removed_me = false;
        for (id, dep) in heard {
            removed_me |= id == view.self_id && dep.kind == DepartureKind::Removed;
            published.insert(id);
            grew |= departures.insert(id, dep);
        }
        // A member gossiping "left" is gone for good too; recorded so the leave is
        // remembered once its own gossip state expires. Only ids no node publishes yet:
        // one the set just dropped as the oldest must not come back as a new leave.
        for id in &view.departed {
            if !published.contains(id) && departures.get(*id).is_none() {
                let left = Departure {
                    kind: DepartureKind::Left,
                    at_ms: now_ms,
                };
                grew |= departures.insert(*id, left);
            }
        }
        removed_me |= departures.get(view.self_id).map(|d| d.kind) == Some(DepartureKind::Removed);
        if removed_me {
            self.fence_removed();
        } else if view.members.len() > 1 || !self.needs_peer {
            // Heard from some other node (or has none to hear from) and was not removed.
            self.readiness.set_departures_checked();
        }
        if grew {
            // Stored before it is republished: what this node gossips, it also remembers.
            if let Err(e) = departures.save(self.store.as_ref()) {
                tracing::error!(error = %e, "could not store the departed ids");
            }
            self.ctl.publish_departures(&departures).await;
        }
    }

    /// This node heard it was removed: mark the data dir (its next start refuses), then
    /// stop serving. Logged once.
    fn fence_removed(&self) {
        if self.readiness.is_removed() {
            return;
        }
        if let Err(e) = Identity::mark_removed(self.store.as_ref()) {
            tracing::error!(error = %e, "could not record the removal in the data dir");
        }
        self.readiness.set_removed();
        if self.readiness.departures_checked() {
            tracing::error!("the cluster removed this node (an operator ran `ringkv remove`): {REMOVED_MESSAGE}");
        } else {
            // Removed while it was down: it never served this run, so it stops now, as
            // a node that left does on its old data dir.
            tracing::error!("the cluster removed this node while it was down; refusing to start");
            self.readiness.set_refused_start();
            self.node_shutdown.cancel();
        }
    }
}

/// Joins the cluster (registered only on a node that starts as a joiner).
pub struct JoinWorker(pub Arc<Admin>);

#[async_trait]
impl Worker for JoinWorker {
    fn name(&self) -> &'static str {
        "join"
    }

    fn status(&self) -> String {
        self.0
            .join_status
            .lock()
            .map(|s| (*s).to_owned())
            .unwrap_or_default()
    }

    async fn run(&self, shutdown: CancellationToken) {
        self.0.join(&shutdown).await;
    }
}

/// Waits for an operator's leave (`POST /admin/leave`), then carries it out.
pub struct LeaveWorker(pub Arc<Admin>);

#[async_trait]
impl Worker for LeaveWorker {
    fn name(&self) -> &'static str {
        "leave"
    }

    fn status(&self) -> String {
        self.0
            .leave_status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    async fn run(&self, shutdown: CancellationToken) {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = self.0.leave_requested.notified() => {}
        }
        self.0.leave(&shutdown).await;
    }
}

/// Keeps the departed ids (see [`Admin::keep_departures`]).
pub struct DeparturesWorker(pub Arc<Admin>);

#[async_trait]
impl Worker for DeparturesWorker {
    fn name(&self) -> &'static str {
        "departures"
    }

    fn status(&self) -> String {
        let kept = match self.0.departures.try_lock() {
            Ok(d) => d.len().to_string(),
            // Held by a round that is saving and publishing the set right now.
            Err(_) => "(busy)".to_owned(),
        };
        format!(
            "{kept} departed id(s) kept; checked against peers: {}",
            self.0.readiness.departures_checked()
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        self.0.keep_departures(&shutdown).await;
    }
}
