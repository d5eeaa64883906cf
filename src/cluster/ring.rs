//! The consistent-hash ring: where keys live, as a pure function of the member set.
//!
//! Each member places `vnodes` tokens on a 64-bit circle. A key sits at `xxh3_64(key)`,
//! and its preference list is the first N *distinct* members met walking clockwise from
//! there: starting at the first token at or after the key's position, wrapping past
//! `u64::MAX` to 0. So the arc `(previous token, token]` belongs to the token's node.
//!
//! The ring knows nothing of liveness (docs/design.md §3): a down member keeps its tokens, and
//! the coordinator walks further clockwise ([`Ring::walk`]) for healthy stand-ins.
//! Building it from live nodes alone would move data on every blip.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Chain;
use std::slice;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::NodeId;

/// The vnode count when none is configured (docs/design.md §3).
pub const DEFAULT_VNODES: u16 = 128;

/// The number of positions on the circle, 2^64, as `u128` so a whole-circle width fits.
const RING_SIZE: u128 = 1 << 64;

/// Prefixed to the bytes of [`Ring::hash`], so the hash of a member set can never be
/// mistaken for some other xxh3 value that nodes exchange.
const HASH_DOMAIN: &[u8] = b"ringkv/ring/v2";

/// Where a key sits on the ring.
pub fn key_position(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The token of `node`'s vnode `i`: `xxh3_64` over the node id as a big-endian `u64`
/// followed by `i` as a big-endian `u32` (12 bytes).
///
/// `i` is a `u32` although vnode counts are `u16`: a token must never change for an
/// existing `(node, i)`, since that moves data, so widening the vnode count later must
/// not change the encoding of the tokens already placed.
pub fn token(node: NodeId, i: u32) -> u64 {
    let mut bytes = [0u8; 12];
    let (id, index) = bytes.split_at_mut(8);
    id.copy_from_slice(&node.0.to_be_bytes());
    index.copy_from_slice(&i.to_be_bytes());
    xxh3_64(&bytes)
}

/// An arc of the circle, `(start_exclusive, end_inclusive]`, wrapping past `u64::MAX`
/// when `end_inclusive <= start_exclusive`. `start == end` is the whole circle (a ring
/// with one token position), never an empty arc: [`Ring::ranges`] never makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenRange {
    pub start_exclusive: u64,
    pub end_inclusive: u64,
}

impl TokenRange {
    /// Whether the key at `position` falls in this arc.
    pub fn contains(&self, position: u64) -> bool {
        let (start, end) = (self.start_exclusive, self.end_inclusive);
        if start < end {
            start < position && position <= end
        } else {
            position > start || position <= end
        }
    }

    /// How many positions the arc covers, in `1..=2^64`.
    pub fn width(&self) -> u128 {
        if self.start_exclusive == self.end_inclusive {
            RING_SIZE
        } else {
            // Wrapping subtraction gives the clockwise distance, also across u64::MAX.
            u128::from(self.end_inclusive.wrapping_sub(self.start_exclusive))
        }
    }
}

/// The ring of a member set. Equal member sets with equal vnode counts give equal rings,
/// with equal [`Ring::hash`]es, on every node.
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    /// Sorted and distinct.
    members: Vec<NodeId>,
    /// Each member's vnode count, in the order of `members`.
    vnodes: Vec<u16>,
    /// Sorted by `(token, node)`. Ordering ties by node id makes the owner of a tied
    /// position (the lowest id comes first on the walk) the same on every node.
    tokens: Vec<(u64, NodeId)>,
    hash: u64,
}

impl Ring {
    /// The ring of the member set `members`; their order and repeats don't matter.
    ///
    /// `vnodes` is raised to at least 1: a member without tokens would never be reached
    /// on a walk, and preference lists would come up shorter than `min(n, members)`,
    /// which the quorum clamping relies on.
    pub fn new(members: impl IntoIterator<Item = NodeId>, vnodes: u16) -> Ring {
        Ring::weighted(members.into_iter().map(|m| (m, vnodes)))
    }

