//! The replication policy: which nodes hold a key, and how many replies make a quorum.
//!
//! The one place where N, R and W meet the rings. Every caller (reads, writes, listing,
//! anti-entropy, data movement, tombstone GC, hint rerouting) asks it, so none clamps N
//! itself and they cannot drift apart. Like Garage's `TableReplication`, it answers per
//! key: the read nodes, the write sets (one per live ring version, each of which must
//! reach W), and the read and write quorums.

use super::membership::ClusterView;
use super::ring::{Ring, TokenRange};
use super::NodeId;
use crate::quorum::{Quorum, Replication};

/// The configured factors, and what they come to on a given view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationPolicy {
    configured: Replication,
}

impl From<Replication> for ReplicationPolicy {
    fn from(configured: Replication) -> Self {
        ReplicationPolicy { configured }
    }
}

impl ReplicationPolicy {
    pub fn new(configured: Replication) -> Self {
        ReplicationPolicy { configured }
    }

    /// The factors as configured (N, R, W).
    pub fn configured(&self) -> Replication {
        self.configured
    }

    /// N in force on `ring`: the configured N capped at the ring's size. Never below 1,
    /// so that a lone node with N=3 still serves: that is where a scale-out starts.
    pub fn n(&self, ring: &Ring) -> usize {
        self.configured.n.min(ring.len().max(1))
    }

    /// The factors in force in `view`: N as on the read ring (the ring that holds the
    /// data and serves reads), R and W capped at it.
    pub fn effective(&self, view: &ClusterView) -> Replication {
        let n = self.n(&view.ring);
        Replication {
            n,
            r: self.configured.r.min(n),
            w: self.configured.w.min(n),
        }
    }

    /// The replicas a read asks, and the nodes that may coordinate a write (they hold
    /// the key's history): the key's preference list in the read ring.
    pub fn read_nodes(&self, view: &ClusterView, key: &[u8]) -> Vec<NodeId> {
        view.ring.preference_list(key, self.n(&view.ring))
    }

    /// The key's preference list in the write ring: the nodes that will hold it once
    /// the current change (a join or a leave) completes.
    pub fn future_nodes(&self, view: &ClusterView, key: &[u8]) -> Vec<NodeId> {
        view.write_ring
            .preference_list(key, self.n(&view.write_ring))
    }

    /// The sets a write must reach W in: the read ring's list, and while data moves the
    /// write ring's too. Each ring clamps N to its own size: when a second node joins a
    /// lone one, the future ring replicates every key twice. Reaching W in both is what
    /// keeps a write acknowledged by the old owners alone from being missed by a read at
    /// R from the new ones once the move completes.
    pub fn write_sets(&self, view: &ClusterView, key: &[u8]) -> Vec<Vec<NodeId>> {
        let mut sets = vec![self.read_nodes(view, key)];
        if view.in_transition() {
            sets.push(self.future_nodes(view, key));
        }
        sets
    }

    /// Every node that should hold `key` now: the union of the write sets, read ring's
    /// list first, each node once.
    pub fn storage_nodes(&self, view: &ClusterView, key: &[u8]) -> Vec<NodeId> {
        let mut sets = self.write_sets(view, key).into_iter();
        let mut nodes = sets.next().unwrap_or_default();
        for id in sets.flatten() {
            if !nodes.contains(&id) {
                nodes.push(id);
            }
        }
        nodes
    }

    /// Replies a read needs: the request's R if it named one, else the configured R,
    /// resolved against the N in force.
    pub fn read_quorum(&self, view: &ClusterView, asked: Option<Quorum>) -> usize {
        let rep = self.effective(view);
        asked.map_or(rep.r, |q| q.resolve(rep.n))
    }

    /// Distinct nodes a write needs to have stored it, in each write set (see
    /// [`set_quorum`] for how it caps at a set's size).
    pub fn write_quorum(&self, view: &ClusterView, asked: Option<Quorum>) -> usize {
        let rep = self.effective(view);
        asked.map_or(rep.w, |q| q.resolve(rep.n))
    }

    /// The replicas of every key in `range`, one of `ring`'s ranges.
    pub fn range_owners(&self, ring: &Ring, range: &TokenRange) -> Vec<NodeId> {
        ring.owners(range, self.n(ring))
    }

