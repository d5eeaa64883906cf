//! The anti-entropy hash tree: a summary of every key a node stores, by ring position,
//! that two replicas compare to find where they differ.
//!
//! The ring position space is cut into [`LEAVES`] equal leaves. A leaf's hash is the
//! wrapping sum of `h(key, digest)` over its keys, where `digest` summarises the key's
//! stored sibling set. A sum can be updated in place — add the new entry, subtract the
//! old — so every local write updates the tree in O(log LEAVES) with no rescan, and the
//! leaf sums are stored in the same transaction as the write they summarise: the tree
//! is as durable as the data, and a restart only reloads `LEAVES` rows.
//!
//! The hash of any position interval is then a Fenwick-tree sum over the leaves it
//! covers, plus the entries of the (at most two) leaves it cuts, which the caller reads
//! from the position index. That lets replicas compare arbitrary ring ranges — ranges
//! change as members join and leave — where fixed per-range trees would be rebuilt.
//!
//! 128-bit sums: two different key sets collide with probability about 2^-128 per
//! comparison, far below any other failure rate.

use xxhash_rust::xxh3::xxh3_128;

/// Leaf count: 2^LEAF_BITS.
pub const LEAF_BITS: u32 = 12;
pub const LEAVES: usize = 1 << LEAF_BITS;

/// The leaf a ring position falls in.
pub fn leaf_of(position: u64) -> usize {
    (position >> (64 - LEAF_BITS)) as usize
}

/// First position of a leaf.
pub fn leaf_start(leaf: usize) -> u64 {
    (leaf as u64) << (64 - LEAF_BITS)
}

/// Last position of a leaf.
pub fn leaf_end(leaf: usize) -> u64 {
    leaf_start(leaf) | (u64::MAX >> LEAF_BITS)
}

/// A key's contribution to its leaf: binds the key to the digest of its stored set.
pub fn entry_hash(key: &[u8], digest: u64) -> u128 {
    let mut buf = Vec::with_capacity(key.len() + 8);
    buf.extend_from_slice(&digest.to_be_bytes());
    buf.extend_from_slice(key);
    xxh3_128(&buf)
}

/// A summary of a set of entries: their hash sum and their count. Sums of disjoint sets
/// add; the empty set is zero.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Summary {
    pub hash: u128,
    pub count: u64,
}

impl Summary {
    pub fn of(key: &[u8], digest: u64) -> Self {
        Summary {
            hash: entry_hash(key, digest),
            count: 1,
        }
    }

    pub fn add(&mut self, other: Summary) {
        self.hash = self.hash.wrapping_add(other.hash);
        self.count = self.count.wrapping_add(other.count);
    }

    pub fn sub(&mut self, other: Summary) {
        self.hash = self.hash.wrapping_sub(other.hash);
        self.count = self.count.wrapping_sub(other.count);
    }

    pub fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..16].copy_from_slice(&self.hash.to_be_bytes());
        b[16..].copy_from_slice(&self.count.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let hash = u128::from_be_bytes(b.get(..16)?.try_into().ok()?);
        let count = u64::from_be_bytes(b.get(16..24)?.try_into().ok()?);
        Some(Summary { hash, count })
    }
}

/// Leaf summaries with prefix sums (a Fenwick tree), so any run of leaves sums in
/// O(log LEAVES).
#[derive(Clone)]
pub struct Tree {
    leaves: Vec<Summary>,
    fenwick: Vec<Summary>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            leaves: vec![Summary::default(); LEAVES],
            fenwick: vec![Summary::default(); LEAVES + 1],
        }
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree").field("root", &self.root()).finish()
    }
}

impl Tree {
    /// Builds a tree from stored leaf summaries.
    pub fn from_leaves(leaves: impl IntoIterator<Item = (usize, Summary)>) -> Self {
        let mut tree = Tree::default();
        for (leaf, s) in leaves {
            tree.apply(leaf, s, Summary::default());
        }
        tree
    }

    pub fn leaf(&self, leaf: usize) -> Summary {
        self.leaves.get(leaf).copied().unwrap_or_default()
    }

    /// Replaces `removed` by `added` in a leaf.
    pub fn apply(&mut self, leaf: usize, added: Summary, removed: Summary) {
        let Some(l) = self.leaves.get_mut(leaf) else {
            return;
        };
        l.add(added);
        l.sub(removed);
        let mut i = leaf + 1;
        while i <= LEAVES {
            self.fenwick[i].add(added);
            self.fenwick[i].sub(removed);
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of leaves `0..end`.
    fn prefix(&self, end: usize) -> Summary {
        let mut s = Summary::default();
        let mut i = end.min(LEAVES);
        while i > 0 {
            s.add(self.fenwick[i]);
            i -= i & i.wrapping_neg();
        }
        s
    }

    /// Sum of leaves `first..=last` (`first <= last`).
    pub fn leaves_sum(&self, first: usize, last: usize) -> Summary {
        let mut s = self.prefix(last + 1);
        s.sub(self.prefix(first));
        s
    }

    pub fn root(&self) -> Summary {
        self.prefix(LEAVES)
    }
}

/// A closed interval of ring positions `[lo, hi]`, `lo <= hi` (a wrapping ring range is
/// two of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub lo: u64,
    pub hi: u64,
}

impl Interval {
    pub const FULL: Interval = Interval {
        lo: 0,
        hi: u64::MAX,
    };

    pub fn contains(&self, p: u64) -> bool {
        self.lo <= p && p <= self.hi
    }

