//! Opening a node's data dir: its store (redb, behind the write-ahead log with `--wal`),
//! refusing one whose node left or was removed, loading who
//! the node is, and starting the writer everything else submits to.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::refuse::{announce_left, refuse_if_removed};
use super::workers::Writer;
use super::NodeError;
use crate::cluster::departed::Departures;
use crate::cluster::NodeId;
use crate::config::{FsyncMode, NodeConfig, StorageKind};
use crate::identity::Identity;
use crate::kv::summary::SharedTree;
use crate::kv::{self, HintLedger, LocalKv, WriterSettings};
use crate::net::Network;
use crate::store::{MemoryStore, RedbStore, Store, StoreError, WalStore};
use crate::worker::Worker;

pub(super) fn store_error(config: &NodeConfig) -> impl Fn(StoreError) -> NodeError + '_ {
    |source| NodeError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    }
}

/// The store `config.storage` names, in `config.data_dir`.
pub(super) fn open_store(config: &NodeConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match (config.storage, config.wal) {
        (StorageKind::Memory, _) => Arc::new(MemoryStore::new()),
        (StorageKind::Redb, None) => Arc::new(RedbStore::open_with_cache(
            &config.data_dir,
            config.limits.cache_bytes,
        )?),
        (StorageKind::Redb, Some(wal)) => {
            let db = RedbStore::open_with_cache(&config.data_dir, config.limits.cache_bytes)?;
            let log = crate::store::wal::open_file(&config.data_dir)?;
            let store = WalStore::open(db, log, wal)?;
            Arc::new(store)
        }
    })
}

/// The data dir, opened: who this node is, the departed ids it keeps, and its replica
/// with the writer running.
pub(super) struct Opened {
    pub identity: Identity,
    pub node_id: NodeId,
    pub departures: Departures,
    pub local: LocalKv,
    pub writer: Arc<dyn Worker>,
}

/// Refuses a data dir whose node left (after telling the cluster once more) or was
/// removed; loads the identity, hints and hash tree; starts the writer, which everything
/// else submits to.
pub(super) async fn open<N: Network>(
    config: &NodeConfig,
    net: &N,
    store: &Arc<dyn Store>,
    shutdown: &CancellationToken,
) -> Result<Opened, NodeError> {
    let store_err = store_error(config);
    if Identity::has_left(store.as_ref()).map_err(&store_err)? {
        let id = Identity::stored_node_id(store.as_ref()).map_err(&store_err)?;
        return Err(announce_left(config, net, id, shutdown).await);
    }
    let departures = refuse_if_removed(config, store.as_ref())?;
    let mut rng = match config.rng_seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let identity = Identity::load(store.as_ref(), || rng.gen()).map_err(&store_err)?;
    // Every log line from here on names the node (the binary's formatter; see telemetry).
    crate::telemetry::set_node_id(NodeId(identity.node_id()));
    if identity.recovered_from_crash {
        tracing::warn!(actor = %identity.actor, "previous run did not shut down cleanly; new epoch");
    }
    let hints = Arc::new(HintLedger::load(store.as_ref()).map_err(&store_err)?);
    let tree: SharedTree = Arc::new(std::sync::RwLock::new(
        kv::summary::load_tree(store.as_ref()).map_err(&store_err)?,
    ));
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = kv::writer::spawn(
        store.clone(),
        WriterSettings {
            actor: identity.actor,
            dot_floor: identity.dot_floor,
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            blocking: config.blocking,
            queue: config.limits.write_queue,
            max_batch: config.limits.max_commit_batch,
            max_siblings: config.limits.max_siblings,
            max_hint_bytes: config.cluster.max_hint_bytes,
            hints: hints.clone(),
            tree: tree.clone(),
            // Only a log's sync runs beside the next commit; redb's own is a commit.
            pipeline: config.wal.is_some() && config.fsync == FsyncMode::Always,
        },
        writer_stop.clone(),
    );
    let local = LocalKv::new(store.clone(), writer, hints, tree);
    let writer = Arc::new(Writer {
        local: local.clone(),
        task: Mutex::new(Some(writer_task)),
        stop: writer_stop,
    });
    Ok(Opened {
        node_id: NodeId(identity.node_id()),
        identity,
        departures,
        local,
        writer,
    })
}
