//! What a node tells its peers about itself: the addresses it advertises, the member it
//! gossips, and the gossip settings, built here once for every way a node starts.

use std::net::{IpAddr, SocketAddr};

use super::NodeError;
use crate::cluster::membership::{Member, MemberState, MembershipConfig};
use crate::cluster::persisted::Persisted;
use crate::cluster::NodeId;
use crate::config::ClusterConfig;

/// The addresses peers use to reach this node.
#[derive(Clone, Copy, Debug)]
pub(super) struct Advertised {
    pub http: SocketAddr,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
}

/// The address peers use: the bound one, with the advertised host when bound to a
/// wildcard.
pub(super) fn advertised(
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

/// This node as it gossips itself at start: live, writable, nothing to move.
pub(super) fn member(id: NodeId, at: Advertised, state: MemberState, vnodes: u16) -> Member {
    Member {
        id,
        http_addr: at.http,
        rpc_addr: at.rpc,
        gossip_addr: at.gossip,
        state,
        live: true,
        vnodes,
        to_move: None,
        writable: true,
    }
}

/// The gossip settings of a node gossiping as `me` from `gossip_listen`.
pub(super) fn membership_config(
    cluster: &ClusterConfig,
    me: Member,
    gossip_listen: SocketAddr,
    generation: u64,
    persisted: Option<Persisted>,
    was_member: bool,
) -> MembershipConfig {
    MembershipConfig {
        cluster_id: cluster.cluster_id.clone(),
        me,
        gossip_listen,
        seeds: cluster.seeds.clone(),
        gossip_interval: cluster.gossip_interval,
        dead_node_grace: cluster.dead_node_grace,
        phi_threshold: cluster.phi_threshold,
        generation,
        persisted,
        was_member,
        max_gossip_members: cluster.max_gossip_members,
    }
}

/// The seeds that are not this node itself: the ones a node must hear from to have joined.
pub(super) fn other_seeds(seeds: &[String], me: SocketAddr) -> Vec<String> {
    seeds
        .iter()
        .filter(|s| s.parse::<SocketAddr>() != Ok(me))
        .cloned()
        .collect()
}

/// Whether every seed is this node itself (the first node of a cluster may list itself).
pub(super) fn seeds_are_only(seeds: &[String], me: SocketAddr) -> bool {
    seeds
        .iter()
        .all(|s| s.parse::<SocketAddr>().is_ok_and(|a| a == me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_needs_an_advertised_host() {
        let wild: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let bound: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let host: IpAddr = "10.0.0.5".parse().expect("ip");
        assert!(matches!(
            advertised("RPC", wild, None),
            Err(NodeError::NoAdvertise { what: "RPC", .. })
        ));
        assert_eq!(
            advertised("RPC", wild, Some(host)).expect("advertised"),
            "10.0.0.5:7000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(advertised("RPC", bound, None).expect("bound"), bound);
    }

    #[test]
    fn seeds_naming_only_this_node_leave_it_alone() {
        let me: SocketAddr = "127.0.0.1:7946".parse().expect("addr");
        let only_me = vec!["127.0.0.1:7946".to_owned()];
        let with_peer = vec!["127.0.0.1:7946".to_owned(), "seed.example:7946".to_owned()];
        assert!(seeds_are_only(&only_me, me));
        assert!(seeds_are_only(&[], me));
        assert!(!seeds_are_only(&with_peer, me));
        assert_eq!(other_seeds(&with_peer, me), ["seed.example:7946"]);
        assert!(other_seeds(&only_me, me).is_empty());
    }
}
