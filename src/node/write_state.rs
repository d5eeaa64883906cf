//! Publishes in gossip whether this node's storage takes writes.

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::MembershipCtl;
use crate::kv::writable::WriteState;
use crate::worker::Worker;

/// On every change of the writer's state, tells gossip, so that coordinators route
/// writes around this node while its disk is full.
pub struct AnnounceWriteState {
    pub state: watch::Receiver<WriteState>,
    pub control: MembershipCtl,
}

#[async_trait]
impl Worker for AnnounceWriteState {
    fn name(&self) -> &'static str {
        "write-state"
    }

    fn status(&self) -> String {
        format!("storage: {}", self.state.borrow().as_str())
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut state = self.state.clone();
        // Gossip starts without the key, which says "writable": publish changes only.
        let mut published = WriteState::Writable;
        loop {
            let now = *state.borrow_and_update();
            if now != published {
                self.control.set_write_state(now).await;
                published = now;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
