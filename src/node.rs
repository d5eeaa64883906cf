//! A running node: opens the store, joins the cluster, serves HTTP and RPC until
//! shutdown, then stops every task in order.

use std::future::IntoFuture;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::antientropy::{AntiEntropy, AntiEntropyConfig};
use crate::cluster::departed::{DepartureKind, Departures};
use crate::cluster::membership::{
    Member, MemberState, Membership, MembershipConfig, MembershipError,
};
use crate::cluster::{persisted, NodeId};
use crate::config::{NodeConfig, StorageKind};
use crate::coordinator::{Coordinator, CoordinatorConfig, CoordinatorParts};
use crate::handoff::{Handoff, HandoffConfig};
use crate::http::{self, AppState};
use crate::identity::Identity;
use crate::kv::summary::SharedTree;
use crate::kv::{self, HintLedger, LocalKv, WriterSettings};
use crate::net::{LimitedListener, Network};
use crate::peer_service::PeerService;
use crate::readiness::Readiness;
use crate::rpc::client::{connector_for, RpcClient};
use crate::rpc::frame::{RpcConfig, RpcStats};
use crate::stats::ReplicationStats;
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

/// How long in-flight requests get to finish once shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// At most one write of the persisted membership per this interval.
const PERSIST_DEBOUNCE: Duration = Duration::from_secs(1);

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

