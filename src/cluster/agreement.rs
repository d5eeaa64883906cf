//! Ring agreement: each node gossips the hashes of its two rings, and compares its own
//! with those its live peers gossip. Two things follow from the comparison:
//!
//! - the **rejoin gate** ([`Rejoin`]): a node restarted with a persisted membership takes
//!   no KV request until its ring is confirmed by its live peers, since its data dir holds
//!   the keys of that ring and a guess from partial gossip answers 404 for them;
//! - the **split report** ([`SplitTracker`]): a peer whose ring differs for more than a
//!   few gossip rounds is a split ring, logged, shown in `/cluster`, `ringkv status`, a
//!   metric and `ringkv health`. Shorter differences are normal while gossip spreads a
//!   join or a leave.
//!
//! Pure logic: the membership refresher feeds it one gossip round at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::membership::{ClusterView, Member};
use super::ring::Ring;
use super::NodeId;

/// The hashes of a node's read ring and write ring, as gossiped (`<read>/<write>`, hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingHashes {
    pub read: u64,
    pub write: u64,
}

impl RingHashes {
    pub fn of(read: &Ring, write: &Ring) -> Self {
        RingHashes {
            read: read.hash(),
            write: write.hash(),
        }
    }

    /// The gossiped form. Strict: anything but two 16-digit hex numbers is `None`, so a
    /// peer's garbage is "no ring announced", never a guessed hash.
    pub fn parse(s: &str) -> Option<Self> {
        let (r, w) = s.split_once('/')?;
        let hex = |x: &str| {
            (x.len() == 16 && x.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(x, 16).ok())
                .flatten()
        };
        Some(RingHashes {
            read: hex(r)?,
            write: hex(w)?,
        })
    }
}

impl fmt::Display for RingHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:016x}", self.read, self.write)
    }
}

/// What a peer gossips about its ring this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRing {
    pub live: bool,
    /// `None` when the peer announces no (parsable) ring: an older release.
    pub hashes: Option<RingHashes>,
}

/// The rings of a member set, as [`ClusterView::rings`] builds them.
fn hashes_of(members: &BTreeMap<NodeId, Member>) -> RingHashes {
    let (read, write) = ClusterView::rings(members);
    RingHashes::of(&read, &write)
}

/// The hashes every live peer that announces a ring gossips, or `None` when there is no
/// such peer or they differ among themselves (nothing to confirm against).
fn peers_agree_on(peers: &BTreeMap<NodeId, PeerRing>, me: NodeId) -> Option<RingHashes> {
    let announced: BTreeSet<RingHashes> = peers
        .iter()
        .filter(|(id, p)| **id != me && p.live)
        .filter_map(|(_, p)| p.hashes)
        .collect();
    match announced.len() {
        1 => announced.into_iter().next(),
        _ => None,
    }
}

/// The rejoin gate of a node restarted with a persisted membership.
///
/// While rejoining, the view is gossip's members plus the persisted ones gossip has not
/// told of yet (not live, and never a member gossip says departed): the ring the node's
/// data belongs to, not "a cluster of myself". The gate opens once the live peers agree on
/// one ring and it is either that merged ring (gossip has not delivered every member yet,
/// but the persisted record fills in) or gossip's alone (the cluster changed while the
/// node was down, e.g. a member left; the record is stale and dropped).
#[derive(Clone, Debug)]
pub struct Rejoin {
    /// Persisted members gossip has not delivered yet.
    fallback: BTreeMap<NodeId, Member>,
    rejoining: bool,
    /// Whether a record naming no peer opens the gate at once (a lone node). Not for a
    /// node that was a cluster's member and has no record: it waits for its peers.
    lone_ok: bool,
}

impl Rejoin {
    /// A gate that is open from the start: a new node, or one whose record names no peer.
    pub fn open() -> Self {
        Rejoin {
            fallback: BTreeMap::new(),
            rejoining: false,
            lone_ok: true,
        }
    }

