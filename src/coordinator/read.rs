//! Quorum reads and read repair.
//!
//! One task per read round asks every healthy replica at once, hands the merged answer to
//! the caller as soon as R replied, then keeps collecting, for a bounded time, the
//! replies it will use to repair: every replica whose copy lacks something the others
//! have gets the merged set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{CoordError, CoordinatorParts as Inner};
use crate::cluster::membership::ClusterView;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::quorum::Tracker;
use crate::rpc::{Request, Response};
use crate::version::SiblingSet;

type Reply = (NodeId, Result<Option<SiblingSet>, String>);

/// How many replicas a read round has heard from, shared with its caller so that a caller
/// who stops waiting can say what had come in by then.
#[derive(Debug, Default)]
struct Progress {
    replied: AtomicUsize,
    failed: AtomicUsize,
}

impl Progress {
    fn replied(&self) -> usize {
        self.replied.load(Ordering::Relaxed)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

pub(super) async fn quorum_read(
    inner: &Arc<Inner>,
    view: &Arc<ClusterView>,
    key: &Key,
    r: usize,
    timeout: Duration,
) -> Result<Option<SiblingSet>, CoordError> {
    let prefs = inner.policy().read_nodes(view, key.as_bytes());
    let targets: Vec<NodeId> = prefs
        .iter()
        .copied()
        .filter(|id| view.is_healthy(*id))
        .collect();
    if targets.len() < r {
        // Fail fast: waiting cannot help while the failure detector says they are down.
        return Err(CoordError::QuorumFailed {
            needed: r,
            replied: 0,
            failed: prefs.len() - targets.len(),
            write: false,
        });
    }
    // Only this node's copy is wanted: no task, no channel.
    if targets == [view.self_id] {
        return Ok(inner.local.read(key)?);
    }
    let started = tokio::time::Instant::now();
    let progress = Arc::new(Progress::default());
    let (answer_tx, answer_rx) = oneshot::channel();
    tokio::spawn(read_round(
        inner.clone(),
        view.clone(),
        key.clone(),
        targets,
        r,
        progress.clone(),
        answer_tx,
    ));
    match tokio::time::timeout(timeout, answer_rx).await {
        Ok(Ok(result)) => result,
        // The round ended without answering (its task died): say what it had counted.
        Ok(Err(_)) => Err(CoordError::QuorumFailed {
            needed: r,
            replied: progress.replied(),
            failed: progress.failed(),
            write: false,
        }),
        Err(_) => Err(CoordError::timed_out(started, r, progress.replied(), false)),
    }
}

async fn read_round(
    inner: Arc<Inner>,
    view: Arc<ClusterView>,
    key: Key,
    targets: Vec<NodeId>,
    r: usize,
    progress: Arc<Progress>,
    answer: oneshot::Sender<Result<Option<SiblingSet>, CoordError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Reply>(targets.len());
    for id in &targets {
        tokio::spawn(read_one(
            inner.clone(),
            view.clone(),
            key.clone(),
            *id,
            tx.clone(),
        ));
    }
    drop(tx);

    let mut tracker = Tracker::new(r, targets.len());
    let mut replies: Vec<(NodeId, Option<SiblingSet>)> = Vec::with_capacity(targets.len());
    let mut answer = Some(answer);
    let repair_deadline =
        tokio::time::Instant::now() + inner.peers.rpc_timeout + inner.config.repair_wait;
    while let Ok(Some((id, result))) = tokio::time::timeout_at(repair_deadline, rx.recv()).await {
        match result {
            Ok(set) => {
                tracker.success(id);
                replies.push((id, set));
            }
            Err(e) => {
                tracing::debug!(peer = %id, error = %e, key = %key, "replica read failed");
                tracker.failure();
            }
        }
        progress
            .replied
            .store(tracker.succeeded(), Ordering::Relaxed);
        progress.failed.store(tracker.failed(), Ordering::Relaxed);
        if tracker.is_met() || tracker.is_lost() {
            if let Some(answer) = answer.take() {
                let result = if tracker.is_met() {
                    Ok(merge(&replies))
                } else {
                    Err(CoordError::QuorumFailed {
                        needed: r,
                        replied: tracker.succeeded(),
                        failed: tracker.failed(),
                        write: false,
                    })
                };
                // The caller may have timed out; the repair below still runs.
                let _ = answer.send(result);
            }
        }
    }
    repair(&inner, &view, &key, &replies).await;
}

async fn read_one(
    inner: Arc<Inner>,
    view: Arc<ClusterView>,
    key: Key,
    id: NodeId,
    tx: mpsc::Sender<Reply>,
) {
    let result = if id == view.self_id {
        inner.local.read(&key).map_err(|e| e.to_string())
    } else {
        match view.member(id) {
            None => Err("not a member".to_owned()),
            Some(m) => {
                let request = Request::Read {
                    key: key.as_str().to_owned(),
                };
                match inner.peers.call(m.rpc_addr, request).await {
                    Ok(Response::Read(set)) => Ok(set),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    let _ = tx.send((id, result)).await;
}

/// DVV sync of every reply: what the quorum holds, siblings included.
fn merge(replies: &[(NodeId, Option<SiblingSet>)]) -> Option<SiblingSet> {
    replies
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .fold(None, |acc: Option<SiblingSet>, s| {
            Some(match acc {
                None => s.clone(),
                Some(a) => a.sync(s),
            })
        })
}

/// Pushes the merged set to every replica that replied with less than it.
async fn repair(
    inner: &Arc<Inner>,
    view: &ClusterView,
    key: &Key,
    replies: &[(NodeId, Option<SiblingSet>)],
) {
    let Some(merged) = merge(replies) else { return };
    for (id, set) in replies {
        if set.as_ref().is_some_and(|s| s.descends(&merged)) {
            continue;
        }
        let repaired = if *id == view.self_id {
            inner.local.merge(key.clone(), merged.clone()).await.is_ok()
        } else if let Some(m) = view.member(*id) {
            let request = Request::Merge {
                entries: vec![(key.as_str().to_owned(), merged.clone())],
            };
            matches!(
                inner.peers.call(m.rpc_addr, request).await,
                Ok(Response::Merged)
            )
        } else {
            false
        };
        if repaired {
            inner.stats.read_repairs.inc();
            tracing::debug!(peer = %id, key = %key, "read repair");
        }
    }
}
