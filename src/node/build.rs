//! [`Node::build`]: the wiring of a node, step by step. Nothing here serves yet: the
//! writer and gossip start (the rest needs the writer's handle and gossip's view), and
//! everything else is made into a worker for [`Node::run`] to start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::addrs::{self, advertised, member, membership_config, Advertised};
use super::joined::TrackJoined;
use super::open::{open, store_error, Opened};
use super::scrub::Scrub;
use super::workers::{Gossip, Http, KeepPersisted, RpcServer, SeedReport};
use super::write_state::AnnounceWriteState;
use super::{Node, NodeError, Started};
use crate::admin::{Admin, DeparturesWorker, JoinWorker, LeaveWorker};
use crate::antientropy::gc::Gc;
use crate::antientropy::movement::Movement;
use crate::antientropy::{maintenance_interval, AntiEntropy, AntiEntropyConfig, AntiEntropyWorker};
use crate::cluster::membership::{MemberState, Membership, MembershipCtl};
use crate::cluster::persisted;
use crate::config::NodeConfig;
use crate::coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorParts, PeerLatencies, RepairChance,
};
use crate::handoff::{Handoff, HandoffConfig, HINT_PAGE};
use crate::http::{self, AppState};
use crate::identity::Identity;
use crate::kv::LocalKv;
use crate::net::tls::TlsListener;
use crate::net::{GossipAuth, Network};
use crate::peer_service::PeerService;
use crate::peers::Peers;
use crate::readiness::Readiness;
use crate::rpc::client::{connector_with_tls, RpcClient};
use crate::rpc::frame::{RpcConfig, RpcStats};
use crate::rpc::{Authenticator, BatchLimit, ReadBudget};
use crate::stats::ReplicationStats;
use crate::store::Store;
use crate::worker::{Phase, Registry, Worker};

/// At most one write of the persisted membership per this interval.
const PERSIST_DEBOUNCE: Duration = Duration::from_secs(1);
/// Gossip rounds the rings must stay unchanged before this node drops keys it no longer
/// owns: enough for a view that is still converging to hear of every member.
const SETTLE_ROUNDS: u32 = 10;

