//! Gossip under supervision: when chitchat's task ends (a panic on a datagram, a broken
//! socket), it is started again on the same address, under a new generation, with this
//! node's own keys; the restarts are counted and the node reports not ready until the new
//! instance has caught up with its peers ([`GossipHealth`]).
//!
//! chitchat 0.13 asserts on its input: a delta whose `SetMaxVersion` is below one of its
//! own key versions panics in `NodeState::apply_delta` (`state.rs:237`), inside the
//! spawned task (see `tests/chitchat_assertion.rs`). Without a keeper the node lived on
//! with its gossip dead, answering `/ready` 200 while its peers marked it down.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::transport::Socket;
use chitchat::{Chitchat, ChitchatHandle};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::stats::Counter;

/// Binds the gossip socket again, on the address the node advertises (the `Network`
/// seam's `bind_gossip`, so the simulation can do it too).
pub type Rebind = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Socket>>> + Send>> + Send + Sync,
>;

/// The first wait before binding again after a failed bind; it doubles up to the last.
const REBIND_BACKOFF: Duration = Duration::from_millis(50);
const REBIND_BACKOFF_MAX: Duration = Duration::from_secs(2);

const RUNNING: u8 = 0;
const DOWN: u8 = 1;
const CATCHING_UP: u8 = 2;

/// Whether gossip runs, for `/ready`, `/metrics` and `/debug/workers`.
#[derive(Debug, Default)]
pub struct GossipHealth {
    phase: AtomicU8,
    /// Times chitchat's task ended, or was stopped to shed state, and was started again.
    pub restarts: Counter,
    /// Asks the keeper to start gossip again now (the id bound was passed; see
    /// `gossip_guard`).
    restart: tokio::sync::Notify,
    /// The bound on the ids gossip tracks, and what it dropped (for `/metrics`).
    pub guard: Arc<super::gossip_guard::GossipGuard>,
}

/// What [`GossipHealth`] says about gossip now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipPhase {
    Running,
    /// Its task ended; it is being started again.
    Down,
    /// Started again, and has not yet heard of every member the view holds: the view
    /// stays as it was until it has (a fresh instance knows no one, and a view built from
    /// it would be a cluster of this node alone).
    CatchingUp,
}

impl GossipHealth {
    pub fn new(guard: Arc<super::gossip_guard::GossipGuard>) -> Self {
        GossipHealth {
            guard,
            ..GossipHealth::default()
        }
    }

    pub fn phase(&self) -> GossipPhase {
        match self.phase.load(Ordering::Acquire) {
            RUNNING => GossipPhase::Running,
            DOWN => GossipPhase::Down,
            _ => GossipPhase::CatchingUp,
        }
    }

    pub fn is_running(&self) -> bool {
        self.phase() == GossipPhase::Running
    }

    /// Starts gossip again, with a fresh state (see `gossip_guard`).
    pub(crate) fn request_restart(&self) {
        self.restart.notify_one();
    }

    pub(crate) fn set(&self, phase: GossipPhase) {
        let code = match phase {
            GossipPhase::Running => RUNNING,
            GossipPhase::Down => DOWN,
            GossipPhase::CatchingUp => CATCHING_UP,
        };
        self.phase.store(code, Ordering::Release);
    }
}

/// The chitchat instance now: every reader of gossip state (the view refresher, the
/// control that publishes this node's keys) goes through it, so a restart swaps it for
/// all of them at once.
#[derive(Clone)]
pub(crate) struct Current(Arc<RwLock<Arc<Mutex<Chitchat>>>>);

impl Current {
    pub(crate) fn new(chitchat: Arc<Mutex<Chitchat>>) -> Self {
        Current(Arc::new(RwLock::new(chitchat)))
    }

    pub(crate) fn get(&self) -> Arc<Mutex<Chitchat>> {
        // The lock guards one Arc swap; a panic cannot leave it half done.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, chitchat: Arc<Mutex<Chitchat>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = chitchat;
    }
}

/// This node's own keys (what it publishes), to start the next instance with.
async fn own_keys(chitchat: &Mutex<Chitchat>) -> Vec<(String, String)> {
    let mut c = chitchat.lock().await;
    c.self_node_state()
        .key_values()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Starts chitchat again: given the keys to publish, a fresh socket and the generation to
/// use (above every earlier one), returns the new handle.
pub(crate) trait Respawn: Send + Sync + 'static {
    fn spawn(
        &self,
        keys: Vec<(String, String)>,
        socket: Box<dyn Socket>,
        generation: u64,
    ) -> impl Future<Output = anyhow::Result<ChitchatHandle>> + Send;
}

/// Watches `handle` until `stop`; whenever its task ends, starts it again (see the
/// module doc). Shuts the current instance down on `stop`.
pub(crate) async fn keep<R: Respawn>(
    mut handle: ChitchatHandle,
    mut generation: u64,
    current: Current,
    respawn: R,
    rebind: Option<Rebind>,
    health: Arc<GossipHealth>,
    stop: CancellationToken,
) {
    loop {
        let ended = handle.termination_watcher();
        let end = tokio::select! {
            _ = stop.cancelled() => {
                if let Err(e) = handle.shutdown().await {
                    tracing::warn!(error = %e, "gossip did not shut down cleanly");
                }
                return;
            }
            end = ended => end,
            () = health.restart.notified() => {
                // Shut down first: its socket must be closed before the address is bound
                // again.
                let _ = handle.shutdown().await;
                Ok(())
            }
        };
        health.set(GossipPhase::Down);
        health.restarts.inc();
        let restarts = health.restarts.get();
        let Some(rebind) = &rebind else {
            tracing::error!(error = ?end, "gossip stopped, and this node cannot start it again; it reports not ready");
            stop.cancelled().await;
            return;
        };
        tracing::error!(error = ?end, restarts, "gossip stopped; starting it again on the same address");
        let old = current.get();
        let keys = own_keys(&old).await;
        let mut backoff = REBIND_BACKOFF;
        let next = loop {
            // A new generation: peers hold this node's old one at versions the new
            // instance starts below, and would ignore its keys under the old one.
            generation = generation.saturating_add(1);
            let attempt = async {
                let socket = rebind().await?;
                respawn
                    .spawn(keys.clone(), socket, generation)
                    .await
                    .map_err(io::Error::other)
            };
            match attempt.await {
                Ok(next) => break next,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "starting gossip again failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(REBIND_BACKOFF_MAX);
                }
            }
        };
        current.set(next.chitchat());
        // Keys published on the old instance while the new one was starting.
        let late = own_keys(&old).await;
        if late != keys {
            let chitchat = next.chitchat();
            let mut c = chitchat.lock().await;
            for (k, v) in late {
                if c.self_node_state().get(&k) != Some(v.as_str()) {
                    c.self_node_state().set(k, v);
                }
            }
        }
        health.set(GossipPhase::CatchingUp);
        tracing::warn!(
            generation,
            restarts,
            "gossip started again; catching up with peers"
        );
        handle = next;
    }
}
