//! The node's own parts as workers: the storage writer, the RPC server, gossip, the HTTP
//! API, and the two membership chores that live beside gossip (keeping the membership in
//! the data dir, reporting seeds that never answer). Each wraps a part defined elsewhere
//! and says how it starts and stops.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::{ClusterView, Membership};
use crate::config::BlockingMode;
use crate::kv::LocalKv;
use crate::readiness::Readiness;
use crate::rpc::client::RpcClient;
use crate::rpc::frame::{RpcConfig, RpcStats};
use crate::rpc::server::RpcHandler;
use crate::store::Store;
use crate::worker::Worker;

/// Takes what a worker's single run consumes (a listener, a task handle).
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut s| s.take())
}

/// The storage writer, spawned when the node was built (everything else submits to it).
/// It stops last, once nothing can submit a write, and commits what it holds.
pub struct Writer {
    pub local: LocalKv,
    pub task: Mutex<Option<JoinHandle<()>>>,
    /// The writer's own stop signal (it was spawned before the supervisor existed).
    pub stop: CancellationToken,
}

#[async_trait]
impl Worker for Writer {
    fn name(&self) -> &'static str {
        "writer"
    }

    fn status(&self) -> String {
        format!("storage: {}", self.local.write_state().as_str())
    }

    async fn run(&self, shutdown: CancellationToken) {
        let Some(task) = take(&self.task) else {
            return;
        };
        // Cut off at its deadline, this worker is aborted: the writer must go with it, not
        // run on detached, holding the store open after the node has stopped.
        let mut task = tokio_util::task::AbortOnDropHandle::new(task);
        tokio::select! {
            _ = shutdown.cancelled() => {
                self.stop.cancel();
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "writer task failed");
                }
            }
            ended = &mut task => {
                tracing::error!(outcome = ?ended, "the writer stopped before the node did");
            }
        }
    }
}

/// The internode RPC server. When it stops, this node's own outgoing connections close
/// too: the workers that call peers have stopped by then.
pub struct RpcServer<L> {
    pub listener: Mutex<Option<L>>,
    pub handler: Arc<dyn RpcHandler>,
    pub config: RpcConfig,
    pub stats: Arc<RpcStats>,
    pub client: Arc<RpcClient>,
}

#[async_trait]
impl<L> Worker for RpcServer<L>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    fn name(&self) -> &'static str {
        "rpc-server"
    }

    fn status(&self) -> String {
        format!(
            "{} connection(s) accepted, {} request(s) served",
            self.stats.accepted.load(Ordering::Relaxed),
            self.stats.requests_served.load(Ordering::Relaxed)
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        let Some(listener) = take(&self.listener) else {
            return;
        };
        crate::rpc::server::serve(
            listener,
            self.handler.clone(),
            self.config.clone(),
            self.stats.clone(),
            shutdown,
        )
        .await;
        self.client.close_all().await;
    }
}

/// Gossip (chitchat and the view it feeds), started when the node was built: the rest of
/// the wiring needs its view.
pub struct Gossip {
    pub membership: tokio::sync::Mutex<Option<Membership>>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Whether chitchat runs, and how often it was started again (`cluster::supervise`).
    pub health: Arc<crate::cluster::supervise::GossipHealth>,
    /// Given to the membership's view refresher when it started.
    pub stop: CancellationToken,
}

#[async_trait]
impl Worker for Gossip {
    fn name(&self) -> &'static str {
        "gossip"
    }

    fn status(&self) -> String {
        let view = self.view.borrow();
        let live = view.members.values().filter(|m| m.live).count();
        format!(
            "{} member(s), {live} live; ring of {}; {:?}, restarted {} time(s)",
            view.members.len(),
            view.ring.len(),
            self.health.phase(),
            self.health.restarts.get()
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.stop.cancel();
        if let Some(membership) = self.membership.lock().await.take() {
            membership.shutdown().await;
        }
    }
}

/// The HTTP API, served by `http::serve` with its bounds on slow clients. It drains on
/// shutdown (in-flight requests finish; its phase's deadline bounds a stuck client).
pub struct Http<L> {
    pub listener: Mutex<Option<L>>,
    pub router: Mutex<Option<axum::Router>>,
    pub addr: std::net::SocketAddr,
    pub config: crate::http::serve::ServeConfig,
}

#[async_trait]
impl<L> Worker for Http<L>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    fn name(&self) -> &'static str {
        "http"
    }

    fn status(&self) -> String {
        format!("serving on {}", self.addr)
    }

    async fn run(&self, shutdown: CancellationToken) {
        let (Some(listener), Some(router)) = (take(&self.listener), take(&self.router)) else {
            return;
        };
        crate::http::serve::serve(listener, router, self.config.clone(), shutdown).await;
    }
}

/// Keeps the membership in the data dir, so a restart rejoins the ring its data belongs
/// to (see `cluster::persisted`).
pub struct KeepPersisted {
    pub store: Arc<dyn Store>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub debounce: Duration,
    pub blocking: BlockingMode,
}

#[async_trait]
impl Worker for KeepPersisted {
    fn name(&self) -> &'static str {
        "membership-persistence"
    }

    fn status(&self) -> String {
        format!(
            "writes the membership on change, at most once per {}",
            humantime::format_duration(self.debounce)
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        crate::cluster::persisted::keep_persisted(
            self.store.clone(),
            self.view.clone(),
            self.debounce,
            self.blocking,
            shutdown,
        )
        .await;
    }
}

/// Until some seed answers, keeps `/ready`'s reason on the seeds and warns about them
/// (see [`crate::readiness::report_unreached_seeds`]).
pub struct SeedReport {
    pub readiness: Arc<Readiness>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// The seeds other than this node.
    pub seeds: Vec<String>,
}

#[async_trait]
impl Worker for SeedReport {
    fn name(&self) -> &'static str {
        "seed-report"
    }

    fn status(&self) -> String {
        if self.seeds.is_empty() {
            return "no seeds but this node".to_owned();
        }
        match self.readiness.unreached_seeds() {
            Some(seeds) => format!("no seed answered yet: {}", seeds.join(", ")),
            None => "a seed answered".to_owned(),
        }
    }

    async fn run(&self, shutdown: CancellationToken) {
        crate::readiness::report_unreached_seeds(
            self.readiness.clone(),
            self.view.clone(),
            self.seeds.clone(),
            shutdown,
        )
        .await;
    }
}