impl Node {
    /// Wires a node on `store`: refuses a data dir whose node left or was removed, opens
    /// the identity, starts the writer, binds, starts gossip, connects the parts and
    /// makes the workers. `shutdown` stops the node once it runs.
    pub async fn build<N: Network>(
        config: NodeConfig,
        net: N,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        check_limits(&config)?;
        let net = Arc::new(net);
        let opened = open(&config, net.as_ref(), &store, &shutdown).await?;
        // Made here, not in `connect`: gossip's signature check counts its drops in it.
        let rpc_stats = Arc::new(RpcStats::default());
        warn_if_open(&config);
        let gossip_auth = GossipAuth::for_node(&config, net.clock(), rpc_stats.clone());
        let bound = bind(net.as_ref(), &config, gossip_auth.clone()).await?;
        let host = config.addrs.advertise_host;
        let at = Advertised {
            http: advertised("HTTP", bound.at.http, host)?,
            rpc: advertised("RPC", bound.at.rpc, host)?,
            gossip: advertised("gossip", bound.at.gossip, host)?,
        };
        let Bound {
            http: http_listener,
            rpc: rpc_listener,
            gossip: socket,
            at: bound_at,
        } = bound;
        let gossip = start_gossip(
            &config,
            &net,
            store.as_ref(),
            &opened,
            GossipSocket {
                socket,
                listen: bound_at.gossip,
                rebind: gossip_rebind(net.clone(), bound_at.gossip, gossip_auth),
            },
            at,
        )
        .await?;
        let parts = connect(
            &config, &net, &store, &opened, &gossip, &shutdown, rpc_stats,
        );
        let state = parts.state.clone();

        let background = background_workers(&config, &store, &parts, &gossip, at);
        let mut workers = vec![(Phase::Writer, opened.writer)];
        let rpc_listener = TlsListener::new(rpc_listener, config.security.tls.rpc_acceptor())
            .counting(state.tls.clone());
        let network = network_workers(&parts, rpc_listener, gossip.membership, gossip.stop);
        workers.extend(network.into_iter().map(|w| (Phase::Network, w)));
        workers.extend(background.into_iter().map(|w| (Phase::Background, w)));
        // The serve loop can no longer fail (an accept error is retried, a connection's
        // error ends that connection only), so nothing is ever left here.
        let http_error = Arc::default();
        workers.push((
            Phase::Http,
            Arc::new(Http {
                listener: Mutex::new(Some(
                    TlsListener::new(http_listener, config.security.tls.http_acceptor())
                        .counting(state.tls.clone()),
                )),
                router: Mutex::new(Some(http::router(state.clone()))),
                addr: bound_at.http,
                config: http::serve::ServeConfig {
                    limits: config.limits.http.clone(),
                    max_connections: config.limits.max_connections,
                },
            }),
        ));
        Ok(Node {
            started: Started {
                http_addr: bound_at.http,
                rpc_addr: bound_at.rpc,
                gossip_addr: bound_at.gossip,
                node_id: opened.node_id.0,
            },
            advertised: at,
            actor: opened.identity.actor,
            config,
            store,
            state,
            shutdown,
            workers,
            http_error,
        })
    }
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

/// The listeners and the gossip socket, bound, and where they are.
struct Bound<N: Network> {
    http: N::Listener,
    rpc: N::Listener,
    gossip: Box<dyn chitchat::transport::Socket>,
    /// What each is bound to (port 0 resolved).
    at: Advertised,
}

/// Without a cluster secret anyone who reaches the RPC or gossip port is a peer: say so
/// once, loudly, at start.
fn warn_if_open(config: &NodeConfig) {
    if config.security.cluster_secret.is_none() {
        tracing::warn!(
            "no cluster secret (--cluster-secret-file): internode RPC and gossip are open \
             to anyone who can reach their ports"
        );
    }
}

async fn bind<N: Network>(
    net: &N,
    config: &NodeConfig,
    gossip_auth: Option<Arc<GossipAuth>>,
) -> Result<Bound<N>, NodeError> {
    let bind_err = |what, addr| move |source| NodeError::Bind { what, addr, source };
    let addrs = &config.addrs;
    let http = net
        .bind(addrs.http)
        .await
        .map_err(bind_err("HTTP", addrs.http))?;
    let rpc = net
        .bind(addrs.rpc)
        .await
        .map_err(bind_err("RPC", addrs.rpc))?;
    let gossip = net
        .bind_gossip(addrs.gossip, gossip_auth)
        .await
        .map_err(bind_err("gossip", addrs.gossip))?;
    let local_addr =
        |l: &N::Listener| axum::serve::Listener::local_addr(l).map_err(NodeError::Serve);
    let at = Advertised {
        http: local_addr(&http)?,
        rpc: local_addr(&rpc)?,
        gossip: gossip
            .local_addr()
            .map_err(|e| NodeError::Serve(std::io::Error::other(e.to_string())))?,
    };
    Ok(Bound {
        http,
        rpc,
        gossip,
        at,
    })
}

/// Binds the gossip socket again on the address it got at start (port 0 resolved): gossip
/// started again after its task ended listens where its peers know it (`cluster::supervise`).
/// It signs as the first socket did: a restarted gossip must not fall back to unsigned.
fn gossip_rebind<N: Network>(
    net: Arc<N>,
    addr: std::net::SocketAddr,
    auth: Option<Arc<GossipAuth>>,
) -> crate::cluster::supervise::Rebind {
    Arc::new(move || {
        let net = net.clone();
        let auth = auth.clone();
        Box::pin(async move { net.bind_gossip(addr, auth).await })
    })
}

/// The bound gossip socket, the address it got, and how to bind it again.
struct GossipSocket {
    socket: Box<dyn chitchat::transport::Socket>,
    listen: std::net::SocketAddr,
    rebind: crate::cluster::supervise::Rebind,
}

/// Gossip, started, and how this node stands in its cluster.
struct Gossiping {
    membership: Membership,
    control: MembershipCtl,
    /// Given to the membership's view refresher.
    stop: CancellationToken,
    /// Its seeds name only itself: the first node of its cluster.
    alone: bool,
    /// It never finished joining the cluster its seeds name.
    joining: bool,
}

async fn start_gossip<N: Network>(
    config: &NodeConfig,
    net: &Arc<N>,
    store: &dyn Store,
    opened: &Opened,
    socket: GossipSocket,
    at: Advertised,
) -> Result<Gossiping, NodeError> {
    let GossipSocket {
        socket,
        listen: gossip_listen,
        rebind,
    } = socket;
    let store_err = store_error(config);
    let cluster = &config.cluster;
    // A node that never finished joining a cluster, and was given one to join, starts as
    // a joiner: it must pull its ranges before it serves reads.
    let alone = addrs::seeds_are_only(&cluster.seeds, at.gossip);
    let joined = Identity::has_joined(store).map_err(&store_err)?;
    let joining = !alone && !joined;
    if alone && !joined {
        Identity::mark_joined(store).map_err(&store_err)?;
    }
    let state = if joining {
        MemberState::Joining
    } else {
        MemberState::Normal
    };
    let me = member(opened.node_id, at, state, cluster.vnodes);
    // The ring this node's data belongs to: it starts from it, rejoining, rather than
    // from "a cluster of myself" (see `cluster::agreement`).
    let persisted = persisted::load(store);
    let stop = CancellationToken::new();
    let membership = Membership::start_supervised(
        membership_config(
            cluster,
            me,
            gossip_listen,
            net.clock().now_ms(),
            persisted,
            joined && !alone,
        ),
        socket,
        Some(rebind),
        stop.clone(),
    )
    .await?;
    Ok(Gossiping {
        control: membership.control(),
        membership,
        stop,
        alone,
        joining,
    })
}

/// The parts of a node, connected: each holds the handles it needs and no more.
struct Parts {
    peers: Peers,
    local: LocalKv,
    stats: Arc<ReplicationStats>,
    rpc_stats: Arc<RpcStats>,
    rpc_config: RpcConfig,
    /// How much one bulk internode call carries.
    batch: BatchLimit,
    readiness: Arc<Readiness>,
    peer_service: Arc<PeerService>,
    ae: AntiEntropy,
    admin: Arc<Admin>,
    state: Arc<AppState>,
}

fn connect<N: Network>(
    config: &NodeConfig,
    net: &Arc<N>,
    store: &Arc<dyn Store>,
    opened: &Opened,
    gossip: &Gossiping,
    shutdown: &CancellationToken,
    rpc_stats: Arc<RpcStats>,
) -> Parts {
    let cluster = &config.cluster;
    let local = opened.local.clone();
    let readiness = Arc::new(Readiness::default());
    readiness.watch_gossip(gossip.membership.health());
    let security = &config.security;
    let rpc_config = RpcConfig {
        max_frame_bytes: config.limits.max_frame_bytes,
        idle_timeout: security.rpc_idle_timeout,
        auth: security.cluster_secret.clone().map(|secret| {
            Arc::new(Authenticator::new(
                secret,
                cluster.cluster_id.clone(),
                security.handshake_timeout,
                config.rng_seed,
            ))
        }),
        frame_read_timeout: security.frame_read_timeout,
        // One budget for the server's and the client's reads: it bounds the node. It
        // must hold the largest frame, or that frame could never be read.
        read_budget: ReadBudget::new(
            security
                .read_budget_bytes
                .max(config.limits.max_frame_bytes),
        ),
        peer_queue_bytes: security.peer_queue_bytes,
        ..RpcConfig::default()
    };
    let batch = BatchLimit::for_frame(rpc_config.max_frame_bytes);
    let peers = Peers {
        view: gossip.membership.watch(),
        rpc: Arc::new(RpcClient::new(
            connector_with_tls(net.clone(), config.security.tls.rpc_dialer()),
            rpc_config.clone(),
            rpc_stats.clone(),
        )),
        clock: net.clock(),
        rpc_timeout: cluster.rpc_timeout,
    };
    let stats = Arc::new(ReplicationStats::default());
    let coord = Coordinator::new(CoordinatorParts {
        peers: peers.clone(),
        local: local.clone(),
        stats: stats.clone(),
        config: CoordinatorConfig {
            replication: config.replication.into(),
            repair_wait: cluster.repair_wait,
        },
        latencies: PeerLatencies::default(),
        repair_chance: RepairChance::new(cluster.read_repair_chance, config.rng_seed),
    });
    let peer_service = Arc::new(PeerService {
        node_id: opened.node_id,
        local: local.clone(),
        view: peers.view.clone(),
        coordinator: coord.clone(),
        clock: net.clock(),
        stats: stats.clone(),
        readiness: readiness.clone(),
        batch,
        limits: crate::rpc::bounds::PeerLimits::of(&config.limits),
    });
    let maintenance = maintenance_interval(cluster.anti_entropy_interval);
    let ae = AntiEntropy {
        peers: peers.clone(),
        local: local.clone(),
        stats: stats.clone(),
        config: AntiEntropyConfig {
            interval: cluster.anti_entropy_interval,
            movement_interval: maintenance,
            gc_interval: maintenance,
            replication: config.replication.into(),
            tombstone_grace: cluster.tombstone_grace,
            settle: cluster.gossip_interval * SETTLE_ROUNDS,
            batch,
        },
        turns: Arc::default(),
    };
    let admin = Arc::new(
        Admin::new(
            gossip.control.clone(),
            peers.clone(),
            ae.clone(),
            store.clone(),
            shutdown.clone(),
            cluster.gossip_interval,
        )
        .with_departures(opened.departures.clone(), readiness.clone(), !gossip.alone),
    );
    let state = Arc::new(AppState {
        admin: admin.clone(),
        coord,
        local: local.clone(),
        stats: stats.clone(),
        rpc_stats: rpc_stats.clone(),
        config: config.clone(),
        cluster_id: cluster.cluster_id.clone(),
        ready: Default::default(),
        readiness: readiness.clone(),
        workers: Registry::default(),
        shed: Default::default(),
        tls: Default::default(),
        requests: Default::default(),
        http_metrics: Default::default(),
        request_ids: Arc::new(crate::http::request_id::RequestIds::new(config.rng_seed)),
    });
    Parts {
        peers,
        local,
        stats,
        rpc_stats,
        rpc_config,
        batch,
        readiness,
        peer_service,
        ae,
        admin,
        state,
    }
}

/// The RPC server and gossip: what peers reach this node through.
fn network_workers<L>(
    parts: &Parts,
    listener: L,
    membership: Membership,
    stop: CancellationToken,
) -> [Arc<dyn Worker>; 2]
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    [
        Arc::new(RpcServer {
            listener: Mutex::new(Some(listener)),
            handler: parts.peer_service.clone(),
            config: parts.rpc_config.clone(),
            stats: parts.rpc_stats.clone(),
            client: parts.peers.rpc.clone(),
        }),
        Arc::new(Gossip {
            view: membership.watch(),
            health: membership.health(),
            membership: tokio::sync::Mutex::new(Some(membership)),
            stop,
        }),
    ]
}