    /// A gate that stays closed until live peers agree on the ring gossip gives: a node
    /// that was a member of a cluster but has no record of its peers.
    pub fn awaiting() -> Self {
        Rejoin {
            fallback: BTreeMap::new(),
            rejoining: true,
            lone_ok: false,
        }
    }

    /// A gate that stays closed until the persisted ring, or gossip's, is confirmed.
    pub fn closed(persisted: BTreeMap<NodeId, Member>) -> Self {
        Rejoin {
            fallback: persisted,
            rejoining: true,
            lone_ok: true,
        }
    }

    pub fn rejoining(&self) -> bool {
        self.rejoining
    }

    /// One gossip round: `members` is what gossip told (updated in place to the view's
    /// members), `departed` the ids gossip says are gone, `peers` the rings live peers
    /// gossip. Returns whether the gate opened this round.
    pub fn round(
        &mut self,
        me: NodeId,
        members: &mut BTreeMap<NodeId, Member>,
        departed: &BTreeSet<NodeId>,
        peers: &BTreeMap<NodeId, PeerRing>,
    ) -> bool {
        // What gossip delivered, or says is gone, needs no stand-in any more.
        self.fallback
            .retain(|id, _| *id != me && !members.contains_key(id) && !departed.contains(id));
        let gossip_only = hashes_of(members);
        let mut merged = members.clone();
        for (id, m) in &self.fallback {
            let mut m = m.clone();
            m.live = false;
            merged.insert(*id, m);
        }
        let merged_hashes = hashes_of(&merged);
        let agreed = peers_agree_on(peers, me);
        let mut opened = false;
        if agreed == Some(gossip_only) {
            // Gossip alone gives the cluster's ring: whatever the record still adds is
            // stale (a member that left and was forgotten while this node was down).
            self.fallback.clear();
            opened = self.rejoining;
            self.rejoining = false;
        } else if agreed == Some(merged_hashes) {
            opened = self.rejoining;
            self.rejoining = false;
        } else if self.rejoining && self.lone_ok && !merged.keys().any(|id| *id != me) {
            // Nothing to confirm against and nobody to wait for: a lone node.
            self.fallback.clear();
            opened = true;
            self.rejoining = false;
        }
        if !self.fallback.is_empty() {
            *members = merged;
        }
        opened
    }
}

/// One member whose ring differs from this node's for longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub id: NodeId,
    pub theirs: RingHashes,
}

/// Counts, per live peer, the consecutive rounds its gossiped ring differed from this
/// node's; a peer past `threshold` rounds is a disagreement.
#[derive(Clone, Debug)]
pub struct SplitTracker {
    threshold: u32,
    differing: BTreeMap<NodeId, (RingHashes, u32)>,
}

impl SplitTracker {
    pub fn new(threshold_rounds: u32) -> Self {
        SplitTracker {
            threshold: threshold_rounds.max(1),
            differing: BTreeMap::new(),
        }
    }

