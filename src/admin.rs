//! Membership changes an operator asks for, and the tasks that carry them out: joining
//! (pull every future range, then turn normal), leaving (hand everything off, then leave
//! the ring and exit), removing a dead member, and keeping the departed ids (every node
//! gossips and stores them; a node that hears it was removed stops serving).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::antientropy::AntiEntropy;
use crate::cluster::departed::{Departure, DepartureKind, Departures};
use crate::cluster::membership::{MemberState, MembershipCtl};
use crate::cluster::NodeId;
use crate::identity::Identity;
use crate::readiness::{Readiness, REMOVED_MESSAGE};
use crate::rpc::{Request, Response};
use crate::store::Store;

/// How long a node that left waits for its live peers to see it gone (see
/// `Admin::wait_for_peers_to_see_the_leave`).
const LEFT_CONFIRM_LIMIT: Duration = Duration::from_secs(30);

pub struct Admin {
    pub ctl: MembershipCtl,
    pub ae: AntiEntropy,
    pub store: Arc<dyn Store>,
    /// Cancelled to stop the whole node (after a leave).
    pub node_shutdown: CancellationToken,
    /// Cancelled when background tasks must stop.
    pub tasks: CancellationToken,
    pub gossip_interval: Duration,
    leaving: AtomicBool,
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
        ae: AntiEntropy,
        store: Arc<dyn Store>,
        node_shutdown: CancellationToken,
        tasks: CancellationToken,
        gossip_interval: Duration,
    ) -> Self {
        Admin {
            ctl,
            ae,
            store,
            node_shutdown,
            tasks,
            gossip_interval,
            leaving: AtomicBool::new(false),
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

    /// Joins: waits for a normal member to pull from, pulls every range this node will
    /// own, then turns normal. Until then it takes writes for those ranges (it is in the
    /// write ring) but serves no reads.
    pub async fn join(self: Arc<Self>) {
        let mut view = self.ae.view.clone();
        loop {
            let ready = {
                let v = view.borrow_and_update();
                // A source to pull from must be live, not only known: the failure
                // detector needs a few gossip rounds to call a new peer live.
                v.ring
                    .members()
                    .iter()
                    .any(|id| *id != v.self_id && v.is_healthy(*id))
                    && v.write_ring.contains(v.self_id)
            };
            if ready {
                break;
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = self.tasks.cancelled() => return,
            }
        }
        tracing::info!("joining: pulling this node's ranges from their owners");
        let started = tokio::time::Instant::now();
        loop {
            let failed = self.ae.sync_all(true, &self.tasks, Some(&self.ctl)).await;
            if self.tasks.is_cancelled() || self.leaving.load(Ordering::Acquire) {
                return;
            }
            if failed == 0 {
                break;
            }
            tracing::warn!(failed, "some ranges could not be pulled yet; retrying");
            self.ctl.set_to_move(Some(failed as u64)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _transition = self.transition.lock().await;
        if self.leaving.load(Ordering::Acquire) {
            // Turning normal now would undo the leave's "leaving" or "left".
            tracing::info!("a leave began before the join finished; not turning normal");
            return;
        }
        if let Err(e) = Identity::mark_joined(self.store.as_ref()) {
            tracing::error!(error = %e, "could not record the join");
        }
        self.ctl.set_to_move(None).await;
        self.ctl.set_state(MemberState::Normal).await;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            keys_pulled = self.ae.stats.ae_keys_pulled.get(),
            "joined: normal"
        );
    }

    /// Leaves: hands every key to its owners in the ring without this node, then leaves
    /// the ring and stops the node. Returns false if a leave is already under way.
    pub fn start_leave(self: &Arc<Self>) -> bool {
        if self.leaving.swap(true, Ordering::AcqRel) {
            return false;
        }
        tokio::spawn(self.clone().leave());
        true
    }

    async fn leave(self: Arc<Self>) {
        // `leaving` is set already (`start_leave`): a join finishing after this point
        // sees it under the same lock and stays out of the way.
        let transition = self.transition.lock().await;
        self.ctl.set_state(MemberState::Leaving).await;
        drop(transition);
        // Wait until this node's own view has it leaving, so moving its keys targets the
        // ring without it.
        let mut view = self.ae.view.clone();
        loop {
            let leaving = {
                let v = view.borrow_and_update();
                !v.write_ring.contains(v.self_id)
            };
            if leaving {
                break;
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = self.tasks.cancelled() => return,
            }
        }
        tracing::info!("leaving: handing this node's data to the remaining owners");
        loop {
            let remaining = self.ae.move_unowned(&self.tasks).await;
            if self.tasks.is_cancelled() {
                return;
            }
            self.ctl.set_to_move(Some(remaining)).await;
            if remaining == 0 {
                break;
            }
            tracing::info!(remaining, "keys still to hand off; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.ctl.set_to_move(None).await;
        // Durably first: a restart on this data dir must never serve its stale copy.
        if let Err(e) = Identity::mark_left(self.store.as_ref()) {
            tracing::error!(error = %e, "could not record the leave; staying");
            return;
        }
        self.ctl.set_state(MemberState::Left).await;
        self.wait_for_peers_to_see_the_leave().await;
        tracing::info!("left the cluster; stopping");
        self.node_shutdown.cancel();
    }

    /// Keeps gossiping "left" until every live peer says it has heard this node departed,
    /// for at most `LEFT_CONFIRM_LIMIT`. Stopping after a fixed number of rounds is not
    /// enough on a slow or lossy network: a peer that never heard "left" keeps this node
    /// as a dead leaving member, in its read ring and its hint targets, until an operator
    /// removes it. A peer that is down now hears it later from the others.
    async fn wait_for_peers_to_see_the_leave(&self) {
        let deadline = tokio::time::Instant::now() + LEFT_CONFIRM_LIMIT;
        let rpc_timeout = self.ae.config.rpc_timeout;
        loop {
            let view = self.ae.view.borrow().clone();
            let me = view.self_id;
            let peers: Vec<_> = view
                .members
                .values()
                .filter(|m| m.id != me && m.live && m.state != MemberState::Left)
                .map(|m| (m.id, m.rpc_addr))
                .collect();
            let asks = peers.iter().map(|&(id, addr)| async move {
                let r = self
                    .ae
                    .rpc
                    .call(addr, Request::Departed { node: me.0 }, rpc_timeout)
                    .await;
                (id, matches!(r, Ok(Response::Departed(true))))
            });
            let unaware: Vec<NodeId> = futures::future::join_all(asks)
                .await
                .into_iter()
                .filter(|(_, seen)| !seen)
                .map(|(id, _)| id)
                .collect();
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
                _ = self.tasks.cancelled() => return,
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
            at_ms: self.ae.clock.now_ms(),
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
    /// node if it was removed. Stops on the tasks' shutdown.
    pub async fn keep_departures(self: Arc<Self>) {
        self.ctl
            .publish_departures(&*self.departures.lock().await)
            .await;
        let mut ticker = tokio::time::interval(self.gossip_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.tasks.cancelled() => return,
            }
            self.departures_round().await;
        }
    }

    async fn departures_round(&self) {
        let now_ms = self.ae.clock.now_ms();
        // The view first: every node it shows has had its gossip state read by the time
        // `heard` is taken, so "heard from a peer, and not removed" cannot be decided on
        // a peer's state that came in between.
        let view = self.ae.view.borrow().clone();
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
