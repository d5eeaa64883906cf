//! A running node: opens the store, starts the writer, serves HTTP until shutdown, then
//! drains and closes in order.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, StorageKind};
use crate::coordinator::Coordinator;
use crate::http::{self, AppState};
use crate::identity::Identity;
use crate::kv::{self, LocalKv, WriterSettings};
use crate::net::{LimitedListener, Network};
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

/// How long in-flight requests get to finish once shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

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
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// What a started node tells its caller.
#[derive(Clone, Debug)]
pub struct Started {
    pub http_addr: SocketAddr,
    pub node_id: u64,
}

/// Runs a node until `shutdown` is cancelled. `on_ready` is called once the listener is
/// bound and the node serves.
pub async fn run<N: Network>(
    config: NodeConfig,
    http_addr: SocketAddr,
    net: N,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Started),
) -> Result<(), NodeError> {
    let store_err = |source| NodeError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    };
    let store: Arc<dyn Store> = match config.storage {
        StorageKind::Redb => Arc::new(RedbStore::open(&config.data_dir).map_err(store_err)?),
        StorageKind::Memory => Arc::new(MemoryStore::new()),
    };
    let identity = Identity::load(store.as_ref(), rand::random).map_err(store_err)?;
    if identity.recovered_from_crash {
        tracing::warn!(actor = %identity.actor, "previous run did not shut down cleanly; new epoch");
    }

    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = kv::writer::spawn(
        store.clone(),
        WriterSettings {
            actor: identity.actor,
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            blocking: config.blocking,
            queue: config.limits.write_queue,
            max_batch: config.limits.max_commit_batch,
            max_siblings: config.limits.max_siblings,
        },
        writer_stop.clone(),
    );
    let coord = Coordinator::new(
        LocalKv::new(store.clone(), writer),
        config.replication,
        net.clock(),
    );
    let state = Arc::new(AppState {
        coord,
        config: config.clone(),
        ready: Default::default(),
    });

    let listener = net
        .bind(http_addr)
        .await
        .map_err(|source| NodeError::Bind {
            what: "HTTP",
            addr: http_addr,
            source,
        })?;
    let bound = axum::serve::Listener::local_addr(&listener).map_err(NodeError::Serve)?;
    let listener = LimitedListener::new(listener, config.limits.max_connections);
    let started = Started {
        http_addr: bound,
        node_id: identity.node_id(),
    };
    tracing::info!(
        http = %bound,
        node_id = format_args!("{:016x}", started.node_id),
        actor = %identity.actor,
        fsync = ?config.fsync,
        storage = ?config.storage,
        "node started"
    );
    state.ready.store(true, Ordering::Release);
    on_ready(&started);

    let graceful = shutdown.clone();
    let serve = axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(async move { graceful.cancelled().await });
    let served = tokio::select! {
        r = serve.into_future() => r.map_err(NodeError::Serve),
        // Handlers all have timeouts, but shutdown must not hang on a stuck client.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN_DEADLINE).await } => {
            tracing::warn!("requests still in flight after the drain deadline; closing");
            Ok(())
        }
    };
    tracing::info!("HTTP stopped; committing queued writes");
    state.ready.store(false, Ordering::Release);
    writer_stop.cancel();
    if let Err(e) = writer_task.await {
        tracing::error!(error = %e, "writer task failed");
    }
    Identity::mark_clean_shutdown(store.as_ref()).map_err(store_err)?;
    tracing::info!("node stopped");
    served
}
