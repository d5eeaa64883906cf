//! A running node. [`Node::build`] wires one: it opens the identity and the writer, binds
//! the listeners, starts gossip and makes every worker. [`Node::run`] starts the workers,
//! serves until shutdown, then stops them phase by phase (see [`crate::worker`]).
//!
//! - `build`: the wiring, in the order each part needs the others.
//! - `open`: the data dir opened: identity, departed ids, the writer started.
//! - `addrs`: what the node advertises, and its gossip settings.
//! - `refuse`: a data dir whose node left or was removed does not serve again.
//! - `workers`: the writer, the RPC server, gossip, the HTTP API and the membership
//!   chores, as workers.
//! - `joined`, `scrub`, `write_state`: the node's own small workers.

mod addrs;
mod build;
mod joined;
mod open;
mod refuse;
mod scrub;
mod workers;
mod write_state;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::membership::MembershipError;
use crate::config::NodeConfig;
use crate::http::AppState;
use crate::identity::Identity;
use crate::net::Network;
use crate::store::{Store, StoreError};
use crate::version::Actor;
use crate::worker::{Phase, Supervisor, Worker};

/// How long in-flight requests get to finish once shutdown starts. Handlers all have
/// timeouts, but shutdown must not hang on a stuck client.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Background workers notice their token at every wait, but a call already sent runs to
/// its `--rpc-timeout`: their phase gets that, and this much more.
const BACKGROUND_STOP_SLACK: Duration = Duration::from_secs(5);
/// The RPC server's connections and gossip watch their token at every await: this is
/// far more than they need.
const NETWORK_STOP_DEADLINE: Duration = Duration::from_secs(10);
/// The writer's last group commit and its sync. A disk slower than this is failing; the
/// node is then not marked clean, so its next start takes a new epoch.
const WRITER_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How long `phase` gets to stop.
fn stop_deadline(phase: Phase, rpc_timeout: Duration) -> Duration {
    match phase {
        Phase::Http => DRAIN_DEADLINE,
        Phase::Background => rpc_timeout.saturating_add(BACKGROUND_STOP_SLACK),
        Phase::Network => NETWORK_STOP_DEADLINE,
        Phase::Writer => WRITER_STOP_DEADLINE,
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("opening the store in {dir}: {source}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} listens on {addr}, a wildcard address: give --advertise-host so peers can reach it"
    )]
    NoAdvertise {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("the node of {dir} left its cluster; its data is stale. Start with a fresh --data-dir to join again")]
    Left { dir: String },
    #[error(transparent)]
    Gossip(#[from] MembershipError),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the node of {dir} was removed from its cluster; its data is stale. Start with a fresh --data-dir to join again")]
    Removed { dir: String },
    #[error(transparent)]
    FrameTooSmall(#[from] crate::rpc::batch::FrameTooSmall),
}

/// What a started node tells its caller.
#[derive(Clone, Debug)]
pub struct Started {
    pub http_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub node_id: u64,
}

/// A wired node, ready to run: everything is bound and connected, and its workers are
/// made but not started.
pub struct Node {
    config: NodeConfig,
    store: Arc<dyn Store>,
    state: Arc<AppState>,
    started: Started,
    /// The addresses peers are told, for the log line that says the node started.
    advertised: addrs::Advertised,
    actor: Actor,
    shutdown: CancellationToken,
    workers: Vec<(Phase, Arc<dyn Worker>)>,
    /// Where the HTTP worker leaves the error it failed with, if it did.
    http_error: Arc<Mutex<Option<std::io::Error>>>,
}

/// Runs a node until `shutdown` is cancelled. `on_ready` is called once every listener
/// is bound and the node serves.
pub async fn run<N: Network>(
    config: NodeConfig,
    net: N,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Started),
) -> Result<(), NodeError> {
    let store = open::open_store(&config).map_err(open::store_error(&config))?;
    run_with_store(config, net, store, shutdown, on_ready).await
}

/// [`run`] on a store the caller opened: the simulation puts redb on its simulated disk.
pub async fn run_with_store<N: Network>(
    config: NodeConfig,
    net: N,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Started),
) -> Result<(), NodeError> {
    Node::build(config, net, store, shutdown)
        .await?
        .run(on_ready)
        .await
}

impl Node {
    /// Where the node listens, and its id.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Starts every worker, calls `on_ready`, serves until shutdown, then stops the
    /// workers phase by phase: HTTP drains, then the background work, then the RPC server
    /// and gossip, and the writer last.
    pub async fn run(self, on_ready: impl FnOnce(&Started)) -> Result<(), NodeError> {
        let mut supervisor = Supervisor::new(self.state.workers.clone());
        supervisor.start_all(self.workers);
        let cluster = &self.config.cluster;
        tracing::info!(
            http = %self.advertised.http,
            rpc = %self.advertised.rpc,
            gossip = %self.advertised.gossip,
            node_id = %crate::cluster::NodeId(self.started.node_id),
            actor = %self.actor,
            fsync = ?self.config.fsync,
            storage = ?self.config.storage,
            seeds = ?cluster.seeds,
            "node started"
        );
        on_ready(&self.started);

        self.shutdown.cancelled().await;
        let mut writer_stopped = true;
        for phase in Phase::START_ORDER.into_iter().rev() {
            let stopped = supervisor
                .stop_phase(phase, stop_deadline(phase, cluster.rpc_timeout))
                .await;
            match phase {
                Phase::Http => {
                    tracing::info!("HTTP stopped; stopping background tasks");
                    self.state.ready.store(false, Ordering::Release);
                }
                Phase::Writer => writer_stopped = stopped.clean(),
                Phase::Network | Phase::Background => {}
            }
        }
        let dir = || self.config.data_dir.display().to_string();
        // Clean only if the writer finished its last commit: a writer cut off may have
        // issued dots it never synced, and the next start must then take a new epoch.
        if writer_stopped {
            Identity::mark_clean_shutdown(self.store.as_ref())
                .map_err(|source| NodeError::Store { dir: dir(), source })?;
        } else {
            tracing::error!("the writer did not stop in time; the next start takes a new epoch");
        }
        tracing::info!("node stopped");
        if self.state.readiness.refused_start() {
            return Err(NodeError::Removed { dir: dir() });
        }
        let failed = self.http_error.lock().ok().and_then(|mut e| e.take());
        match failed {
            Some(e) => Err(NodeError::Serve(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioNetwork;
    use crate::store::MemoryStore;

    /// A node that stopped holds nothing: every worker, and the store with them, is
    /// dropped. redb closes its file cleanly only on drop, and a worker that kept the
    /// HTTP state (which lists the workers) alive once made every restart a repair.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_node_lets_go_of_its_store_and_listed_every_worker() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let shutdown = CancellationToken::new();
        let node = Node::build(
            NodeConfig::for_test(),
            TokioNetwork,
            store.clone(),
            shutdown.clone(),
        )
        .await
        .expect("build");
        let workers = node.state.workers.clone();
        let stop = shutdown.clone();
        let ran = tokio::spawn(node.run(move |_| stop.cancel()));
        tokio::time::timeout(Duration::from_secs(60), ran)
            .await
            .expect("the node stops within its deadlines")
            .expect("run task")
            .expect("run");
        let listed = workers.list();
        assert!(listed.len() >= 15, "{listed:?}");
        assert!(
            listed.iter().all(|w| w.state == "stopped"),
            "every worker stopped in time: {listed:?}"
        );
        drop(workers);
        assert_eq!(Arc::strong_count(&store), 1, "the store is still held");
    }
}
