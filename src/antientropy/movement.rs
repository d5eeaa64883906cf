//! Data movement: keys this node no longer owns go to their owners, and are dropped here
//! only once every new owner acknowledged them. It runs after every ring change (once the
//! rings have settled) and on a timer, whether or not anti-entropy is on: a ring change
//! must move data even where replicas are only repaired by hints.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::AntiEntropy;
use crate::cluster::membership::MemberState;
use crate::cluster::NodeId;
use crate::merkle::Interval;
use crate::rpc::batch::{encoded_len, Batcher};
use crate::rpc::{Request, Response};
use crate::worker::Worker;

/// Keys looked at per round of moving unowned keys (they go out in byte-bounded calls).
const MOVE_BATCH: usize = 512;

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
        match self.peers.call(addr, Request::Merge { entries }).await {
            Ok(Response::Merged) => keys,
            other => {
                tracing::debug!(peer = %addr, answer = ?other.map(|_| ()), keys = keys.len(), "handing keys off failed; will retry");
                Vec::new()
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

/// Moves unowned keys after each ring change and every `movement_interval`.
pub struct Movement {
    ae: AntiEntropy,
    /// Keys the last round could not move yet.
    remaining: AtomicU64,
}

impl Movement {
    pub fn new(ae: AntiEntropy) -> Self {
        Movement {
            ae,
            remaining: AtomicU64::new(0),
        }
    }

    async fn round(&self, shutdown: &CancellationToken) {
        let Some(_turn) = self.ae.take_turn(shutdown).await else {
            return;
        };
        let remaining = self.ae.move_unowned(shutdown).await;
        self.remaining.store(remaining, Ordering::Relaxed);
    }
}

#[async_trait]
impl Worker for Movement {
    fn name(&self) -> &'static str {
        "movement"
    }

    fn status(&self) -> String {
        format!(
            "every {}: {} key(s) moved to their owners, {} left after the last round",
            humantime::format_duration(self.ae.config.movement_interval),
            self.ae.stats.keys_moved.get(),
            self.remaining.load(Ordering::Relaxed)
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut view_rx = self.ae.peers.view.clone();
        let mut ticker = tokio::time::interval(self.ae.config.movement_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut rings = (0u64, 0u64);
        loop {
            let view = self.ae.view();
            let current = (view.ring.hash(), view.write_ring.hash());
            if current != rings && view.ring.len() > 1 {
                rings = current;
                tokio::select! {
                    _ = tokio::time::sleep(self.ae.config.settle) => {}
                    _ = shutdown.cancelled() => return,
                }
                let settled = self.ae.view();
                if (settled.ring.hash(), settled.write_ring.hash()) == current {
                    self.round(&shutdown).await;
                }
            } else if view.member(view.self_id).map(|m| m.state) != Some(MemberState::Leaving) {
                // A leaving node's own task moves everything; no need to do it twice.
                self.round(&shutdown).await;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                r = view_rx.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