/// A node that left, started again on its old data dir, refuses to serve its stale data,
/// but first gossips `left` for ten rounds: it may have crashed after recording the leave
/// and before gossip carried it, and then its peers would keep it as a dead `leaving`
/// member, in the ring, forever (found by the simulation, seed 7071 of its churn mix).
async fn announce_left<N: Network>(
    config: &NodeConfig,
    net: &N,
    id: Option<u64>,
    shutdown: &CancellationToken,
) -> NodeError {
    let left = NodeError::Left {
        dir: config.data_dir.display().to_string(),
    };
    let Some(id) = id else { return left };
    let addrs = &config.addrs;
    let Ok(socket) = net.bind_gossip(addrs.gossip).await else {
        return left;
    };
    let bound = socket.local_addr().unwrap_or(addrs.gossip);
    let host = addrs.advertise_host;
    let addr = |what, a: SocketAddr| advertised(what, a, host).unwrap_or(a);
    let me = Member {
        id: NodeId(id),
        http_addr: addr("HTTP", addrs.http),
        rpc_addr: addr("RPC", addrs.rpc),
        gossip_addr: addr("gossip", bound),
        state: MemberState::Left,
        live: true,
        vnodes: config.cluster.vnodes,
        to_move: None,
        writable: true,
    };
    let tasks = CancellationToken::new();
    let cluster = &config.cluster;
    let started = Membership::start(
        MembershipConfig {
            cluster_id: cluster.cluster_id.clone(),
            me,
            gossip_listen: bound,
            seeds: cluster.seeds.clone(),
            gossip_interval: cluster.gossip_interval,
            dead_node_grace: cluster.dead_node_grace,
            phi_threshold: cluster.phi_threshold,
            generation: net.clock().now_ms(),
            persisted: None,
            was_member: false,
        },
        socket,
        tasks.clone(),
    )
    .await;
    if started.is_ok() {
        tracing::warn!("this node left its cluster; telling the cluster once more before stopping");
        tokio::select! {
            _ = tokio::time::sleep(cluster.gossip_interval * 10) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    tasks.cancel();
    left
}

/// The address peers use: the bound one, with the advertised host when bound to a
/// wildcard.
fn advertised(
    what: &'static str,
    bound: SocketAddr,
    host: Option<IpAddr>,
) -> Result<SocketAddr, NodeError> {
    match host {
        Some(ip) => Ok(SocketAddr::new(ip, bound.port())),
        None if bound.ip().is_unspecified() => Err(NodeError::NoAdvertise { what, addr: bound }),
        None => Ok(bound),
    }
}

/// Runs a node until `shutdown` is cancelled. `on_ready` is called once every listener
/// is bound and the node serves.
pub async fn run<N: Network>(
    config: NodeConfig,
    net: N,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Started),
) -> Result<(), NodeError> {
    let store: Arc<dyn Store> = match config.storage {
        StorageKind::Redb => {
            Arc::new(
                RedbStore::open(&config.data_dir).map_err(|source| NodeError::Store {
                    dir: config.data_dir.display().to_string(),
                    source,
                })?,
            )
        }
        StorageKind::Memory => Arc::new(MemoryStore::new()),
    };
    run_with_store(config, net, store, shutdown, on_ready).await
}

/// A node whose frames cannot carry its largest sibling set could never replicate it:
/// refuse to start rather than fail on every batch that holds it.
fn check_limits(config: &NodeConfig) -> Result<(), NodeError> {
    let limits = &config.limits;
    crate::rpc::batch::check_frame_fits(
        limits.max_frame_bytes,
        limits.max_value_bytes,
        limits.max_siblings,
    )?;
    Ok(())
}

/// [`run`] on a store the caller opened: the simulation puts redb on its simulated disk.
pub async fn run_with_store<N: Network>(
    config: NodeConfig,
    net: N,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Started),
) -> Result<(), NodeError> {
    check_limits(&config)?;
    let net = Arc::new(net);
    let store_err = |source| NodeError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    };
    if Identity::has_left(store.as_ref()).map_err(store_err)? {
        let id = Identity::stored_node_id(store.as_ref()).map_err(store_err)?;
        return Err(announce_left(&config, net.as_ref(), id, &shutdown).await);
    }
    let departures = refuse_if_removed(&config, store.as_ref())?;
    let mut rng = match config.rng_seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let identity = Identity::load(store.as_ref(), || rng.gen()).map_err(store_err)?;
    if identity.recovered_from_crash {
        tracing::warn!(actor = %identity.actor, "previous run did not shut down cleanly; new epoch");
    }
    let node_id = NodeId(identity.node_id());
    let hints = Arc::new(HintLedger::load(store.as_ref()).map_err(store_err)?);
    let tree: SharedTree = Arc::new(std::sync::RwLock::new(
        kv::summary::load_tree(store.as_ref()).map_err(store_err)?,
    ));

    // Background tasks stop in two steps: `tasks` (gossip, handoff, RPC) when HTTP has
    // drained, and the writer last, after everything that could still write.
    let tasks = CancellationToken::new();
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
        },
        writer_stop.clone(),
    );
    let local = LocalKv::new(store.clone(), writer, hints, tree);

    let bind_err = |what, addr| move |source| NodeError::Bind { what, addr, source };
    let addrs = &config.addrs;
    let http_listener = net
        .bind(addrs.http)
        .await
        .map_err(bind_err("HTTP", addrs.http))?;
    let rpc_listener = net
        .bind(addrs.rpc)
        .await
        .map_err(bind_err("RPC", addrs.rpc))?;
    let gossip_socket = net
        .bind_gossip(addrs.gossip)
        .await
        .map_err(bind_err("gossip", addrs.gossip))?;
    let local_addr =
        |l: &N::Listener| axum::serve::Listener::local_addr(l).map_err(NodeError::Serve);
    let http_bound = local_addr(&http_listener)?;
    let rpc_bound = local_addr(&rpc_listener)?;
    let gossip_bound = gossip_socket
        .local_addr()
        .map_err(|e| NodeError::Serve(std::io::Error::other(e.to_string())))?;
    let host = addrs.advertise_host;
    // A node that never finished joining a cluster, and was given one to join, starts as
    // a joiner: it must pull its ranges before it serves reads.
    let alone = seeds_are_only(
        &config.cluster.seeds,
        advertised("gossip", gossip_bound, host)?,
    );
    let joined = Identity::has_joined(store.as_ref()).map_err(store_err)?;
    let joining = !alone && !joined;
    if alone && !joined {
        Identity::mark_joined(store.as_ref()).map_err(store_err)?;
    }
    let me = Member {
        id: node_id,
        http_addr: advertised("HTTP", http_bound, host)?,
        rpc_addr: advertised("RPC", rpc_bound, host)?,
        gossip_addr: advertised("gossip", gossip_bound, host)?,
        state: if joining {
            MemberState::Joining
        } else {
            MemberState::Normal
        },
        live: true,
        vnodes: config.cluster.vnodes,
        to_move: None,
        writable: true,
    };
    let cluster = &config.cluster;
    // The ring this node's data belongs to: it starts from it, rejoining, rather than
    // from "a cluster of myself" (see `cluster::agreement`).
    let persisted = persisted::load(store.as_ref());
    let membership = Membership::start(
        MembershipConfig {
            cluster_id: cluster.cluster_id.clone(),
            me: me.clone(),
            gossip_listen: gossip_bound,
            seeds: cluster.seeds.clone(),
            gossip_interval: cluster.gossip_interval,
            dead_node_grace: cluster.dead_node_grace,
            phi_threshold: cluster.phi_threshold,
            generation: net.clock().now_ms(),
            persisted,
            was_member: joined && !alone,
        },
        gossip_socket,
        tasks.clone(),
    )
    .await?;

    let readiness = Arc::new(Readiness::default());
    let rpc_stats = Arc::new(RpcStats::default());
    let rpc_config = RpcConfig {
        max_frame_bytes: config.limits.max_frame_bytes,
        ..RpcConfig::default()
    };
    let batch = crate::rpc::BatchLimit::for_frame(rpc_config.max_frame_bytes);
    let rpc = Arc::new(RpcClient::new(
        connector_for(net.clone()),
        rpc_config.clone(),
        rpc_stats.clone(),
    ));
    let stats = Arc::new(ReplicationStats::default());
    let coord = Coordinator::new(CoordinatorParts {
        local: local.clone(),
        view: membership.watch(),
        rpc: rpc.clone(),
        clock: net.clock(),
        stats: stats.clone(),
        config: CoordinatorConfig {
            replication: config.replication.into(),
            rpc_timeout: cluster.rpc_timeout,
            repair_wait: cluster.repair_wait,
        },
    });
    let peer_service = Arc::new(PeerService {
        node_id,
        local: local.clone(),
        view: membership.watch(),
        coordinator: coord.clone(),
        clock: net.clock(),
        stats: stats.clone(),
        readiness: readiness.clone(),
        batch,
    });
    let rpc_server = tokio::spawn(crate::rpc::server::serve(
        rpc_listener,
        peer_service,
        rpc_config,
        rpc_stats.clone(),
        tasks.clone(),
    ));
    let handoff = tokio::spawn(
        Handoff {
            local: local.clone(),
            view: membership.watch(),
            rpc: rpc.clone(),
            clock: net.clock(),
            stats: stats.clone(),
            config: HandoffConfig {
                interval: cluster.handoff_interval,
                batch: 128,
                limit: batch,
                max_age: cluster.max_hint_age,
                rpc_timeout: cluster.rpc_timeout,
                replication: config.replication.into(),
            },
        }
        .run(tasks.clone()),
    );

    let ae = AntiEntropy {
        local: local.clone(),
        view: membership.watch(),
        rpc: rpc.clone(),
        stats: stats.clone(),
        clock: net.clock(),
        config: AntiEntropyConfig {
            interval: cluster.anti_entropy_interval,
            replication: config.replication.into(),
            rpc_timeout: cluster.rpc_timeout,
            tombstone_grace: cluster.tombstone_grace,
            settle: cluster.gossip_interval * 10,
            batch,
        },
    };
    // An interval of zero turns anti-entropy off (tests of hints and read repair alone).
    let anti_entropy = tokio::spawn({
        let (ae, tasks) = (ae.clone(), tasks.clone());
        async move {
            if !ae.config.interval.is_zero() {
                ae.run(tasks).await;
            }
        }
    });
    let admin = Arc::new(
        Admin::new(
            membership.control(),
            ae,
            store.clone(),
            shutdown.clone(),
            tasks.clone(),
            cluster.gossip_interval,
        )
        .with_departures(departures, readiness.clone(), !alone),
    );
    let join = joining.then(|| tokio::spawn(admin.clone().join()));
    let departures_task = tokio::spawn(admin.clone().keep_departures());
    let seeds_task = tokio::spawn(crate::readiness::report_unreached_seeds(
        readiness.clone(),
        membership.watch(),
        other_seeds(&cluster.seeds, me.gossip_addr),
        tasks.clone(),
    ));

    let state = Arc::new(AppState {
        admin,
        coord,
        local: local.clone(),
        stats: stats.clone(),
        rpc_stats,
        config: config.clone(),
        cluster_id: cluster.cluster_id.clone(),
        ready: Default::default(),
        readiness,
    });
    let persist = tokio::spawn(persisted::keep_persisted(
        store.clone(),
        membership.watch(),
        PERSIST_DEBOUNCE,
        config.blocking,
        tasks.clone(),
    ));
    // Reads check records as they go; the scrub checks the ones nobody reads, at the pace
    // of anti-entropy, which then restores what it dropped.
    let scrub = tokio::spawn(scrub(
        local.clone(),
        cluster.anti_entropy_interval,
        tasks.clone(),
    ));
    let write_state = tokio::spawn(announce_write_state(
        local.watch_write_state(),
        membership.control(),
        tasks.clone(),
    ));
    let readiness = tokio::spawn(track_readiness(
        state.clone(),
        membership.watch(),
        !alone,
        tasks.clone(),
    ));

    let listener = LimitedListener::new(http_listener, config.limits.max_connections);
    let started = Started {
        http_addr: http_bound,
        rpc_addr: rpc_bound,
        gossip_addr: gossip_bound,
        node_id: node_id.0,
    };
    tracing::info!(
        http = %me.http_addr,
        rpc = %me.rpc_addr,
        gossip = %me.gossip_addr,
        node_id = %node_id,
        actor = %identity.actor,
        fsync = ?config.fsync,
        storage = ?config.storage,
        seeds = ?cluster.seeds,
        "node started"
    );
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
    tracing::info!("HTTP stopped; stopping background tasks");
    state.ready.store(false, Ordering::Release);
    tasks.cancel();
    if let Some(join) = join {
        let _ = join.await;
    }
    for (name, task) in [
        ("handoff", handoff),
        ("readiness", readiness),
        ("membership persistence", persist),
        ("write state", write_state),
        ("scrub", scrub),
        ("anti-entropy", anti_entropy),
        ("departures", departures_task),
        ("seed report", seeds_task),
    ] {
        if let Err(e) = task.await {
            tracing::error!(task = name, error = %e, "task failed");
        }
    }
    if let Err(e) = rpc_server.await {
        tracing::error!(error = %e, "RPC server task failed");
    }
    rpc.close_all().await;
    membership.shutdown().await;
    writer_stop.cancel();
    if let Err(e) = writer_task.await {
        tracing::error!(error = %e, "writer task failed");
    }
    Identity::mark_clean_shutdown(store.as_ref()).map_err(store_err)?;
    tracing::info!("node stopped");
    if state.readiness.refused_start() {
        return Err(NodeError::Removed {
            dir: config.data_dir.display().to_string(),
        });
    }
    served
}