/// Every job that runs beside the requests: hints, anti-entropy, movement, GC, the
/// scrub, and the membership chores.
fn background_workers(
    config: &NodeConfig,
    store: &Arc<dyn Store>,
    parts: &Parts,
    gossip: &Gossiping,
    at: Advertised,
) -> Vec<Arc<dyn Worker>> {
    let cluster = &config.cluster;
    let view = parts.peers.view.clone();
    let mut workers: Vec<Arc<dyn Worker>> = vec![
        Arc::new(Handoff {
            peers: parts.peers.clone(),
            local: parts.local.clone(),
            stats: parts.stats.clone(),
            config: HandoffConfig {
                interval: cluster.handoff_interval,
                batch: HINT_PAGE,
                limit: parts.batch,
                max_age: cluster.max_hint_age,
                replication: config.replication.into(),
            },
        }),
        Arc::new(AntiEntropyWorker {
            ae: parts.ae.clone(),
        }),
        Arc::new(Movement::new(parts.ae.clone())),
        Arc::new(Gc {
            ae: parts.ae.clone(),
        }),
        // The scrub keeps anti-entropy's pace on purpose: anti-entropy restores what it
        // drops, so with anti-entropy off it is off too.
        Arc::new(Scrub::new(
            parts.local.clone(),
            cluster.anti_entropy_interval,
        )),
        Arc::new(KeepPersisted {
            store: store.clone(),
            view: view.clone(),
            debounce: PERSIST_DEBOUNCE,
            blocking: config.blocking,
        }),
        Arc::new(AnnounceWriteState {
            state: parts.local.watch_write_state(),
            control: gossip.control.clone(),
        }),
        Arc::new(TrackJoined {
            ready: parts.state.ready.clone(),
            view: view.clone(),
            needs_peer: !gossip.alone,
        }),
        Arc::new(DeparturesWorker(parts.admin.clone())),
        Arc::new(SeedReport {
            readiness: parts.readiness.clone(),
            view,
            seeds: addrs::other_seeds(&cluster.seeds, at.gossip),
        }),
        Arc::new(LeaveWorker(parts.admin.clone())),
    ];
    if gossip.joining {
        workers.push(Arc::new(JoinWorker(parts.admin.clone())));
    }
    workers
}