    /// The ring of members that each bring their own vnode count (the one they gossip).
    ///
    /// Every node builds the ring from what each member says of itself, never from its
    /// own setting: two nodes started with different `--vnodes` still route alike, and a
    /// bigger machine may take a larger share. A member listed twice keeps its first count
    /// after sorting by (id, count), so the result does not depend on the input order.
    pub fn weighted(members: impl IntoIterator<Item = (NodeId, u16)>) -> Ring {
        let mut pairs: Vec<(NodeId, u16)> = members
            .into_iter()
            .map(|(node, vnodes)| (node, vnodes.max(1)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup_by_key(|(node, _)| *node);
        let total: usize = pairs.iter().map(|&(_, v)| usize::from(v)).sum();
        let mut tokens = Vec::with_capacity(total);
        for &(node, vnodes) in &pairs {
            tokens.extend((0..u32::from(vnodes)).map(|i| (token(node, i), node)));
        }
        tokens.sort_unstable();
        // Two vnodes of one node colliding would list the node twice at one position:
        // harmless to walks, but it would make an empty arc in `ranges`.
        tokens.dedup();
        let hash = set_hash(&pairs);
        let (members, vnodes) = pairs.into_iter().unzip();
        Ring {
            members,
            vnodes,
            tokens,
            hash,
        }
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    /// The vnode count of `node` (at least 1), or 0 for a node outside the ring.
    pub fn vnodes_of(&self, node: NodeId) -> u16 {
        self.members
            .binary_search(&node)
            .map_or(0, |i| self.vnodes[i])
    }

    /// Every token with its node, sorted by `(token, node)`.
    pub fn tokens(&self) -> &[(u64, NodeId)] {
        &self.tokens
    }

    /// A hash of the member set and the vnode counts, the same on every node: two nodes
    /// with equal hashes route every key alike.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// [`Ring::hash`] as 16 hex digits, as logs and the admin API show it.
    pub fn hash_hex(&self) -> String {
        format!("{:016x}", self.hash)
    }

    /// The first `n` distinct members clockwise from the key, or all of them in
    /// clockwise order when there are fewer than `n`.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.preference_list_at(key_position(key), n)
    }

    /// [`Ring::preference_list`] for a position rather than a key.
    pub fn preference_list_at(&self, position: u64, n: usize) -> Vec<NodeId> {
        // On the request path: the result is the only allocation, sized exactly, and
        // `contains` on it is cheaper than any set for the handful of replicas in N.
        let want = n.min(self.members.len());
        let mut list = Vec::with_capacity(want);
        if want == 0 {
            return list;
        }
        for &(_, node) in self.clockwise_from(position) {
            if !list.contains(&node) {
                list.push(node);
                if list.len() == want {
                    break;
                }
            }
        }
        list
    }

    /// Every member once, in clockwise order from the key: the preference list, then
    /// the members a coordinator may use as stand-ins for down replicas, nearest first.
    pub fn walk(&self, key: &[u8]) -> Walk<'_> {
        self.walk_at(key_position(key))
    }

    /// [`Ring::walk`] from a position rather than a key.
    pub fn walk_at(&self, position: u64) -> Walk<'_> {
        Walk {
            tokens: self.clockwise_from(position),
            members: &self.members,
            seen: vec![false; self.members.len()],
            left: self.members.len(),
        }
    }

    /// One arc per distinct token position, in token order, each ending at its token;
    /// the first one wraps past `u64::MAX`. Together they cover the circle exactly once.
    pub fn ranges(&self) -> Vec<TokenRange> {
        arcs(&self.positions())
    }

    /// The preference list of every key in `range`, when `range` is one of
    /// [`Ring::ranges`] (or lies within one): no token falls strictly inside it, so its
    /// keys all walk from the token at its end.
    pub fn owners(&self, range: &TokenRange, n: usize) -> Vec<NodeId> {
        self.preference_list_at(range.end_inclusive, n)
    }

