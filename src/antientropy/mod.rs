//! Anti-entropy and data movement. Hinted handoff and read repair fix what they happen to
//! see; this makes every replica converge, whatever happened, and moves data when the
//! ring changes:
//! - every `--anti-entropy-interval`, exchange one owned range with a fellow replica
//!   (rotating through ranges and replicas);
//! - when the rings change, exchange every owned range once (catch-up: a node that gained
//!   a range after a removal fills it here; a joining node fills all of its ranges here
//!   before it turns normal);
//! - move keys this node no longer owns to their owners, and drop them only once every
//!   new owner has them;
//! - collect tombstones that every replica holds, once `--tombstone-grace` has passed.

pub mod exchange;
pub mod gc;
pub mod ranges;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::{ClusterView, MemberState};
use crate::cluster::policy::ReplicationPolicy;
use crate::cluster::NodeId;
use crate::kv::LocalKv;
use crate::merkle::Interval;
use crate::rpc::batch::{encoded_len, Batcher};
use crate::rpc::client::RpcClient;
use crate::rpc::{Request, Response};
use crate::stats::ReplicationStats;
use exchange::{exchange, Peer};

#[derive(Clone, Copy, Debug)]
pub struct AntiEntropyConfig {
    pub interval: Duration,
    /// Which ranges and keys this node owns, in each ring.
    pub replication: ReplicationPolicy,
    pub rpc_timeout: Duration,
    pub tombstone_grace: Duration,
    /// How long the rings must stay unchanged before this node drops keys it no longer
    /// owns: a view that is still converging (a member not yet heard of) must not make
    /// it drop keys it does own.
    pub settle: Duration,
    /// How much one bulk call (`Merge`, `ReadMany`) carries.
    pub batch: crate::rpc::BatchLimit,
}

#[derive(Clone)]
pub struct AntiEntropy {
    pub local: LocalKv,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub rpc: Arc<RpcClient>,
    pub stats: Arc<ReplicationStats>,
    pub clock: Arc<dyn crate::net::Clock>,
    pub config: AntiEntropyConfig,
}

/// Keys looked at per round of moving unowned keys (they go out in byte-bounded calls).
const MOVE_BATCH: usize = 512;
/// Ranges exchanged per call when syncing all of them.
const SYNC_BATCH: usize = 32;

impl AntiEntropy {
    /// Merges this node's copies of `keys` into the node at `addr`, in calls the batcher
    /// cuts by bytes as the sets are read. Returns the keys acknowledged: a failed call
    /// only holds back its own keys. A key with nothing stored counts as delivered.
    async fn merge_into(
        &self,
        addr: std::net::SocketAddr,
        keys: &[(crate::key::Key, u64)],
    ) -> Vec<crate::key::Key> {
        let mut acked = Vec::new();
        let mut batcher = Batcher::new(self.config.batch);
        for (k, _) in keys {
            match self.local.read(k) {
                Ok(Some(set)) => {
                    let size = encoded_len(&(k.as_str(), &set));
                    if let Some(full) = batcher.push((k.clone(), set), size) {
                        acked.extend(self.send_merge(addr, full).await);
                    }
                }
                Ok(None) => acked.push(k.clone()),
                Err(e) => {
                    tracing::warn!(key = %k.as_str(), error = %e, "cannot read a key to hand off")
                }
            }
        }
        if let Some(last) = batcher.take() {
            acked.extend(self.send_merge(addr, last).await);
        }
        acked
    }

    /// One `Merge` call; the keys it carried when acknowledged, none otherwise.
    async fn send_merge(
        &self,
        addr: std::net::SocketAddr,
        batch: Vec<(crate::key::Key, crate::version::SiblingSet)>,
    ) -> Vec<crate::key::Key> {
        let keys: Vec<crate::key::Key> = batch.iter().map(|(k, _)| k.clone()).collect();
        let entries = batch
            .into_iter()
            .map(|(k, s)| (k.as_str().to_owned(), s))
            .collect();
        match self
            .rpc
            .call(addr, Request::Merge { entries }, self.config.rpc_timeout)
            .await
        {
            Ok(Response::Merged) => keys,
            other => {
                tracing::debug!(peer = %addr, answer = ?other.map(|_| ()), keys = keys.len(), "handing keys off failed; will retry");
                Vec::new()
            }
        }
    }

    fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    fn peer(&self, addr: std::net::SocketAddr) -> Peer<'_> {
        Peer {
            rpc: &self.rpc,
            addr,
            timeout: self.config.rpc_timeout,
            limit: self.config.batch,
        }
    }

    /// Exchanges one range with one fellow replica; `false` when none was reachable.
    async fn exchange_range(
        &self,
        view: &ClusterView,
        intervals: &[Interval],
        peers: &[NodeId],
    ) -> bool {
        for id in peers
            .iter()
            .filter(|id| **id != view.self_id && view.is_healthy(**id))
        {
            let Some(m) = view.member(*id) else { continue };
            match exchange(&self.local, &self.peer(m.rpc_addr), intervals).await {
                Ok(done) => {
                    self.stats.ae_exchanges.inc();
                    self.stats.ae_keys_pulled.add(done.pulled);
                    self.stats.ae_keys_pushed.add(done.pushed);
                    if done.pulled + done.pushed > 0 {
                        tracing::debug!(peer = %id, pulled = done.pulled, pushed = done.pushed, "anti-entropy repaired keys");
                    }
                    return true;
                }
                Err(e) => tracing::debug!(peer = %id, error = %e, "anti-entropy exchange failed"),
            }
        }
        false
    }

    /// Exchanges every range this node owns (in the write ring when `use_write_ring`, as a
    /// joining node does) with a fellow replica from the read ring, which holds the data.
    /// Ranges are grouped by the peer they come from and exchanged [`SYNC_BATCH`] at a
    /// time, so a join costs a few round trips per peer rather than several per range.
    /// Returns how many ranges could not be exchanged (retried by the caller). Stops early
    /// if the rings change: the next catch-up covers the new ones.
    ///
    /// `progress` publishes the ranges left (a joining node's status).
    pub async fn sync_all(
        &self,
        use_write_ring: bool,
        shutdown: &CancellationToken,
        progress: Option<&crate::cluster::membership::MembershipCtl>,
    ) -> usize {
        let view = self.view();
        let rings = (view.ring.hash(), view.write_ring.hash());
        let ring = if use_write_ring {
            &view.write_ring
        } else {
            &view.ring
        };
        let policy = self.config.replication;
        let owned = policy.owned_ranges(ring, view.self_id);
        let mut failed = 0;
        let mut by_peer: std::collections::BTreeMap<NodeId, Vec<Vec<Interval>>> =
            Default::default();
        for (i, (range, _)) in owned.iter().enumerate() {
            let others: Vec<NodeId> = policy
                .range_owners(&view.ring, range)
                .into_iter()
                .filter(|id| *id != view.self_id)
                .collect();
            let live: Vec<NodeId> = others
                .iter()
                .copied()
                .filter(|id| view.is_healthy(*id))
                .collect();
            match live.get(i % live.len().max(1)) {
                // Rotate among the live sources to spread the load.
                Some(peer) => by_peer
                    .entry(*peer)
                    .or_default()
                    .push(ranges::intervals(range)),
                // A range whose only owner is this node has nothing to pull.
                None if !others.is_empty() => failed += 1,
                None => {}
            }
        }
        let total: usize = by_peer.values().map(Vec::len).sum();
        let mut left = total;
        tracing::info!(
            ranges = total,
            peers = by_peer.len(),
            "syncing owned ranges"
        );
        for (peer, ranges) in by_peer {
            let Some(addr) = view.member(peer).map(|m| m.rpc_addr) else {
                failed += ranges.len();
                continue;
            };
            for batch in ranges.chunks(SYNC_BATCH) {
                let now = self.view();
                if shutdown.is_cancelled() || (now.ring.hash(), now.write_ring.hash()) != rings {
                    return failed + left;
                }
                let intervals: Vec<Interval> = batch.iter().flatten().copied().collect();
                match exchange(&self.local, &self.peer(addr), &intervals).await {
                    Ok(done) => {
                        self.stats.ae_exchanges.inc();
                        self.stats.ae_keys_pulled.add(done.pulled);
                        self.stats.ae_keys_pushed.add(done.pushed);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "range sync failed");
                        failed += batch.len();
                    }
                }
                left -= batch.len();
                if let Some(ctl) = progress {
                    ctl.set_to_move(Some(left as u64)).await;
                }
                tracing::info!(
                    ranges_done = total - left,
                    ranges_total = total,
                    failed,
                    "range sync progress"
                );
            }
        }
        failed
    }

    /// Runs the periodic exchange, catch-up on ring changes, movement of unowned keys and
    /// tombstone GC until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut view_rx = self.view.clone();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut cursor = 0usize;
        let mut rings = (0u64, 0u64);
        loop {
            let view = self.view();
            let current = (view.ring.hash(), view.write_ring.hash());
            if current != rings && view.ring.len() > 1 {
                // The rings changed: make every owned range whole now, not one per tick.
                rings = current;
                let failed = self.sync_all(false, &shutdown, None).await;
                if failed > 0 {
                    // Retry on the next tick.
                    rings = (0, 0);
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.config.settle) => {}
                    _ = shutdown.cancelled() => return,
                }
                let settled = self.view();
                if (settled.ring.hash(), settled.write_ring.hash()) == current {
                    self.move_unowned(&shutdown).await;
                }
            } else {
                self.tick(&view, &mut cursor).await;
                // A leaving node's own task moves everything; no need to do it twice.
                if view.member(view.self_id).map(|m| m.state) != Some(MemberState::Leaving) {
                    self.move_unowned(&shutdown).await;
                }
                gc::collect(&self, &shutdown).await;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                r = view_rx.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One periodic exchange: every range this node shares with the next fellow replica,
    /// in batches of [`SYNC_BATCH`]. A range at a time would take a 5-node cluster hours
    /// to cover at the default interval; this covers everything once per round of peers.
    async fn tick(&self, view: &ClusterView, cursor: &mut usize) {
        let owned = self
            .config
            .replication
            .owned_ranges(&view.ring, view.self_id);
        let peers: Vec<NodeId> = owned
            .iter()
            .flat_map(|(_, owners)| owners.iter().copied())
            .filter(|id| *id != view.self_id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if peers.is_empty() {
            return;
        }
        *cursor = cursor.wrapping_add(1);
        let peer = peers[*cursor % peers.len()];
        self.stats.ae_rounds.inc();
        let shared: Vec<&crate::cluster::ring::TokenRange> = owned
            .iter()
            .filter(|(_, owners)| owners.contains(&peer))
            .map(|(range, _)| range)
            .collect();
        for batch in shared.chunks(SYNC_BATCH) {
            let intervals: Vec<Interval> =
                batch.iter().flat_map(|r| ranges::intervals(r)).collect();
            if !self.exchange_range(view, &intervals, &[peer]).await {
                return;
            }
        }
    }

    /// Moves every key this node should no longer hold to its owners, then drops it —
    /// only once each owner in the write ring acknowledged it. A leaving node moves
    /// everything it holds and keeps its copy (it exits with it).
    pub async fn move_unowned(&self, shutdown: &CancellationToken) -> u64 {
        let view = self.view();
        let leaving = view.member(view.self_id).map(|m| m.state) == Some(MemberState::Leaving);
        let policy = self.config.replication;
        let mut after = None;
        let mut remaining = 0u64;
        loop {
            if shutdown.is_cancelled() {
                return remaining;
            }
            let Ok((rows, more)) = self
                .local
                .digests(Interval::FULL, after.as_ref(), MOVE_BATCH)
            else {
                return remaining;
            };
            after = rows.last().map(|(k, _)| k.clone());
            let mut by_owner: std::collections::BTreeMap<NodeId, Vec<(crate::key::Key, u64)>> =
                Default::default();
            let mut unowned = Vec::new();
            for (key, digest) in rows {
                let reads = policy.read_nodes(&view, key.as_bytes());
                let writes = policy.future_nodes(&view, key.as_bytes());
                let keep =
                    !leaving && (reads.contains(&view.self_id) || writes.contains(&view.self_id));
                if keep {
                    continue;
                }
                for owner in writes.iter().filter(|o| **o != view.self_id) {
                    by_owner
                        .entry(*owner)
                        .or_default()
                        .push((key.clone(), digest));
                }
                unowned.push((key, digest, writes));
            }
            let mut acked: std::collections::BTreeSet<(NodeId, crate::key::Key)> =
                Default::default();
            for (owner, keys) in by_owner {
                let Some(m) = view.member(owner).filter(|_| view.is_healthy(owner)) else {
                    continue;
                };
                let sent = self.merge_into(m.rpc_addr, &keys).await;
                acked.extend(sent.into_iter().map(|k| (owner, k)));
            }
            let mut drops = Vec::new();
            for (key, digest, writes) in unowned {
                let all_have = writes
                    .iter()
                    .filter(|o| **o != view.self_id)
                    .all(|o| acked.contains(&(*o, key.clone())));
                if !all_have {
                    remaining += 1;
                    continue;
                }
                self.stats.keys_moved.inc();
                if !leaving {
                    // Unchanged since it was sent: nothing new is lost by dropping it.
                    drops.push(self.local.drop_if_digest(key, digest));
                }
            }
            // Submitted together, the drops of a batch share the writer's commits (group
            // commit) instead of paying one commit and fsync each.
            futures::future::join_all(drops).await;
            if !more || after.is_none() {
                return remaining;
            }
        }
    }
}