    /// The ranges of `ring` that `node` replicates, with their replicas.
    pub fn owned_ranges(&self, ring: &Ring, node: NodeId) -> Vec<(TokenRange, Vec<NodeId>)> {
        ring.ranges()
            .into_iter()
            .map(|r| {
                let owners = self.range_owners(ring, &r);
                (r, owners)
            })
            .filter(|(_, owners)| owners.contains(&node))
            .collect()
    }
}

/// Replies one write set of `set_len` nodes needs when the write asks for `w`: W is
/// resolved against the read ring's N, and a write ring with fewer members (a leave
/// down to fewer than N) cannot give more than it has. At least 1, so an empty set
/// (no ring yet) is lost at once rather than met by nothing.
pub fn set_quorum(w: usize, set_len: usize) -> usize {
    w.min(set_len).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::cluster::membership::{rings_of, MemberState};
    use crate::cluster::ring::key_position;

    /// A view with these rings and no member details: the policy reads only the rings.
    fn view_of(read: Ring, write: Ring) -> ClusterView {
        ClusterView {
            self_id: NodeId(1),
            members: BTreeMap::new(),
            departed: BTreeSet::new(),
            ring: Arc::new(read),
            write_ring: Arc::new(write),
            rejoining: false,
            disagreements: Vec::new(),
        }
    }

    fn state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Joining),
            Just(MemberState::Normal),
            Just(MemberState::Leaving),
        ]
    }

    /// The two rings of a member set, as membership builds them: joins and leaves in
    /// progress make them differ.
    fn view() -> impl Strategy<Value = ClusterView> {
        proptest::collection::btree_map(1u64..24, (state(), 1u16..6), 0..9).prop_map(|m| {
            let (read, write) = rings_of(m.iter().map(|(&id, &(s, v))| (NodeId(id), s, v)));
            view_of(read, write)
        })
    }

    fn policy() -> impl Strategy<Value = ReplicationPolicy> {
        (1usize..6, 1usize..6, 1usize..6)
            .prop_map(|(n, r, w)| ReplicationPolicy::new(Replication { n, r, w }))
    }

    fn quorum() -> impl Strategy<Value = Option<Quorum>> {
        proptest::option::of(prop_oneof![
            Just(Quorum::One),
            Just(Quorum::Quorum),
            Just(Quorum::All),
            (1usize..6).prop_map(Quorum::Count),
        ])
    }

    fn is_distinct(list: &[NodeId]) -> bool {
        list.iter().collect::<BTreeSet<_>>().len() == list.len()
    }

    #[test]
    fn a_lone_node_serves_with_every_factor_at_one() {
        let lone = view_of(Ring::new([NodeId(1)], 8), Ring::new([NodeId(1)], 8));
        let policy = ReplicationPolicy::new(Replication { n: 3, r: 2, w: 2 });
        assert_eq!(policy.effective(&lone), Replication { n: 1, r: 1, w: 1 });
        assert_eq!(policy.read_nodes(&lone, b"k"), vec![NodeId(1)]);
        assert_eq!(policy.read_quorum(&lone, Some(Quorum::All)), 1);
        assert_eq!(policy.write_quorum(&lone, None), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Read nodes are distinct members of the read ring, min(N, ring size) of them,
        /// and the read ring's nearest members clockwise from the key.
        #[test]
        fn read_nodes_are_n_distinct_read_ring_members(
            policy in policy(), view in view(), key in any::<[u8; 8]>(),
        ) {
            let nodes = policy.read_nodes(&view, &key);
            prop_assert!(is_distinct(&nodes));
            prop_assert!(nodes.iter().all(|id| view.ring.contains(*id)));
            prop_assert_eq!(nodes.len(), policy.configured().n.min(view.ring.len()));
            let walk: Vec<NodeId> = view.ring.walk(&key).take(nodes.len()).collect();
            prop_assert_eq!(nodes, walk);
        }

        /// One write set per live ring version: one when the rings agree, and then it is
        /// the read nodes; two while data moves, the read nodes then the future nodes.
        /// Each is min(N, its ring's size) distinct members of its ring.
        #[test]
        fn write_sets_are_one_per_ring_version(
            policy in policy(), view in view(), key in any::<[u8; 8]>(),
        ) {
            let sets = policy.write_sets(&view, &key);
            let rings: Vec<&Ring> = if view.in_transition() {
                vec![&view.ring, &view.write_ring]
            } else {
                vec![&view.ring]
            };
            prop_assert_eq!(sets.len(), rings.len());
            for (set, ring) in sets.iter().zip(&rings) {
                prop_assert!(is_distinct(set));
                prop_assert!(set.iter().all(|id| ring.contains(*id)));
                prop_assert_eq!(set.len(), policy.configured().n.min(ring.len()));
            }
            prop_assert_eq!(&sets[0], &policy.read_nodes(&view, &key));
            if view.in_transition() {
                prop_assert_eq!(&sets[1], &policy.future_nodes(&view, &key));
            } else {
                prop_assert_eq!(policy.future_nodes(&view, &key), policy.read_nodes(&view, &key));
            }
        }

        /// The storage nodes are the union of the write sets, each once, read nodes first.
        #[test]
        fn storage_nodes_are_the_union_of_the_write_sets(
            policy in policy(), view in view(), key in any::<[u8; 8]>(),
        ) {
            let nodes = policy.storage_nodes(&view, &key);
            let sets = policy.write_sets(&view, &key);
            prop_assert!(is_distinct(&nodes));
            let union: BTreeSet<NodeId> = sets.iter().flatten().copied().collect();
            prop_assert_eq!(nodes.iter().copied().collect::<BTreeSet<_>>(), union);
            prop_assert!(nodes.starts_with(&sets[0]));
        }

        /// Quorums are within 1..=N in force, so a read or write that hears from every
        /// replica can always meet them; N in force never exceeds the configured N or
        /// the read ring, and is the configured N once the ring is big enough.
        #[test]
        fn quorums_fit_the_replicas_in_force(
            policy in policy(), view in view(), key in any::<[u8; 8]>(),
            r in quorum(), w in quorum(),
        ) {
            let n = policy.effective(&view).n;
            prop_assert!(n >= 1 && n <= policy.configured().n);
            let configured = policy.configured().n;
            if view.ring.len() >= configured {
                prop_assert_eq!(n, configured);
            } else if !view.ring.is_empty() {
                prop_assert_eq!(n, view.ring.len());
            }
            let (read, write) = (policy.read_quorum(&view, r), policy.write_quorum(&view, w));
            prop_assert!((1..=n).contains(&read));
            prop_assert!((1..=n).contains(&write));
            if !view.ring.is_empty() {
                prop_assert!(read <= policy.read_nodes(&view, &key).len());
            }
            if r.is_none() {
                prop_assert_eq!(read, policy.configured().r.min(n));
            }
            for set in policy.write_sets(&view, &key) {
                let q = set_quorum(write, set.len());
                prop_assert!(q >= 1 && q <= write);
                prop_assert!(set.is_empty() || q <= set.len());
            }
        }

        /// Majority reads and majority writes overlap in at least one replica.
        #[test]
        fn majority_reads_and_writes_overlap(policy in policy(), view in view()) {
            let n = policy.effective(&view).n;
            let r = policy.read_quorum(&view, Some(Quorum::Quorum));
            let w = policy.write_quorum(&view, Some(Quorum::Quorum));
            prop_assert!(r + w > n, "r={} w={} n={}", r, w, n);
        }

        /// A node owns a range exactly when it is among the replicas of the keys in it:
        /// the range-level owner sets (anti-entropy) agree with the key-level ones
        /// (requests).
        #[test]
        fn owned_ranges_agree_with_read_nodes(
            policy in policy(), view in view(),
            keys in proptest::collection::vec(any::<[u8; 8]>(), 1..16),
        ) {
            for &node in view.ring.members() {
                let owned = policy.owned_ranges(&view.ring, node);
                for key in &keys {
                    let position = key_position(key);
                    let in_owned = owned.iter().find(|(range, _)| range.contains(position));
                    let replicas = policy.read_nodes(&view, key);
                    prop_assert_eq!(in_owned.is_some(), replicas.contains(&node));
                    if let Some((_, owners)) = in_owned {
                        prop_assert_eq!(owners, &replicas);
                    }
                }
            }
        }
    }
}
