//! Replicated writes: apply locally, send to the other replicas in parallel, answer at W.
//!
//! A replica that is down — by the failure detector, or because the call to it failed —
//! gets a hint on a stand-in instead: the next healthy node clockwise outside the
//! preference list, or this node when there is none. W counts distinct nodes that stored
//! the write, so a hint on a node that already holds the write as a replica adds nothing.
//! Replies that come after the answer finish in the background.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CoordError, Inner};
use crate::cluster::membership::ClusterView;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::quorum::Tracker;
use crate::rpc::{Request, Response};
use crate::version::{Payload, SiblingSet, VersionVector};

/// What one replica's copy came to: stored at a node, or lost.
enum Copy {
    StoredAt(NodeId),
    Failed,
}

pub(super) async fn replicated_write(
    inner: &Arc<Inner>,
    view: &Arc<ClusterView>,
    key: Key,
    seen: Option<VersionVector>,
    payload: Payload,
    w: usize,
    deadline: Instant,
) -> Result<SiblingSet, CoordError> {
    let n = inner.effective(view).n;
    let prefs = view.ring.preference_list(key.as_bytes(), n);
    let timeout_error = |replied| CoordError::Timeout {
        after_ms: deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64,
        needed: w,
        replied,
        write: true,
    };

    // The local write first: it issues the dot, and every other replica gets its result.
    let now = inner.clock.now_ms();
    let applied = tokio::time::timeout_at(
        deadline,
        inner.local.update(key.clone(), seen, payload, now),
    )
    .await
    .map_err(|_| timeout_error(0))??;
    let set = applied.set;

    let others: Vec<NodeId> = prefs
        .iter()
        .copied()
        .filter(|id| *id != view.self_id)
        .collect();
    let mut tracker = Tracker::new(w, 1 + others.len());
    tracker.success(view.self_id);
    if others.is_empty() {
        return Ok(set);
    }

    let stand_ins = Arc::new(StandIns::new(view, &key, &prefs));
    let (tx, mut rx) = mpsc::channel(others.len());
    for target in others {
        tokio::spawn(replicate_one(
            inner.clone(),
            view.clone(),
            key.clone(),
            set.clone(),
            target,
            stand_ins.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    while !tracker.is_met() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timeout_error(tracker.succeeded())),
            Ok(None) => break,
            Ok(Some(Copy::StoredAt(id))) => tracker.success(id),
            Ok(Some(Copy::Failed)) => tracker.failure(),
        }
        if tracker.is_lost() {
            break;
        }
    }
    if tracker.is_met() {
        Ok(set)
    } else {
        Err(CoordError::QuorumFailed {
            needed: w,
            replied: tracker.succeeded(),
            failed: tracker.failed(),
            write: true,
        })
    }
}

/// Sends the set to `target`, or, if it is down or does not answer, a hint for it to a
/// stand-in.
async fn replicate_one(
    inner: Arc<Inner>,
    view: Arc<ClusterView>,
    key: Key,
    set: SiblingSet,
    target: NodeId,
    stand_ins: Arc<StandIns>,
    tx: mpsc::Sender<Copy>,
) {
    let rpc_timeout = inner.config.rpc_timeout;
    if view.is_healthy(target) {
        if let Some(m) = view.member(target) {
            let request = Request::Merge {
                entries: vec![(key.as_str().to_owned(), set.clone())],
            };
            match inner.rpc.call(m.rpc_addr, request, rpc_timeout).await {
                Ok(Response::Merged) => {
                    let _ = tx.send(Copy::StoredAt(target)).await;
                    return;
                }
                Ok(other) => tracing::warn!(peer = %target, ?other, "replica refused a write"),
                Err(e) => {
                    tracing::debug!(peer = %target, error = %e, "replica write failed; hinting")
                }
            }
        }
    }
    inner.stats.replica_write_failures.inc();
    let copy = hint(&inner, &view, &key, set, target, &stand_ins).await;
    let _ = tx.send(copy).await;
}

/// Stores a hint for `target` on the next stand-in that takes it.
async fn hint(
    inner: &Inner,
    view: &ClusterView,
    key: &Key,
    set: SiblingSet,
    target: NodeId,
    stand_ins: &StandIns,
) -> Copy {
    let rpc_timeout = inner.config.rpc_timeout;
    while let Some(stand_in) = stand_ins.next() {
        if stand_in == view.self_id {
            let now = inner.clock.now_ms();
            return match inner
                .local
                .store_hint(target.0, key.clone(), set, now)
                .await
            {
                Ok(true) => {
                    inner.stats.hints_stored.inc();
                    Copy::StoredAt(stand_in)
                }
                Ok(false) => {
                    inner.stats.hints_refused.inc();
                    Copy::Failed
                }
                Err(e) => {
                    tracing::warn!(error = %e, "storing a hint failed");
                    Copy::Failed
                }
            };
        }
        let Some(m) = view.member(stand_in) else {
            continue;
        };
        let request = Request::Hint {
            target: target.0,
            key: key.as_str().to_owned(),
            set: set.clone(),
        };
        match inner.rpc.call(m.rpc_addr, request, rpc_timeout).await {
            Ok(Response::HintStored) => return Copy::StoredAt(stand_in),
            Ok(Response::HintRefused { reason }) => {
                tracing::debug!(peer = %stand_in, reason, "stand-in refused a hint");
                return Copy::Failed;
            }
            Ok(other) => tracing::warn!(peer = %stand_in, ?other, "unexpected answer to a hint"),
            Err(e) => {
                tracing::debug!(peer = %stand_in, error = %e, "stand-in failed; trying the next")
            }
        }
    }
    Copy::Failed
}

/// Stand-ins for one write, handed out once each: the healthy nodes clockwise past the
/// preference list, then this node, which is always there.
struct StandIns(Mutex<VecDeque<NodeId>>);

impl StandIns {
    fn new(view: &ClusterView, key: &Key, prefs: &[NodeId]) -> Self {
        let mut order: VecDeque<NodeId> = view
            .ring
            .walk(key.as_bytes())
            .filter(|id| !prefs.contains(id) && view.is_healthy(*id) && *id != view.self_id)
            .collect();
        order.push_back(view.self_id);
        StandIns(Mutex::new(order))
    }

    /// The next stand-in. This node is handed out to every target once the others are
    /// used up: it can hold hints for several.
    fn next(&self) -> Option<NodeId> {
        let mut order = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match order.len() {
            0 => None,
            1 => order.front().copied(),
            _ => order.pop_front(),
        }
    }
}