/// Refuses to start a node its cluster removed (the mark it stored when it heard, or its
/// own id among the removals it keeps); otherwise returns the departed ids it keeps.
fn refuse_if_removed(config: &NodeConfig, store: &dyn Store) -> Result<Departures, NodeError> {
    let store_err = |source| NodeError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    };
    let removed = NodeError::Removed {
        dir: config.data_dir.display().to_string(),
    };
    if Identity::has_removed(store).map_err(store_err)? {
        return Err(removed);
    }
    let departures = Departures::load(store).map_err(store_err)?;
    if let Some(id) = Identity::stored_node_id(store).map_err(store_err)? {
        if departures.get(NodeId(id)).map(|d| d.kind) == Some(DepartureKind::Removed) {
            Identity::mark_removed(store).map_err(store_err)?;
            return Err(removed);
        }
    }
    Ok(departures)
}

/// The seeds that are not this node itself: the ones a node must hear from to have joined.
fn other_seeds(seeds: &[String], me: SocketAddr) -> Vec<String> {
    seeds
        .iter()
        .filter(|s| s.parse::<SocketAddr>() != Ok(me))
        .cloned()
        .collect()
}

/// Records checked per scrub round: a bounded read, a small share of a round's work.
const SCRUB_ROWS: usize = 4096;