    /// The fraction of the circle each member owns, i.e. comes first in the preference
    /// list for. The shares sum to 1 (for a non-empty ring).
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        self.replica_share(1)
    }

    /// The fraction of the circle each member holds a replica of at factor `n`. The
    /// shares sum to `min(n, members)`.
    pub fn replica_share(&self, n: usize) -> BTreeMap<NodeId, f64> {
        // Widths are summed exactly in u128 and turned into fractions once, so the
        // shares add up to the whole circle with nothing but the final rounding.
        let mut widths: BTreeMap<NodeId, u128> = self.members.iter().map(|&m| (m, 0)).collect();
        for range in self.ranges() {
            for node in self.owners(&range, n) {
                if let Some(width) = widths.get_mut(&node) {
                    *width += range.width();
                }
            }
        }
        widths
            .into_iter()
            .map(|(node, width)| (node, fraction(width)))
            .collect()
    }

    /// The tokens from the first at or after `position`, clockwise round to just before it.
    fn clockwise_from(&self, position: u64) -> Clockwise<'_> {
        // Past the last token, `start` is `len`: `after` is empty and the walk wraps to
        // the first token, as it should.
        let start = self.tokens.partition_point(|&(token, _)| token < position);
        let (before, after) = self.tokens.split_at(start);
        after.iter().chain(before)
    }

    /// The distinct token positions, sorted.
    fn positions(&self) -> Vec<u64> {
        let mut positions: Vec<u64> = self.tokens.iter().map(|&(token, _)| token).collect();
        positions.dedup();
        positions
    }
}

impl Default for Ring {
    /// The ring without members, which routes nothing.
    fn default() -> Ring {
        Ring::new([], DEFAULT_VNODES)
    }
}

impl fmt::Debug for Ring {
    // Not derived: the token list runs to hundreds of entries per member.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .field("vnodes", &self.vnodes)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

type Clockwise<'a> = Chain<slice::Iter<'a, (u64, NodeId)>, slice::Iter<'a, (u64, NodeId)>>;

/// Every member of a ring once, clockwise from a position. See [`Ring::walk`].
pub struct Walk<'a> {
    tokens: Clockwise<'a>,
    members: &'a [NodeId],
    /// Indexed like `members`.
    seen: Vec<bool>,
    /// Members not yet yielded; at 0 the walk stops without scanning the rest.
    left: usize,
}

