//! When a node has joined and serves: the `ready` flag behind `/ready`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::ClusterView;
use crate::cluster::wait::wait_for;
use crate::worker::Worker;

/// Sets `ready` once the node has joined: it is in its own ring and, if it was given
/// seeds, sees at least one other member live. `ready` never goes back (until the node
/// stops), so the worker is done once it is set.
pub struct TrackJoined {
    /// `AppState::ready`. The flag, not the state: the state lists the workers, and a
    /// worker holding it would keep it (and the store) alive after the node stopped.
    pub ready: Arc<AtomicBool>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// The node was given seeds other than itself.
    pub needs_peer: bool,
}

/// Whether `view` shows the node joined (see [`TrackJoined`]).
pub(super) fn has_joined(view: &ClusterView, needs_peer: bool) -> bool {
    // A peer merely listed is not enough: until the failure detector has seen one live,
    // every quorum read would fail with 503 (a restarted node did that).
    !view.rejoining
        && view.ring.contains(view.self_id)
        && (!needs_peer
            || view
                .members
                .keys()
                .any(|id| *id != view.self_id && view.is_healthy(*id)))
}

#[async_trait]
impl Worker for TrackJoined {
    fn name(&self) -> &'static str {
        "readiness"
    }

    fn status(&self) -> String {
        if self.ready.load(Ordering::Acquire) {
            "joined; ready".to_owned()
        } else {
            "waiting to join".to_owned()
        }
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut view = self.view.clone();
        let needs_peer = self.needs_peer;
        if wait_for(&mut view, |v| has_joined(v, needs_peer), &shutdown)
            .await
            .is_some()
            && !self.ready.swap(true, Ordering::AcqRel)
        {
            tracing::info!("joined the cluster; ready");
        }
    }
}