    /// One gossip round. A peer that is not live, or announces no ring, is not compared
    /// (a dead peer's last word is old news). Returns the disagreements now past the
    /// threshold (equal from round to round while they last, so the view does not churn),
    /// and logs the start and end of each.
    pub fn round(
        &mut self,
        me: NodeId,
        mine: RingHashes,
        peers: &BTreeMap<NodeId, PeerRing>,
    ) -> Vec<Disagreement> {
        let mut next = BTreeMap::new();
        for (id, p) in peers {
            let (true, Some(theirs)) = (p.live && *id != me, p.hashes) else {
                continue;
            };
            if theirs == mine {
                continue;
            }
            let rounds = match self.differing.get(id) {
                Some((_, r)) => r.saturating_add(1),
                None => 1,
            };
            if rounds == self.threshold {
                tracing::warn!(
                    peer = %id,
                    ours = %mine,
                    theirs = %theirs,
                    rounds,
                    "ring disagreement: this member's ring differs from ours"
                );
            }
            next.insert(*id, (theirs, rounds));
        }
        for (id, (_, rounds)) in &self.differing {
            if *rounds >= self.threshold && !next.contains_key(id) {
                tracing::info!(peer = %id, "ring disagreement over");
            }
        }
        self.differing = next;
        self.differing
            .iter()
            .filter(|(_, (_, rounds))| *rounds >= self.threshold)
            .map(|(id, (theirs, _))| Disagreement {
                id: *id,
                theirs: *theirs,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::MemberState;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn member(id: u64) -> Member {
        let a = SocketAddr::from(([127, 0, 0, 1], 1000 + id as u16));
        Member {
            id: NodeId(id),
            http_addr: a,
            rpc_addr: a,
            gossip_addr: a,
            state: MemberState::Normal,
            live: true,
            vnodes: 16,
            to_move: None,
            writable: true,
        }
    }

    fn set(ids: &[u64]) -> BTreeMap<NodeId, Member> {
        ids.iter().map(|i| (NodeId(*i), member(*i))).collect()
    }

    fn peers(list: &[(u64, bool, Option<RingHashes>)]) -> BTreeMap<NodeId, PeerRing> {
        list.iter()
            .map(|(id, live, hashes)| {
                (
                    NodeId(*id),
                    PeerRing {
                        live: *live,
                        hashes: *hashes,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn hashes_round_trip_and_garbage_is_none() {
        let h = RingHashes {
            read: 0xdead_beef,
            write: u64::MAX,
        };
        assert_eq!(RingHashes::parse(&h.to_string()), Some(h));
        for bad in [
            "",
            "/",
            "00000000deadbeef",
            "zz00000000000000/ffffffffffffffff",
            "+000000000000001/0000000000000001",
            "0000000000000001/00000000000000001",
        ] {
            assert_eq!(RingHashes::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn restarted_node_waits_for_peers_and_keeps_its_ring_meanwhile() {
        let all = hashes_of(&set(&[1, 2, 3]));
        let mut gate = Rejoin::closed(set(&[1, 2, 3]));
        // Gossip has told of nobody yet: the view keeps the persisted ring, gate shut.
        let mut members = set(&[1]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &BTreeMap::new()));
        assert!(gate.rejoining());
        assert_eq!(hashes_of(&members), all, "the persisted ring stands in");
        assert!(!members[&NodeId(2)].live, "persisted members are not live");
        // One peer live, announcing the ring: confirmed, though gossip lacks member 3.
        let mut members = set(&[1, 2]);
        let p = peers(&[(2, true, Some(all))]);
        assert!(gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert!(!gate.rejoining());
        assert_eq!(
            hashes_of(&members),
            all,
            "member 3 stays until gossip has it"
        );
        // Gossip delivers member 3: the stand-in goes.
        let mut members = set(&[1, 2, 3]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert_eq!(members, set(&[1, 2, 3]));
    }

    #[test]
    fn a_dead_peers_word_confirms_nothing() {
        let all = hashes_of(&set(&[1, 2]));
        let mut gate = Rejoin::closed(set(&[1, 2]));
        let mut members = set(&[1, 2]);
        let p = peers(&[(2, false, Some(all))]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert!(gate.rejoining());
        let p = peers(&[(2, true, None)]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert!(
            gate.rejoining(),
            "a peer announcing no ring confirms nothing"
        );
    }

    #[test]
    fn a_stale_record_gives_way_to_the_clusters_ring() {
        // Member 3 left and was forgotten while node 1 was down.
        let now = hashes_of(&set(&[1, 2]));
        let mut gate = Rejoin::closed(set(&[1, 2, 3]));
        let mut members = set(&[1, 2]);
        let p = peers(&[(2, true, Some(now))]);
        assert!(gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert_eq!(members, set(&[1, 2]));
    }

    #[test]
    fn departed_members_never_come_back_from_the_record() {
        let mut gate = Rejoin::closed(set(&[1, 2, 3]));
        let mut members = set(&[1, 2]);
        let departed = BTreeSet::from([NodeId(3)]);
        gate.round(NodeId(1), &mut members, &departed, &BTreeMap::new());
        assert_eq!(members, set(&[1, 2]));
    }

    #[test]
    fn peers_disagreeing_among_themselves_confirm_nothing() {
        let a = hashes_of(&set(&[1, 2, 3]));
        let b = hashes_of(&set(&[1, 2]));
        let mut gate = Rejoin::closed(set(&[1, 2, 3]));
        let mut members = set(&[1, 2, 3]);
        let p = peers(&[(2, true, Some(a)), (3, true, Some(b))]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &p));
        assert!(gate.rejoining());
    }

    #[test]
    fn a_former_member_without_a_record_waits_for_its_peers() {
        let mut gate = Rejoin::awaiting();
        // Gossip has told of nobody yet: alone, but it was a member, so it waits.
        let mut members = set(&[1]);
        assert!(!gate.round(NodeId(1), &mut members, &BTreeSet::new(), &peers(&[])));
        assert!(gate.rejoining());
        // Gossip delivers the cluster, and the live peers gossip that ring: it opens.
        let all = set(&[1, 2, 3]);
        let ring = hashes_of(&all);
        let mut members = all.clone();
        let live = peers(&[(2, true, Some(ring)), (3, true, Some(ring))]);
        assert!(gate.round(NodeId(1), &mut members, &BTreeSet::new(), &live));
        assert!(!gate.rejoining());
    }

    #[test]
    fn lone_record_opens_at_once() {
        let mut gate = Rejoin::closed(set(&[1]));
        let mut members = set(&[1]);
        assert!(gate.round(NodeId(1), &mut members, &BTreeSet::new(), &BTreeMap::new()));
    }

    #[test]
    fn split_is_reported_only_past_the_threshold_and_clears() {
        let mine = hashes_of(&set(&[1, 2]));
        let theirs = hashes_of(&set(&[2]));
        let mut t = SplitTracker::new(3);
        let p = peers(&[
            (2, true, Some(theirs)),
            (3, true, Some(mine)),
            (4, false, Some(theirs)),
        ]);
        assert!(t.round(NodeId(1), mine, &p).is_empty());
        assert!(t.round(NodeId(1), mine, &p).is_empty());
        let d = t.round(NodeId(1), mine, &p);
        assert_eq!(d.len(), 1, "only the live peer that differs: {d:?}");
        assert_eq!((d[0].id, d[0].theirs), (NodeId(2), theirs));
        // One agreeing round resets the count.
        let p2 = peers(&[(2, true, Some(mine))]);
        assert!(t.round(NodeId(1), mine, &p2).is_empty());
        assert!(t.round(NodeId(1), mine, &p).is_empty());
    }

    proptest! {
        /// Whatever the peers say, an open gate stays open, and the view never holds a
        /// departed member from the record.
        #[test]
        fn gate_is_monotone_and_never_revives_departed(
            rounds in proptest::collection::vec(
                (proptest::collection::btree_set(1u64..6, 0..5),
                 proptest::collection::btree_set(1u64..6, 0..3),
                 proptest::collection::vec((1u64..6, any::<bool>(), proptest::option::of(0u64..3)), 0..5)),
                1..12),
        ) {
            let mut gate = Rejoin::closed(set(&[1, 2, 3, 4, 5]));
            let mut was_open = false;
            for (gossip, departed, said) in rounds {
                let mut members = set(&gossip.iter().copied().chain([1]).collect::<Vec<_>>());
                let departed: BTreeSet<NodeId> = departed.into_iter().filter(|d| *d != 1).map(NodeId).collect();
                members.retain(|id, _| !departed.contains(id));
                let p = peers(&said.iter().map(|(id, live, h)| (*id, *live, h.map(|x| RingHashes { read: x, write: x }))).collect::<Vec<_>>());
                gate.round(NodeId(1), &mut members, &departed, &p);
                prop_assert!(!(was_open && gate.rejoining()));
                was_open = !gate.rejoining();
                prop_assert!(members.keys().all(|id| !departed.contains(id)));
                prop_assert!(members.contains_key(&NodeId(1)));
            }
        }
    }
}
