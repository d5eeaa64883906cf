//! Hinted handoff: hands hints back to their targets once the failure detector says they
//! are live again, and deletes each hint once its target acknowledged it. Hints older
//! than `--max-hint-age` are dropped and counted; anti-entropy repairs what they held.
//! Hints for a member that left or was removed go to their keys' owners instead: they may
//! hold the only second copy of an acknowledged write.
//!
//! Hints go out in `Merge` calls cut by bytes (`rpc::batch`), not by count: a page of
//! large hints would otherwise exceed the frame and fail on every retry, and the hints
//! would never drain.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::ClusterView;
use crate::cluster::policy::ReplicationPolicy;
use crate::cluster::NodeId;
use crate::kv::{KvError, LocalKv, StoredHint};
use crate::peers::Peers;
use crate::rpc::batch::{self, encoded_len, BatchLimit};
use crate::rpc::client::RpcError;
use crate::rpc::{RemoteError, Request, Response};
use crate::stats::ReplicationStats;
use crate::worker::Worker;

/// Hints read from the store at once while filling a page.
const HINT_READ_CHUNK: usize = 16;

/// Hints read per page when delivering. A page goes out in byte-bounded calls
/// (`HandoffConfig::limit`), so this bounds the rows held at once and the work between two
/// shutdown checks, not the size of a call.
pub const HINT_PAGE: usize = 128;

/// Rounds between expiry sweeps of hints whose target is down.
const EXPIRY_SWEEP_ROUNDS: u64 = 60;

/// Why a round of delivery or rerouting stopped; the hints stay and go out next round.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("local store: {0}")]
    Local(#[from] KvError),
    #[error("delivery call failed: {0}")]
    Rpc(#[from] RpcError),
    #[error("the peer refused the hints: {0}")]
    Remote(#[from] RemoteError),
    /// The peer answered a `Merge` with something else: a broken peer.
    #[error("unexpected answer to a hint delivery: {0}")]
    BadAnswer(String),
    #[error("owner {0} of rerouted hints is not reachable or takes no writes")]
    OwnerUnreachable(NodeId),
}

#[derive(Clone, Copy, Debug)]
pub struct HandoffConfig {
    /// How often pending hints are looked at.
    pub interval: Duration,
    /// Hints read from the store at once (a page; it goes out in byte-bounded calls).
    pub batch: usize,
    /// How much one delivery call carries.
    pub limit: BatchLimit,
    pub max_age: Duration,
    /// Who owns a key: hints for a member that is gone go to the key's owners.
    pub replication: ReplicationPolicy,
}

pub struct Handoff {
    pub peers: Peers,
    pub local: LocalKv,
    pub stats: Arc<ReplicationStats>,
    pub config: HandoffConfig,
}

/// Whether the hints for `target` should go to their keys' owners rather than wait for
/// it: gossip says it left or was removed; or it is simply not a member. The latter
/// proves nothing in a view of this node alone (it just started and has heard from no
/// one yet), and a node that merely went down stays a member: its hints wait.
fn target_gone(view: &ClusterView, target: NodeId) -> bool {
    view.departed.contains(&target) || (view.member(target).is_none() && view.members.len() > 1)
}

#[async_trait]
impl Worker for Handoff {
    fn name(&self) -> &'static str {
        "handoff"
    }

    fn status(&self) -> String {
        let pending = self.local.hint_ledger().all();
        let hints: u64 = pending.values().map(|p| p.count).sum();
        format!(
            "{hints} hint(s) pending for {} target(s); {} delivered, {} expired",
            pending.len(),
            self.stats.hints_delivered.get(),
            self.stats.hints_expired.get()
        )
    }

    /// Every `interval`, delivers (or reroutes, or expires) the hints of each target,
    /// until `shutdown`.
    async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.interval);
        let mut round: u64 = 0;
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            round += 1;
            let targets = self.local.hint_ledger().all();
            for target in targets.keys().map(|t| NodeId(*t)) {
                if shutdown.is_cancelled() {
                    return;
                }
                let view = self.peers.view();
                if target_gone(&view, target) {
                    if let Err(e) = self.reroute(target, &view, &shutdown).await {
                        tracing::warn!(peer = %target, error = %e, "rerouting hints failed; will retry");
                    }
                    continue;
                }
                // A target whose disk is full would refuse the hints: hold them until it
                // takes writes again, as for a down one.
                let deliverable = target != view.self_id && view.takes_writes(target);
                let addr = view.member(target).map(|m| m.rpc_addr);
                // Hints for a down target are only read to expire them, which is rare work:
                // not every round, or a long outage would rescan them every second.
                if !deliverable && !round.is_multiple_of(EXPIRY_SWEEP_ROUNDS) {
                    continue;
                }
                if let Err(e) = self
                    .sweep(target, addr.filter(|_| deliverable), &shutdown)
                    .await
                {
                    tracing::warn!(peer = %target, error = %e, "hint delivery failed; will retry");
                }
            }
        }
    }
}

