//! Membership changes an operator asks for, and the tasks that carry them out: joining
//! (pull every future range, then turn normal), leaving (hand everything off, then leave
//! the ring and exit), and removing a dead member.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::antientropy::AntiEntropy;
use crate::cluster::membership::{MemberState, MembershipCtl};
use crate::cluster::NodeId;
use crate::identity::Identity;
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
        }
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
        // Wait until this node's own view has it leaving, so handoff targets the ring
        // without it.
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
            let remaining = self.ae.handoff_unowned(&self.tasks).await;
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

    pub async fn remove(&self, id: NodeId) {
        tracing::warn!(node = %id, "removing a member on an operator's request");
        self.ctl.remove(id).await;
    }
}
