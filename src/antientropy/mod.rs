//! Anti-entropy: hinted handoff and read repair fix what they happen to see; this makes
//! every replica converge, whatever happened. [`AntiEntropy`] is the handle its jobs
//! share, and each job is its own worker:
//! - every `--anti-entropy-interval`, exchange the ranges shared with the next fellow
//!   replica (rotating through replicas); when the rings change, exchange every owned
//!   range once (catch-up: a node that gained a range after a removal fills it here; a
//!   joining node fills all of its ranges before it turns normal). An interval of zero
//!   turns this off, and only this ([`AntiEntropyWorker`]);
//! - move keys this node no longer owns to their owners, and drop them only once every
//!   new owner has them (`movement`);
//! - collect tombstones that every replica holds, once `--tombstone-grace` has passed
//!   (`gc`).

pub mod exchange;
pub mod gc;
pub mod movement;
pub mod ranges;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::ClusterView;
use crate::cluster::policy::ReplicationPolicy;
use crate::cluster::NodeId;
use crate::kv::LocalKv;
use crate::merkle::Interval;
use crate::peers::Peers;
use crate::stats::ReplicationStats;
use crate::worker::Worker;
use exchange::{exchange, Peer};

/// How often data movement and tombstone GC run while anti-entropy is off: anti-entropy's
/// default interval. Neither needs to be fast: movement also runs after every ring
/// change, and a tombstone waits out `--tombstone-grace` (an hour by default) anyway.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The pace of data movement and tombstone GC: anti-entropy's, when it runs. They ran in
/// its loop before they were workers of their own, and a cluster tuned for fast repair
/// (the tests, the simulation) also expects fast movement and collection.
pub fn maintenance_interval(anti_entropy_interval: Duration) -> Duration {
    if anti_entropy_interval.is_zero() {
        MAINTENANCE_INTERVAL
    } else {
        anti_entropy_interval
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AntiEntropyConfig {
    /// Between periodic exchanges; zero turns exchanges off.
    pub interval: Duration,
    /// Between rounds of data movement (it also runs after each ring change).
    pub movement_interval: Duration,
    /// Between rounds of tombstone GC.
    pub gc_interval: Duration,
    /// Which ranges and keys this node owns, in each ring.
    pub replication: ReplicationPolicy,
    pub tombstone_grace: Duration,
    /// How long the rings must stay unchanged before this node drops keys it no longer
    /// owns: a view that is still converging (a member not yet heard of) must not make
    /// it drop keys it does own.
    pub settle: Duration,
    /// How much one bulk call (`Merge`, `ReadMany`) carries.
    pub batch: crate::rpc::BatchLimit,
}

/// What anti-entropy, movement and GC work with; cheap to clone.
#[derive(Clone)]
pub struct AntiEntropy {
    pub peers: Peers,
    pub local: LocalKv,
    pub stats: Arc<ReplicationStats>,
    pub config: AntiEntropyConfig,
    /// Held by each round of the exchange, of movement and of GC: on one node they take
    /// turns, as when one loop ran all three. GC drops a tombstone on every replica one
    /// after the other; this node's own exchange running in between would push the
    /// tombstone back to a replica that just dropped it (a tokio mutex: held across
    /// calls). A join's own pull and a leave's moving of keys do not take it.
    pub turns: Arc<tokio::sync::Mutex<()>>,
}

/// Ranges exchanged per call when syncing all of them.
const SYNC_BATCH: usize = 32;

impl AntiEntropy {
    /// Waits for this node's turn among the exchange, movement and GC (see `turns`), or
    /// for shutdown: a worker waiting on a long round must still stop within its deadline.
    pub(crate) async fn take_turn(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        tokio::select! {
            turn = self.turns.lock() => Some(turn),
            _ = shutdown.cancelled() => None,
        }
    }

    fn view(&self) -> Arc<ClusterView> {
        self.peers.view()
    }

    /// The peer at `addr`, for exchanges that stop on `shutdown`.
    fn peer<'a>(&'a self, addr: std::net::SocketAddr, shutdown: &'a CancellationToken) -> Peer<'a> {
        Peer {
            rpc: &self.peers.rpc,
            addr,
            timeout: self.peers.rpc_timeout,
            limit: self.config.batch,
            shutdown,
        }
    }

    /// Exchanges one range with one fellow replica; `false` when none was reachable.
    async fn exchange_range(
        &self,
        view: &ClusterView,
        intervals: &[Interval],
        peers: &[NodeId],
        shutdown: &CancellationToken,
    ) -> bool {
        for id in peers
            .iter()
            .filter(|id| **id != view.self_id && view.is_healthy(**id))
        {
            let Some(m) = view.member(*id) else { continue };
            match exchange(&self.local, &self.peer(m.rpc_addr, shutdown), intervals).await {
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
            // The exchange pushes as well as pulls, and a source whose disk is full fails
            // every push: its ranges would be retried forever, and a join next to a full
            // disk would never finish (found by chaos). Pull from owners that take writes
            // when there are any, else from any healthy one.
            let healthy = others.iter().copied().filter(|id| view.is_healthy(*id));
            let writable: Vec<NodeId> = healthy
                .clone()
                .filter(|id| view.takes_writes(*id))
                .collect();
            let live: Vec<NodeId> = if writable.is_empty() {
                healthy.collect()
            } else {
                writable
            };
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
                let mut moved = 0;
                match exchange(&self.local, &self.peer(addr, shutdown), &intervals).await {
                    Ok(done) => {
                        self.stats.ae_exchanges.inc();
                        self.stats.ae_keys_pulled.add(done.pulled);
                        self.stats.ae_keys_pushed.add(done.pushed);
                        moved = done.pulled.saturating_add(done.pushed);
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
                // Worth an info line when keys moved or ranges failed; a batch of empty
                // ranges (a new cluster, an empty store) is one line per batch of noise.
                if moved > 0 || failed > 0 {
                    tracing::info!(
                        ranges_done = total - left,
                        ranges_total = total,
                        moved,
                        failed,
                        "range sync progress"
                    );
                } else {
                    tracing::debug!(
                        ranges_done = total - left,
                        ranges_total = total,
                        "range sync progress"
                    );
                }
            }
        }
        failed
    }

    /// One periodic exchange: every range this node shares with the next fellow replica,
    /// in batches of [`SYNC_BATCH`]. A range at a time would take a 5-node cluster hours
    /// to cover at the default interval; this covers everything once per round of peers.
    async fn tick(&self, view: &ClusterView, cursor: &mut usize, shutdown: &CancellationToken) {
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
            if shutdown.is_cancelled()
                || !self
                    .exchange_range(view, &intervals, &[peer], shutdown)
                    .await
            {
                return;
            }
        }
    }
}

/// The periodic exchange, and the catch-up after each ring change.
pub struct AntiEntropyWorker {
    pub ae: AntiEntropy,
}

#[async_trait]
impl Worker for AntiEntropyWorker {
    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    fn status(&self) -> String {
        let interval = self.ae.config.interval;
        if interval.is_zero() {
            return "off (--anti-entropy-interval 0)".to_owned();
        }
        let stats = &self.ae.stats;
        format!(
            "every {}: {} round(s), {} exchange(s), {} key(s) pulled, {} pushed",
            humantime::format_duration(interval),
            stats.ae_rounds.get(),
            stats.ae_exchanges.get(),
            stats.ae_keys_pulled.get(),
            stats.ae_keys_pushed.get()
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        let ae = &self.ae;
        // An interval of zero turns anti-entropy off (tests of hints and read repair alone).
        if ae.config.interval.is_zero() {
            return;
        }
        let mut view_rx = ae.peers.view.clone();
        let mut ticker = tokio::time::interval(ae.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut cursor = 0usize;
        let mut rings = (0u64, 0u64);
        loop {
            let view = ae.view();
            let current = (view.ring.hash(), view.write_ring.hash());
            let Some(turn) = ae.take_turn(&shutdown).await else {
                return;
            };
            if current != rings && view.ring.len() > 1 {
                // The rings changed: make every owned range whole now, not one per tick.
                rings = current;
                let failed = ae.sync_all(false, &shutdown, None).await;
                if failed > 0 {
                    // Retry on the next tick.
                    rings = (0, 0);
                }
            } else {
                ae.tick(&view, &mut cursor, &shutdown).await;
            }
            drop(turn);
            tokio::select! {
                _ = ticker.tick() => {}
                r = view_rx.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
