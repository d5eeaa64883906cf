//! A data dir that says its node left or was removed: such a node does not serve again.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::addrs::{advertised, member, membership_config, Advertised};
use super::NodeError;
use crate::cluster::departed::{DepartureKind, Departures};
use crate::cluster::membership::{MemberState, Membership};
use crate::cluster::NodeId;
use crate::config::NodeConfig;
use crate::identity::Identity;
use crate::net::Network;
use crate::store::Store;

/// Gossip rounds a node that left tells its cluster so once more before it stops.
const LEFT_ANNOUNCE_ROUNDS: u32 = 10;

/// A node that left, started again on its old data dir, refuses to serve its stale data,
/// but first gossips `left` for [`LEFT_ANNOUNCE_ROUNDS`] rounds: it may have crashed after
/// recording the leave and before gossip carried it, and then its peers would keep it as
/// a dead `leaving` member, in the ring, forever (found by the simulation, seed 7071 of
/// its churn mix).
pub(super) async fn announce_left<N: Network>(
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
    // Signed as the node's gossip is, or its peers would drop the announcement.
    let auth = crate::net::GossipAuth::for_node(config, net.clock(), Default::default());
    let Ok(socket) = net.bind_gossip(addrs.gossip, auth).await else {
        return left;
    };
    let bound = socket.local_addr().unwrap_or(addrs.gossip);
    let host = addrs.advertise_host;
    // Best effort: an address that cannot be advertised is gossiped as bound.
    let addr = |what, a: SocketAddr| advertised(what, a, host).unwrap_or(a);
    let at = Advertised {
        http: addr("HTTP", addrs.http),
        rpc: addr("RPC", addrs.rpc),
        gossip: addr("gossip", bound),
    };
    let me = member(NodeId(id), at, MemberState::Left, config.cluster.vnodes);
    let gossip = CancellationToken::new();
    let cluster = &config.cluster;
    let started = Membership::start(
        membership_config(cluster, me, bound, net.clock().now_ms(), None, false),
        socket,
        gossip.clone(),
    )
    .await;
    if let Ok(membership) = started {
        tracing::warn!("this node left its cluster; telling the cluster once more before stopping");
        tokio::select! {
            _ = tokio::time::sleep(cluster.gossip_interval * LEFT_ANNOUNCE_ROUNDS) => {}
            _ = shutdown.cancelled() => {}
        }
        gossip.cancel();
        membership.shutdown().await;
    }
    left
}

/// Refuses to start a node its cluster removed (the mark it stored when it heard, or its
/// own id among the removals it keeps); otherwise returns the departed ids it keeps.
pub(super) fn refuse_if_removed(
    config: &NodeConfig,
    store: &dyn Store,
) -> Result<Departures, NodeError> {
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