impl Handoff {
    /// Hands the hints held for a member that left or was removed to each key's
    /// owners now (merged here when this node is one), then deletes them.
    async fn reroute(
        &self,
        target: NodeId,
        view: &ClusterView,
        shutdown: &CancellationToken,
    ) -> Result<(), HandoffError> {
        let mut after = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let hints = self.next_batch(target, &mut after)?;
            if hints.is_empty() {
                return Ok(());
            }
            let mut by_owner: std::collections::BTreeMap<NodeId, Vec<&StoredHint>> =
                Default::default();
            for h in &hints {
                for owner in self
                    .config
                    .replication
                    .storage_nodes(view, h.key.as_bytes())
                {
                    by_owner.entry(owner).or_default().push(h);
                }
            }
            for (owner, owned) in by_owner {
                if owner == view.self_id {
                    for h in owned {
                        self.local
                            .merge(h.key.clone(), h.record.set.clone())
                            .await?;
                    }
                    continue;
                }
                let addr = view
                    .member(owner)
                    .filter(|_| view.takes_writes(owner))
                    .map(|m| m.rpc_addr)
                    .ok_or(HandoffError::OwnerUnreachable(owner))?;
                for part in self.batches(owned) {
                    self.send(addr, &part).await?;
                }
            }
            self.delete_delivered(target, &hints).await?;
            tracing::info!(peer = %target, hints = hints.len(), "hints for a departed member handed to the keys' owners");
        }
    }

    /// Goes through one target's hints in batches: drops expired ones, and, when the
    /// target is reachable (`addr`), delivers the rest.
    async fn sweep(
        &self,
        target: NodeId,
        addr: Option<std::net::SocketAddr>,
        shutdown: &CancellationToken,
    ) -> Result<(), HandoffError> {
        let mut after = None;
        let mut delivered = 0u64;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let hints = self.next_batch(target, &mut after)?;
            if hints.is_empty() {
                break;
            }
            let now = self.peers.clock.now_ms();
            let max_age_ms = self.config.max_age.as_millis() as u64;
            let (expired, fresh): (Vec<StoredHint>, Vec<StoredHint>) = hints
                .into_iter()
                .partition(|h| now.saturating_sub(h.record.stored_at_ms) > max_age_ms);
            for hint in &expired {
                if self
                    .local
                    .delete_hint(target.0, hint)
                    .await
                    .unwrap_or(false)
                {
                    self.stats.hints_expired.inc();
                }
            }
            let Some(addr) = addr else { continue };
            if fresh.is_empty() {
                continue;
            }
            // Each call's hints are deleted once it is acknowledged, so a later call that
            // fails does not send the earlier ones again.
            for part in self.batches(fresh.iter().collect()) {
                self.send(addr, &part).await?;
                delivered += self.delete_delivered(target, part).await?;
            }
        }
        if delivered > 0 {
            tracing::info!(peer = %target, delivered, "hints handed off");
        }
        Ok(())
    }

    /// The next page of `target`'s hints after the key `after`, which moves past it;
    /// empty at the end. A page holds at most `batch` hints, and stops once it holds a
    /// call's worth of bytes: hints of large values are read a few at a time, so the
    /// page never holds much more than one delivery call carries.
    fn next_batch(
        &self,
        target: NodeId,
        after: &mut Option<crate::key::Key>,
    ) -> Result<Vec<StoredHint>, HandoffError> {
        let mut page: Vec<StoredHint> = Vec::new();
        let mut bytes = 0usize;
        while page.len() < self.config.batch && bytes < self.config.limit.max_bytes {
            let want = (self.config.batch - page.len()).min(HINT_READ_CHUNK);
            let budget = self.config.limit.max_bytes.saturating_sub(bytes);
            let hints = self
                .local
                .scan_hints(target.0, after.as_ref(), want, budget)?;
            // A chunk cut by bytes is short but not the last: the loop's byte check ends it.
            let last_chunk =
                hints.len() < want && hints.iter().map(|h| h.raw.len()).sum::<usize>() < budget;
            if let Some(last) = hints.last() {
                *after = Some(last.key.clone());
            }
            bytes = hints
                .iter()
                .fold(bytes, |b, h| b.saturating_add(h.raw.len()));
            page.extend(hints);
            if last_chunk {
                break;
            }
        }
        Ok(page)
    }

    /// `hints` cut into calls within the configured byte limit, in order.
    fn batches<'a>(&self, hints: Vec<&'a StoredHint>) -> Vec<Vec<&'a StoredHint>> {
        batch::split(hints, self.config.limit, |h| {
            encoded_len(&(h.key.as_str(), &h.record.set))
        })
    }

    /// Merges `hints` into the node at `addr`, in one call.
    async fn send(
        &self,
        addr: std::net::SocketAddr,
        hints: &[&StoredHint],
    ) -> Result<(), HandoffError> {
        let entries = hints
            .iter()
            .map(|h| (h.key.as_str().to_owned(), h.record.set.clone()))
            .collect();
        match self.peers.call(addr, Request::Merge { entries }).await {
            Ok(Response::Merged) => Ok(()),
            Ok(Response::Error(e)) => Err(e.into()),
            Ok(other) => Err(HandoffError::BadAnswer(format!("{other:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes hints that were delivered; returns how many. A hint merged again since it
    /// was read stays, and goes out next round.
    async fn delete_delivered<'a>(
        &self,
        target: NodeId,
        hints: impl IntoIterator<Item = &'a StoredHint>,
    ) -> Result<u64, HandoffError> {
        let mut deleted = 0;
        for hint in hints {
            if self.local.delete_hint(target.0, hint).await? {
                self.stats.hints_delivered.inc();
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::cluster::membership::{Member, MemberState};

    fn member(id: u64, live: bool) -> Member {
        let unused = SocketAddr::from(([127, 0, 0, 1], 9));
        Member {
            id: NodeId(id),
            http_addr: unused,
            rpc_addr: unused,
            gossip_addr: unused,
            state: MemberState::Normal,
            live,
            vnodes: 8,
            to_move: None,
            writable: true,
        }
    }

    #[test]
    fn a_target_is_gone_once_departed_or_unknown_to_a_view_of_peers() {
        let alone = ClusterView::alone(member(1, true));
        // Just started, heard from no one: an unknown target may well be a member.
        assert!(!target_gone(&alone, NodeId(2)));

        let mut view = ClusterView::alone(member(1, true));
        view.members.insert(NodeId(2), member(2, false));
        view.members.insert(NodeId(3), member(3, true));
        // Down is not gone: its hints wait for it.
        assert!(!target_gone(&view, NodeId(2)));
        assert!(!target_gone(&view, NodeId(3)));
        // Not a member of a view that has peers: it left the view for good.
        assert!(target_gone(&view, NodeId(4)));

        // Departed wins, in a view alone too (a removal heard before any peer's state).
        let mut departed = alone.clone();
        departed.departed.insert(NodeId(2));
        assert!(target_gone(&departed, NodeId(2)));
        view.departed.insert(NodeId(3));
        assert!(target_gone(&view, NodeId(3)));
    }
}
