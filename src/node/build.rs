//! [`Node::build`]: the wiring of a node, step by step. Nothing here serves yet: the
//! writer and gossip start (the rest needs the writer's handle and gossip's view), and
//! everything else is made into a worker for [`Node::run`] to start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::addrs::{self, advertised, member, membership_config, Advertised};
use super::joined::TrackJoined;
use super::refuse::{announce_left, refuse_if_removed};
use super::scrub::Scrub;
use super::workers::{Gossip, Http, KeepPersisted, RpcServer, SeedReport, Writer};
use super::write_state::AnnounceWriteState;
use super::{Node, NodeError, Started};
use crate::admin::{Admin, DeparturesWorker, JoinWorker, LeaveWorker};
use crate::antientropy::gc::Gc;
use crate::antientropy::movement::Movement;
use crate::antientropy::{maintenance_interval, AntiEntropy, AntiEntropyConfig, AntiEntropyWorker};
use crate::cluster::membership::{MemberState, Membership};
use crate::cluster::{persisted, NodeId};
use crate::config::NodeConfig;
use crate::coordinator::{Coordinator, CoordinatorConfig, CoordinatorParts};
use crate::handoff::{Handoff, HandoffConfig, HINT_PAGE};
use crate::http::{self, AppState};
use crate::identity::Identity;
use crate::kv::summary::SharedTree;
use crate::kv::{self, HintLedger, LocalKv, WriterSettings};
use crate::net::{LimitedListener, Network};
use crate::peers::Peers;
use crate::readiness::Readiness;
use crate::replica::ReplicaService;
use crate::rpc::client::{connector_for, RpcClient};
use crate::rpc::frame::{RpcConfig, RpcStats};
use crate::stats::ReplicationStats;
use crate::store::{Store, StoreError};
use crate::worker::{Phase, Registry, Worker};

/// At most one write of the persisted membership per this interval.
const PERSIST_DEBOUNCE: Duration = Duration::from_secs(1);
/// Gossip rounds the rings must stay unchanged before this node drops keys it no longer
/// owns: enough for a view that is still converging to hear of every member.
const SETTLE_ROUNDS: u32 = 10;

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

