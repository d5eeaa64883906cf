//! The cluster: who the members are (gossip), where keys live (the ring), which nodes
//! hold a key and how many replies make a quorum (`policy`), the membership kept across
//! restarts (`persisted`), whether the members' rings agree (`agreement`), gossip started
//! again when its task dies (`supervise`), the bound on the node ids it tracks
//! (`gossip_guard`), and waiting until the view satisfies a condition (`wait`).

pub mod agreement;
pub mod departed;
pub mod gossip_guard;
pub mod membership;
pub mod persisted;
pub mod policy;
pub mod ring;
pub mod supervise;
pub mod wait;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's stable id, made once and kept in its data dir.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}