/// Walks the data table `SCRUB_ROWS` records per `interval`, round and round, checking
/// each (see [`LocalKv::scrub`]). An interval of zero turns it off, as it does
/// anti-entropy, which is what repairs what the scrub finds.
async fn scrub(local: LocalKv, interval: Duration, shutdown: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut cursor: Option<Vec<u8>> = None;
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match local.scrub(cursor.as_deref(), SCRUB_ROWS) {
            Ok((next, corrupt)) => {
                if corrupt > 0 {
                    tracing::warn!(
                        corrupt,
                        "scrub found corrupt records; anti-entropy restores them"
                    );
                }
                cursor = next;
            }
            Err(e) => {
                tracing::warn!(error = %e, "scrub failed; starting over next round");
                cursor = None;
            }
        }
    }
}

/// Publishes in gossip whether this node's storage takes writes, on every change, so that
/// coordinators route writes around it while its disk is full.
async fn announce_write_state(
    mut state: tokio::sync::watch::Receiver<kv::writable::WriteState>,
    control: crate::cluster::membership::MembershipCtl,
    shutdown: CancellationToken,
) {
    // Gossip starts without the key, which says "writable": publish changes only.
    let mut published = kv::writable::WriteState::Writable;
    loop {
        let now = *state.borrow_and_update();
        if now != published {
            control.set_write_state(now).await;
            published = now;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Whether every seed is this node itself (the first node of a cluster may list itself).
fn seeds_are_only(seeds: &[String], me: SocketAddr) -> bool {
    seeds
        .iter()
        .all(|s| s.parse::<SocketAddr>().is_ok_and(|a| a == me))
}

/// Ready once the node has joined: it is in its own ring and, if it was given seeds, sees
/// at least one other member live.
async fn track_readiness(
    state: Arc<AppState>,
    mut view: tokio::sync::watch::Receiver<Arc<crate::cluster::membership::ClusterView>>,
    needs_peer: bool,
    shutdown: CancellationToken,
) {
    loop {
        let joined = {
            let v = view.borrow_and_update();
            // A peer merely listed is not enough: until the failure detector has seen one
            // live, every quorum read would fail with 503 (a restarted node did that).
            !v.rejoining
                && v.ring.contains(v.self_id)
                && (!needs_peer
                    || v.members
                        .keys()
                        .any(|id| *id != v.self_id && v.is_healthy(*id)))
        };
        if joined && !state.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("joined the cluster; ready");
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