async fn bind<N: Network>(net: &N, config: &NodeConfig) -> Result<Bound<N>, NodeError> {
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
        .bind_gossip(addrs.gossip)
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

impl Node {
    /// Wires a node on `store`: refuses a data dir whose node left or was removed, opens
    /// the identity, starts the writer, binds, starts gossip, and makes the workers.
    /// `shutdown` stops the node once it runs.
    pub async fn build<N: Network>(
        config: NodeConfig,
        net: N,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        check_limits(&config)?;
        let net = Arc::new(net);
        let store_err = |source: StoreError| NodeError::Store {
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

        // The writer starts now: everything else submits to it. It stops last.
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
        let writer: Arc<dyn Worker> = Arc::new(Writer {
            local: local.clone(),
            task: Mutex::new(Some(writer_task)),
            stop: writer_stop,
        });

        let bound = bind(net.as_ref(), &config).await?;
        let host = config.addrs.advertise_host;
        let cluster = &config.cluster;
        let at = Advertised {
            http: advertised("HTTP", bound.at.http, host)?,
            rpc: advertised("RPC", bound.at.rpc, host)?,
            gossip: advertised("gossip", bound.at.gossip, host)?,
        };
        // A node that never finished joining a cluster, and was given one to join, starts
        // as a joiner: it must pull its ranges before it serves reads.
        let alone = addrs::seeds_are_only(&cluster.seeds, at.gossip);
        let joined = Identity::has_joined(store.as_ref()).map_err(store_err)?;
        let joining = !alone && !joined;
        if alone && !joined {
            Identity::mark_joined(store.as_ref()).map_err(store_err)?;
        }
        let state = if joining {
            MemberState::Joining
        } else {
            MemberState::Normal
        };
        let me = member(node_id, at, state, cluster.vnodes);
        // The ring this node's data belongs to: it starts from it, rejoining, rather than
        // from "a cluster of myself" (see `cluster::agreement`).
        let persisted = persisted::load(store.as_ref());
        let gossip_stop = CancellationToken::new();
        let membership = Membership::start(
            membership_config(
                cluster,
                me,
                bound.at.gossip,
                net.clock().now_ms(),
                persisted,
                joined && !alone,
            ),
            bound.gossip,
            gossip_stop.clone(),
        )
        .await?;
        let view = membership.watch();
        let control = membership.control();

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
        let peers = Peers {
            view: view.clone(),
            rpc: rpc.clone(),
            clock: net.clock(),
            rpc_timeout: cluster.rpc_timeout,
        };
        let stats = Arc::new(ReplicationStats::default());
        let coord = Coordinator::new(CoordinatorParts {
            peers: peers.clone(),
            local: local.clone(),
            stats: stats.clone(),
            config: CoordinatorConfig {
                replication: config.replication,
                repair_wait: cluster.repair_wait,
            },
        });
        let replica = Arc::new(ReplicaService {
            node_id,
            coordinator: coord.clone(),
            clock: net.clock(),
            stats: stats.clone(),
            readiness: readiness.clone(),
            batch,
        });
        let network: [Arc<dyn Worker>; 2] = [
            Arc::new(RpcServer {
                listener: Mutex::new(Some(bound.rpc)),
                handler: replica,
                config: rpc_config,
                stats: rpc_stats,
                client: rpc,
            }),
            Arc::new(Gossip {
                membership: tokio::sync::Mutex::new(Some(membership)),
                view: view.clone(),
                stop: gossip_stop,
            }),
        ];

        let maintenance = maintenance_interval(cluster.anti_entropy_interval);
        let ae = AntiEntropy {
            peers: peers.clone(),
            local: local.clone(),
            stats: stats.clone(),
            config: AntiEntropyConfig {
                interval: cluster.anti_entropy_interval,
                movement_interval: maintenance,
                gc_interval: maintenance,
                n: config.replication.n,
                tombstone_grace: cluster.tombstone_grace,
                settle: cluster.gossip_interval * SETTLE_ROUNDS,
                batch,
            },
        };
        let admin = Arc::new(
            Admin::new(
                control.clone(),
                peers.clone(),
                ae.clone(),
                store.clone(),
                shutdown.clone(),
                cluster.gossip_interval,
            )
            .with_departures(departures, readiness.clone(), !alone),
        );
        let workers = Registry::default();
        let state = Arc::new(AppState {
            admin: Some(admin.clone()),
            coord,
            config: config.clone(),
            cluster_id: cluster.cluster_id.clone(),
            ready: Default::default(),
            readiness: readiness.clone(),
            workers,
        });

        let mut background: Vec<Arc<dyn Worker>> = vec![
            Arc::new(Handoff {
                peers,
                local: local.clone(),
                stats,
                config: HandoffConfig {
                    interval: cluster.handoff_interval,
                    batch: HINT_PAGE,
                    limit: batch,
                    max_age: cluster.max_hint_age,
                    n: config.replication.n,
                },
            }),
            Arc::new(AntiEntropyWorker { ae: ae.clone() }),
            Arc::new(Movement::new(ae.clone())),
            Arc::new(Gc { ae }),
            // The scrub keeps anti-entropy's pace on purpose: anti-entropy restores what
            // it drops, so with anti-entropy off it is off too.
            Arc::new(Scrub::new(local.clone(), cluster.anti_entropy_interval)),
            Arc::new(KeepPersisted {
                store: store.clone(),
                view: view.clone(),
                debounce: PERSIST_DEBOUNCE,
                blocking: config.blocking,
            }),
            Arc::new(AnnounceWriteState {
                state: local.watch_write_state(),
                control,
            }),
            Arc::new(TrackJoined {
                state: state.clone(),
                view: view.clone(),
                needs_peer: !alone,
            }),
            Arc::new(DeparturesWorker(admin.clone())),
            Arc::new(SeedReport {
                readiness,
                view,
                seeds: addrs::other_seeds(&cluster.seeds, at.gossip),
            }),
            Arc::new(LeaveWorker(admin.clone())),
        ];
        if joining {
            background.push(Arc::new(JoinWorker(admin)));
        }

        let http_error = Arc::default();
        let http: Arc<dyn Worker> = Arc::new(Http {
            listener: Mutex::new(Some(LimitedListener::new(
                bound.http,
                config.limits.max_connections,
            ))),
            router: Mutex::new(Some(http::router(state.clone()))),
            addr: bound.at.http,
            node_shutdown: shutdown.clone(),
            error: Arc::clone(&http_error),
        });

        let mut all = vec![(Phase::Writer, writer)];
        all.extend(network.into_iter().map(|w| (Phase::Network, w)));
        all.extend(background.into_iter().map(|w| (Phase::Background, w)));
        all.push((Phase::Http, http));
        Ok(Node {
            started: Started {
                http_addr: bound.at.http,
                rpc_addr: bound.at.rpc,
                gossip_addr: bound.at.gossip,
                node_id: node_id.0,
            },
            advertised: at,
            actor: identity.actor,
            config,
            store,
            state,
            shutdown,
            workers: all,
            http_error,
        })
    }
}