impl Iterator for Walk<'_> {
    type Item = NodeId;

    fn next(&mut self) -> Option<NodeId> {
        if self.left == 0 {
            return None;
        }
        for &(_, node) in self.tokens.by_ref() {
            let Ok(index) = self.members.binary_search(&node) else {
                continue;
            };
            if let Some(seen) = self.seen.get_mut(index) {
                if !*seen {
                    *seen = true;
                    self.left -= 1;
                    return Some(node);
                }
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Every member has at least one token, so each one left will be met.
        (self.left, Some(self.left))
    }
}

/// The fraction of the key space whose preference-list *set* at factor `n` differs
/// between `old` and `new`: what a membership change moves.
///
/// Exact, not sampled: between consecutive token positions of the two rings together,
/// neither ring has a token, so every key there has the same preference list as the
/// arc's end point, in both rings; one comparison per arc settles the whole arc.
pub fn moved_fraction(old: &Ring, new: &Ring, n: usize) -> f64 {
    let mut bounds = old.positions();
    bounds.extend(new.positions());
    bounds.sort_unstable();
    bounds.dedup();
    let mut moved: u128 = 0;
    for arc in arcs(&bounds) {
        let mut before = old.owners(&arc, n);
        let mut after = new.owners(&arc, n);
        before.sort_unstable();
        after.sort_unstable();
        if before != after {
            moved += arc.width();
        }
    }
    fraction(moved)
}

/// The arcs ending at each of the sorted, distinct `ends`; the first wraps.
fn arcs(ends: &[u64]) -> Vec<TokenRange> {
    let Some(&last) = ends.last() else {
        return Vec::new();
    };
    let mut start = last;
    ends.iter()
        .map(|&end| {
            let arc = TokenRange {
                start_exclusive: start,
                end_inclusive: end,
            };
            start = end;
            arc
        })
        .collect()
}

/// A width on the circle as a fraction of the whole.
fn fraction(width: u128) -> f64 {
    width as f64 / RING_SIZE as f64
}

/// The ring hash: xxh3 over the domain tag, the vnode count (u16 BE) and the sorted
/// member ids (u64 BE each). Nodes compare it, so this encoding is fixed: every field is
/// fixed-width, so distinct sets can't encode alike.
fn set_hash(members: &[(NodeId, u16)]) -> u64 {
    let mut bytes = Vec::with_capacity(HASH_DOMAIN.len() + 10 * members.len());
    bytes.extend_from_slice(HASH_DOMAIN);
    for (node, vnodes) in members {
        bytes.extend_from_slice(&node.0.to_be_bytes());
        bytes.extend_from_slice(&vnodes.to_be_bytes());
    }
    xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ids(raw: impl IntoIterator<Item = u64>) -> Vec<NodeId> {
        raw.into_iter().map(NodeId).collect()
    }

    fn node_set(size: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set(any::<u64>(), size).prop_map(ids)
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..24)
    }

    /// The walk done the slow, obvious way, from tokens recomputed here: sort every
    /// token, start at the first at or after `position` (else the first), keep the
    /// first sighting of each node.
    fn reference_walk(members: &[NodeId], vnodes: u16, position: u64) -> Vec<NodeId> {
        let mut tokens: Vec<(u64, NodeId)> = members
            .iter()
            .flat_map(|&m| (0..u32::from(vnodes.max(1))).map(move |i| (token(m, i), m)))
            .collect();
        tokens.sort();
        let start = tokens.iter().position(|&(t, _)| t >= position).unwrap_or(0);
        let mut out = Vec::new();
        for k in 0..tokens.len() {
            let node = tokens[(start + k) % tokens.len()].1;
            if !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }

    fn as_set(list: Vec<NodeId>) -> BTreeSet<NodeId> {
        list.into_iter().collect()
    }

    #[test]
    fn empty_ring_routes_nothing_and_never_panics() {
        let ring = Ring::default();
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert!(ring.preference_list(b"k", 3).is_empty());
        assert_eq!(ring.walk(b"k").count(), 0);
        assert!(ring.ranges().is_empty());
        assert!(ring.ownership().is_empty());
        assert!(ring.replica_share(3).is_empty());
        assert!(!ring.contains(NodeId(1)));
        assert_eq!(moved_fraction(&ring, &ring, 3), 0.0);
        let one = Ring::new([NodeId(1)], 4);
        assert_eq!(moved_fraction(&ring, &one, 3), 1.0);
        assert_eq!(moved_fraction(&one, &ring, 3), 1.0);
    }

    #[test]
    fn each_member_brings_its_own_vnode_count() {
        let a = Ring::weighted([(NodeId(1), 64), (NodeId(2), 256), (NodeId(3), 128)]);
        let b = Ring::weighted([(NodeId(3), 128), (NodeId(1), 64), (NodeId(2), 256)]);
        assert!(a == b, "the order members come in does not matter");
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), Ring::new(ids([1, 2, 3]), 128).hash());
        assert_eq!(a.tokens().len(), 64 + 256 + 128);
        assert_eq!(a.vnodes_of(NodeId(2)), 256);
        // Shares follow the counts: 1/7, 4/7 and 2/7 of the keys.
        let mut first = [0u32; 3];
        for i in 0..20_000u32 {
            let owner = a.preference_list(format!("key-{i}").as_bytes(), 1)[0];
            first[(owner.0 - 1) as usize] += 1;
        }
        assert!(first[1] > 3 * first[0], "{first:?}");
        assert!(first[2] > first[0] && first[1] > first[2], "{first:?}");
    }

    #[test]
    fn zero_vnodes_is_raised_to_one() {
        let ring = Ring::new(ids([1, 2, 3]), 0);
        assert_eq!(ring.vnodes_of(NodeId(2)), 1);
        assert_eq!(ring.vnodes_of(NodeId(9)), 0);
        assert_eq!(ring.tokens().len(), 3);
        assert_eq!(ring.preference_list(b"k", 3).len(), 3);
        assert_eq!(ring.hash(), Ring::new(ids([1, 2, 3]), 1).hash());
    }

    #[test]
    fn lone_token_range_is_the_whole_circle() {
        let ring = Ring::new([NodeId(7)], 1);
        let ranges = ring.ranges();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].width(), RING_SIZE);
        assert!(ranges[0].contains(0) && ranges[0].contains(u64::MAX));
        assert_eq!(ring.ownership()[&NodeId(7)], 1.0);
    }

    /// The encodings are pinned: changing either would move every key of every
    /// running cluster, or make nodes of two versions disagree about the ring.
    #[test]
    fn token_and_hash_encodings_are_pinned() {
        let bytes = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(token(NodeId(1), 2), xxh3_64(&bytes));
        assert_eq!(key_position(b"abc"), xxh3_64(b"abc"));
        let mut expected = b"ringkv/ring/v2".to_vec();
        for id in [1u64, 2] {
            expected.extend_from_slice(&id.to_be_bytes());
            expected.extend_from_slice(&128u16.to_be_bytes());
        }
        let ring = Ring::new(ids([2, 1]), 128);
        assert_eq!(ring.hash(), xxh3_64(&expected));
        assert_eq!(ring.hash_hex(), format!("{:016x}", xxh3_64(&expected)));
        assert_eq!(ring.hash_hex().len(), 16);
    }

    #[test]
    fn preference_list_allocates_exactly_its_result() {
        let ring = Ring::new(ids(1..=5), DEFAULT_VNODES);
        for i in 0u32..1000 {
            let list = ring.preference_list(&i.to_be_bytes(), 3);
            assert_eq!((list.len(), list.capacity()), (3, 3));
        }
        assert_eq!(ring.preference_list(b"k", 9).capacity(), 5);
    }

    /// The spread of ownership at the default 128 vnodes over many random member sets:
    /// run with `--nocapture` to see it. Each share is a sum of 128 arcs whose lengths
    /// are close to i.i.d. exponential, so it is ~Beta(128, 128(m-1)): relative standard
    /// deviation sqrt((m-1)/m / 128), 7.2% at 3 members and 7.9% at 5.
    #[test]
    fn ownership_spread_at_default_vnodes() {
        for m in 3u64..=5 {
            let (mut lo, mut hi) = (f64::MAX, f64::MIN);
            for set in 0..200u64 {
                let ring = Ring::new(
                    (0..m).map(|i| NodeId(xxh3_64(&[set, i].map(u64::to_be_bytes).concat()))),
                    128,
                );
                for share in ring.ownership().into_values() {
                    let relative = share * m as f64;
                    lo = lo.min(relative);
                    hi = hi.max(relative);
                }
            }
            println!("{m} members, 128 vnodes, 200 rings: share/(1/m) in [{lo:.3}, {hi:.3}]");
            assert!(lo > 0.6 && hi < 1.4, "{m} members: [{lo}, {hi}]");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Order and repeats in the input don't matter: same tokens, hash and routing.
        #[test]
        fn ring_is_a_function_of_the_member_set(
            (raw, shuffled) in prop::collection::vec(any::<u64>(), 0..8).prop_flat_map(|raw| {
                let doubled: Vec<u64> = raw.iter().chain(raw.iter().take(3)).copied().collect();
                (Just(raw), Just(doubled).prop_shuffle())
            }),
            vnodes in 1u16..32,
            keys in prop::collection::vec(key(), 1..8),
        ) {
            let a = Ring::new(ids(raw.iter().copied()), vnodes);
            let b = Ring::new(ids(shuffled), vnodes);
            prop_assert_eq!(a.tokens(), b.tokens());
            prop_assert_eq!(a.hash(), b.hash());
            prop_assert_eq!(&a, &b);
            let distinct: BTreeSet<u64> = raw.into_iter().collect();
            prop_assert_eq!(a.members(), &ids(distinct)[..]);
            for key in &keys {
                prop_assert_eq!(a.preference_list(key, 3), b.preference_list(key, 3));
                prop_assert_eq!(a.walk(key).collect::<Vec<_>>(), b.walk(key).collect::<Vec<_>>());
            }
        }

        /// The preference list holds min(n, members) distinct members and is the start of
        /// the walk; the walk meets every member once, as the slow reference does.
        #[test]
        fn preference_list_is_a_prefix_of_a_complete_walk(
            members in node_set(0..=8),
            vnodes in 1u16..32,
            key in key(),
            n in 0usize..10,
        ) {
            let ring = Ring::new(members.iter().copied(), vnodes);
            let list = ring.preference_list(&key, n);
            let walk: Vec<NodeId> = ring.walk(&key).collect();
            prop_assert_eq!(list.len(), n.min(members.len()));
            prop_assert_eq!(as_set(list.clone()).len(), list.len());
            prop_assert_eq!(&walk[..list.len()], &list[..]);
            prop_assert_eq!(walk.len(), members.len());
            prop_assert_eq!(as_set(walk.clone()), as_set(members.clone()));
            prop_assert_eq!(walk, reference_walk(&members, vnodes, key_position(&key)));
        }

        /// Adding member x: for every position, the new walk with x taken out IS the old
        /// walk (the old tokens are all still there, in the same order; x's are merely
        /// interleaved). Hence, at any factor n, the new preference list without x is the
        /// old list's first n or n-1 members: a key moves only onto x, never from one old
        /// member to another. Read backwards, this is also the law of removing a member.
        #[test]
        fn adding_a_member_only_displaces_toward_it(
            members in node_set(1..=7),
            extra in any::<u64>(),
            vnodes in 1u16..32,
            keys in prop::collection::vec(key(), 1..16),
            n in 1usize..6,
        ) {
            let x = NodeId(extra);
            prop_assume!(!members.contains(&x));
            let old = Ring::new(members.iter().copied(), vnodes);
            let new = Ring::new(members.iter().copied().chain([x]), vnodes);
            for key in &keys {
                let old_walk: Vec<NodeId> = old.walk(key).collect();
                let new_walk: Vec<NodeId> = new.walk(key).filter(|&m| m != x).collect();
                prop_assert_eq!(&new_walk, &old_walk);

                let old_list = old.preference_list(key, n);
                let new_list = new.preference_list(key, n);
                let kept: Vec<NodeId> = new_list.iter().copied().filter(|&m| m != x).collect();
                let expected_kept = if new_list.contains(&x) { new_list.len() - 1 } else { new_list.len() };
                prop_assert_eq!(&kept[..], &old_list[..expected_kept]);
            }
        }

        /// The ranges tile the circle, and every key in a range has the range's owners.
        #[test]
        fn ranges_tile_the_circle(
            members in node_set(0..=6),
            vnodes in 1u16..16,
            n in 1usize..5,
        ) {
            let ring = Ring::new(members, vnodes);
            let ranges = ring.ranges();
            let total: u128 = ranges.iter().map(TokenRange::width).sum();
            prop_assert_eq!(total, if ring.is_empty() { 0 } else { RING_SIZE });
            for (i, range) in ranges.iter().enumerate() {
                let previous = ranges[(i + ranges.len() - 1) % ranges.len()];
                prop_assert_eq!(range.start_exclusive, previous.end_inclusive);
                let first = range.start_exclusive.wrapping_add(1);
                prop_assert!(range.contains(first) && range.contains(range.end_inclusive));
                prop_assert!(ranges.len() == 1 || !range.contains(range.start_exclusive));
                let owners = ring.owners(range, n);
                prop_assert_eq!(&ring.preference_list_at(first, n), &owners);
                prop_assert_eq!(&ring.preference_list_at(range.end_inclusive, n), &owners);
            }
        }

        /// Shares sum to min(n, members). With 128 vnodes a share is ~Beta(128,
        /// 128(m-1)) times m, whose relative deviation is under 8% for 3–5 members, so
        /// ±50% is more than 6 standard deviations: a failure means a bug, not bad luck.
        #[test]
        fn ownership_sums_to_one_and_is_balanced(
            members in node_set(3..=5),
            n in 1usize..7,
        ) {
            let ring = Ring::new(members.iter().copied(), 128);
            let owned = ring.ownership();
            prop_assert_eq!(owned.len(), members.len());
            prop_assert!((owned.values().sum::<f64>() - 1.0).abs() < 1e-9);
            let fair = 1.0 / members.len() as f64;
            for (node, share) in &owned {
                prop_assert!((share - fair).abs() < 0.5 * fair, "{} owns {}", node, share);
            }
            let replicated = ring.replica_share(n);
            let expected = n.min(members.len()) as f64;
            prop_assert!((replicated.values().sum::<f64>() - expected).abs() < 1e-9);
            prop_assert!(replicated.values().all(|&s| s <= 1.0 + 1e-12));
        }

        /// Moving nothing moves nothing; adding x moves exactly the keys x now
        /// replicates (by the displacement law above); the measure is symmetric.
        #[test]
        fn moved_fraction_laws(
            members in node_set(1..=6),
            extra in any::<u64>(),
            vnodes in 1u16..32,
            n in 1usize..5,
        ) {
            let x = NodeId(extra);
            prop_assume!(!members.contains(&x));
            let old = Ring::new(members.iter().copied(), vnodes);
            let new = Ring::new(members.iter().copied().chain([x]), vnodes);
            prop_assert_eq!(moved_fraction(&old, &old, n), 0.0);
            let moved = moved_fraction(&old, &new, n);
            prop_assert_eq!(moved, moved_fraction(&new, &old, n));
            prop_assert!((moved - new.replica_share(n)[&x]).abs() < 1e-9);
        }

        /// From 3 to 4 members at n=3 every old list was all 3 old members, so exactly
        /// the keys x now replicates move: about 3/4. Over 300 random rings at 128 vnodes
        /// this measured 0.655..0.839 (mean 0.751, sd about 0.03), so 0.6..0.9 is 5 sd.
        #[test]
        fn three_to_four_members_moves_about_three_quarters(
            members in node_set(3..=3),
            extra in any::<u64>(),
        ) {
            let x = NodeId(extra);
            prop_assume!(!members.contains(&x));
            let old = Ring::new(members.iter().copied(), DEFAULT_VNODES);
            let new = Ring::new(members.iter().copied().chain([x]), DEFAULT_VNODES);
            let moved = moved_fraction(&old, &new, 3);
            prop_assert!((0.6..0.9).contains(&moved), "3 -> 4 at n=3 moved {}", moved);
        }

        /// The exact measure agrees with sampling keys, for any two member sets: 4000
        /// keys give a standard error under 0.008, so 0.05 is over 6 of them.
        #[test]
        fn moved_fraction_matches_sampled_keys(
            universe in node_set(2..=8),
            in_old in prop::collection::vec(any::<bool>(), 8),
            in_new in prop::collection::vec(any::<bool>(), 8),
            vnodes in 1u16..64,
            n in 1usize..4,
            seed in any::<u64>(),
        ) {
            let pick = |mask: &[bool]| -> Vec<NodeId> {
                universe.iter().zip(mask).filter(|(_, &keep)| keep).map(|(&m, _)| m).collect()
            };
            let old = Ring::new(pick(&in_old), vnodes);
            let new = Ring::new(pick(&in_new), vnodes);
            const SAMPLES: u64 = 4000;
            let differ = (0..SAMPLES)
                .filter(|i| {
                    let key = [seed.to_be_bytes(), i.to_be_bytes()].concat();
                    as_set(old.preference_list(&key, n)) != as_set(new.preference_list(&key, n))
                })
                .count();
            let sampled = differ as f64 / SAMPLES as f64;
            let exact = moved_fraction(&old, &new, n);
            prop_assert!((exact - sampled).abs() < 0.05, "exact {} sampled {}", exact, sampled);
        }

        #[test]
        fn hash_differs_when_the_ring_does(
            a in node_set(0..=6),
            b in node_set(0..=6),
            vnodes in 1u16..512,
        ) {
            let ring = Ring::new(a.iter().copied(), vnodes);
            if a != b {
                prop_assert_ne!(ring.hash(), Ring::new(b, vnodes).hash());
            }
            // An empty ring routes nothing, whatever its vnode count.
            if !a.is_empty() {
                prop_assert_ne!(ring.hash(), Ring::new(a, vnodes + 1).hash());
            }
        }
    }
}
