//! Tombstone GC. A tombstone may be removed only when every replica of its key holds it
//! (the same sibling set, by digest) and `--tombstone-grace` has passed since it was
//! written. Removing it earlier lets a replica that missed the delete bring the value
//! back through anti-entropy. Hints never outlive the grace (`--max-hint-age` is capped
//! at it), so no hint can resurrect a collected key either.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::AntiEntropy;
use crate::key::Key;
use crate::kv::summary::digest;
use crate::rpc::{Request, Response};
use crate::worker::Worker;

/// Tombstones examined per round, so one round stays short.
const PER_ROUND: usize = 1024;

/// One GC round over this node's tombstones.
pub async fn collect(ae: &AntiEntropy, shutdown: &CancellationToken) {
    let view = ae.view();
    // While data moves, the owner set of a key is in flux: wait for the rings to settle.
    if view.in_transition() {
        return;
    }
    let grace_ms = ae.config.tombstone_grace.as_millis() as u64;
    let now = ae.peers.clock.now_ms();
    let Ok(candidates) = ae.local.tombstones(None, PER_ROUND) else {
        return;
    };
    for (key, newest_ms) in candidates {
        if shutdown.is_cancelled() {
            return;
        }
        if now.saturating_sub(newest_ms) < grace_ms {
            continue;
        }
        if collect_one(ae, &view, key).await {
            ae.stats.tombstones_collected.inc();
        }
    }
}

/// Checks every replica holds the same tombstone set, then drops it everywhere.
async fn collect_one(
    ae: &AntiEntropy,
    view: &crate::cluster::membership::ClusterView,
    key: Key,
) -> bool {
    let Ok(Some(set)) = ae.local.read(&key) else {
        return false;
    };
    if set.has_live() {
        return false;
    }
    let d = digest(&set);
    let owners = ae.config.replication.read_nodes(view, key.as_bytes());
    // One replica collects each key — the first in its preference list — so two replicas
    // never race to drop each other's copies.
    if owners.first() != Some(&view.self_id) {
        return false;
    }
    let mut remotes = Vec::new();
    for id in owners.iter().filter(|id| **id != view.self_id) {
        let Some(m) = view.member(*id).filter(|_| view.is_healthy(*id)) else {
            return false;
        };
        let request = Request::ReadMany {
            keys: vec![key.as_str().to_owned()],
        };
        match ae.peers.call(m.rpc_addr, request).await {
            Ok(Response::ReadMany { entries, .. }) => {
                let same = entries
                    .first()
                    .and_then(|(_, s)| s.as_ref())
                    .is_some_and(|s| digest(s) == d);
                if !same {
                    return false;
                }
                remotes.push(m.rpc_addr);
            }
            _ => return false,
        }
    }
    // Every replica holds it: drop it on each, then here. A replica that fails now keeps
    // its copy, and anti-entropy hands the tombstone back: harmless, and collected again.
    let mut dropped = false;
    for addr in remotes {
        let request = Request::DropIfDigest {
            entries: vec![(key.as_str().to_owned(), d)],
        };
        if let Ok(Response::Dropped(n)) = ae.peers.call(addr, request).await {
            dropped |= n > 0;
        }
    }
    dropped | ae.local.drop_if_digest(key, d).await.unwrap_or(false)
}

/// Collects tombstones every `gc_interval`, whether or not anti-entropy is on.
pub struct Gc {
    pub ae: AntiEntropy,
}

#[async_trait]
impl Worker for Gc {
    fn name(&self) -> &'static str {
        "tombstone-gc"
    }

    fn status(&self) -> String {
        format!(
            "every {}: {} tombstone(s) collected",
            humantime::format_duration(self.ae.config.gc_interval),
            self.ae.stats.tombstones_collected.get()
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.ae.config.gc_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(_turn) = self.ae.take_turn(&shutdown).await else {
                return;
            };
            collect(&self.ae, &shutdown).await;
        }
    }
}