    /// Splits into up to `k` parts of near-equal width, in order.
    pub fn split(&self, k: usize) -> Vec<Interval> {
        let width = u128::from(self.hi - self.lo) + 1;
        let k = (k as u128).clamp(1, width);
        (0..k)
            .map(|i| {
                let lo = self.lo as u128 + width * i / k;
                let hi = self.lo as u128 + width * (i + 1) / k - 1;
                Interval {
                    lo: lo as u64,
                    hi: hi as u64,
                }
            })
            .collect()
    }

    /// The parts of this interval that cover whole leaves, and the partial leaves at
    /// either edge (whose entries must be read from the index).
    pub fn decompose(&self) -> Decomposed {
        let (first, last) = (leaf_of(self.lo), leaf_of(self.hi));
        let lo_whole = leaf_start(first) == self.lo;
        let hi_whole = leaf_end(last) == self.hi;
        if first == last {
            return if lo_whole && hi_whole {
                Decomposed {
                    whole: Some((first, last)),
                    edges: vec![],
                }
            } else {
                Decomposed {
                    whole: None,
                    edges: vec![*self],
                }
            };
        }
        let mut edges = vec![];
        let mut whole_first = first;
        let mut whole_last = last;
        if !lo_whole {
            edges.push(Interval {
                lo: self.lo,
                hi: leaf_end(first),
            });
            whole_first += 1;
        }
        if !hi_whole {
            edges.push(Interval {
                lo: leaf_start(last),
                hi: self.hi,
            });
            whole_last -= 1;
        }
        let whole = (whole_first <= whole_last).then_some((whole_first, whole_last));
        Decomposed { whole, edges }
    }
}

/// See [`Interval::decompose`].
#[derive(Debug, PartialEq, Eq)]
pub struct Decomposed {
    pub whole: Option<(usize, usize)>,
    pub edges: Vec<Interval>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The summary of an interval computed from scratch.
    fn brute(entries: &[(u64, Vec<u8>, u64)], iv: Interval) -> Summary {
        let mut s = Summary::default();
        for (p, k, d) in entries {
            if iv.contains(*p) {
                s.add(Summary::of(k, *d));
            }
        }
        s
    }

    fn via_tree(tree: &Tree, entries: &[(u64, Vec<u8>, u64)], iv: Interval) -> Summary {
        let d = iv.decompose();
        let mut s = d
            .whole
            .map_or_else(Summary::default, |(a, b)| tree.leaves_sum(a, b));
        for e in d.edges {
            s.add(brute(entries, e));
        }
        s
    }

    fn entries() -> impl Strategy<Value = Vec<(u64, Vec<u8>, u64)>> {
        proptest::collection::vec(
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 1..8),
                any::<u64>(),
            ),
            0..200,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Interval summaries from the tree (whole leaves + edge scans) equal the
        /// brute-force sum, for any interval, and splits add up to their parent.
        #[test]
        fn interval_sums_match_brute_force(es in entries(), a in any::<u64>(), b in any::<u64>(), k in 1usize..20) {
            let mut tree = Tree::default();
            for (p, key, d) in &es {
                tree.apply(leaf_of(*p), Summary::of(key, *d), Summary::default());
            }
            let iv = Interval { lo: a.min(b), hi: a.max(b) };
            prop_assert_eq!(via_tree(&tree, &es, iv), brute(&es, iv));
            let mut parts = Summary::default();
            for part in iv.split(k) {
                prop_assert!(part.lo <= part.hi && iv.contains(part.lo) && iv.contains(part.hi));
                parts.add(via_tree(&tree, &es, part));
            }
            prop_assert_eq!(parts, brute(&es, iv));
            prop_assert_eq!(tree.root(), brute(&es, Interval::FULL));
        }

        /// Updating in place (remove old digest, add new) equals building from scratch, and
        /// reloading from leaf summaries gives the same tree.
        #[test]
        fn incremental_updates_equal_a_rebuild(es in entries(), new_digests in proptest::collection::vec(any::<u64>(), 200)) {
            let mut tree = Tree::default();
            for (p, key, d) in &es {
                tree.apply(leaf_of(*p), Summary::of(key, *d), Summary::default());
            }
            let mut updated = es.clone();
            for (i, (p, key, d)) in updated.iter_mut().enumerate() {
                let nd = new_digests[i];
                tree.apply(leaf_of(*p), Summary::of(key, nd), Summary::of(key, *d));
                *d = nd;
            }
            let mut rebuilt = Tree::default();
            for (p, key, d) in &updated {
                rebuilt.apply(leaf_of(*p), Summary::of(key, *d), Summary::default());
            }
            prop_assert_eq!(tree.root(), rebuilt.root());
            let reloaded = Tree::from_leaves((0..LEAVES).map(|l| (l, tree.leaf(l))));
            for l in (0..LEAVES).step_by(97) {
                prop_assert_eq!(reloaded.leaves_sum(0, l), tree.leaves_sum(0, l));
            }
        }
    }

    #[test]
    fn leaf_bounds_tile_the_space() {
        assert_eq!(leaf_start(0), 0);
        assert_eq!(leaf_end(LEAVES - 1), u64::MAX);
        for l in [0, 1, 17, LEAVES - 1] {
            assert_eq!(leaf_of(leaf_start(l)), l);
            assert_eq!(leaf_of(leaf_end(l)), l);
        }
        assert_eq!(
            Interval::FULL.decompose(),
            Decomposed {
                whole: Some((0, LEAVES - 1)),
                edges: vec![]
            }
        );
        assert_eq!(
            Summary::from_bytes(&Summary { hash: 7, count: 3 }.to_bytes()),
            Some(Summary { hash: 7, count: 3 })
        );
    }
}
