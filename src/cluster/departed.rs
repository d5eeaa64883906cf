//! The ids that left the cluster or were removed from it, as every node remembers them: a
//! bounded set, its gossip encoding (`removed:<id>` = `<kind>,<ms>`) and its copy on disk.
//!
//! Every node republishes the whole set under its own chitchat state and keeps it in its
//! data dir, so a removal outlives the node that an operator asked (it may leave or be
//! wiped), and a member that was down while it was removed hears of it from anyone when
//! it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::store::{Store, StoreError, Table};

/// How many departed ids a node keeps, gossips and stores.
///
/// The set has to hold an id only while a node might still come back under it: a member
/// that was down during its removal, or a data dir restored from an old backup. Each entry
/// costs about 40 bytes in the gossip state of *every* node, so a new node's first sync
/// carries `cap × nodes × 40` bytes: with 256, a 10-node cluster ships about 100 KB once,
/// in a few MTU-sized deltas. A cluster sees far fewer than 256 departures while a stale
/// data dir of one of them can still be started. When the set is full, the oldest
/// departure is forgotten first (see [`Departures::insert`]); a node that returns after
/// its own entry was forgotten is treated like any restarted member, which is the state
/// of things before this set existed.
pub const MAX_DEPARTED: usize = 256;

/// The meta key of the stored set.
const META_KEY: &[u8] = b"departed";
/// Leading byte of the stored encoding, so a later format can be told apart.
const FORMAT: u8 = 1;

/// Why an id is gone. A removal outranks a leave: the operator's word is what a returning
/// node must obey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DepartureKind {
    Left,
    Removed,
}

impl DepartureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DepartureKind::Left => "left",
            DepartureKind::Removed => "removed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    pub kind: DepartureKind,
    /// When the departure was first recorded (ms since the Unix epoch, by the recorder's
    /// clock). Only orders evictions.
    pub at_ms: u64,
}

impl Departure {
    /// Two records of one id merge to the strongest kind and the earliest time: the merge
    /// is commutative, associative and idempotent, so nodes agree whatever order gossip
    /// brings the records in.
    pub fn merge(self, other: Departure) -> Departure {
        Departure {
            kind: self.kind.max(other.kind),
            at_ms: self.at_ms.min(other.at_ms),
        }
    }

    /// The gossip value: `removed,<ms>` or `left,<ms>`.
    pub fn encode(self) -> String {
        format!("{},{}", self.kind.as_str(), self.at_ms)
    }

    /// Parses a gossip value. A peer's time is clamped to `now_ms`: a time in the future
    /// would make the entry outlast every real one. Values of the first format (`1`, set
    /// by a remover before this set existed) are removals recorded now.
    pub fn decode(value: &str, now_ms: u64) -> Option<Departure> {
        if value == "1" {
            return Some(Departure {
                kind: DepartureKind::Removed,
                at_ms: now_ms,
            });
        }
        let (kind, at) = value.split_once(',')?;
        let kind = match kind {
            "left" => DepartureKind::Left,
            "removed" => DepartureKind::Removed,
            _ => return None,
        };
        let at_ms = at.parse::<u64>().ok()?.min(now_ms);
        Some(Departure { kind, at_ms })
    }
}

/// The departed ids a node knows, at most `cap` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departures {
    cap: usize,
    entries: BTreeMap<NodeId, Departure>,
}

impl Default for Departures {
    fn default() -> Self {
        Departures::new(MAX_DEPARTED)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored(Vec<(u64, Departure)>);

impl Departures {
    pub fn new(cap: usize) -> Self {
        Departures {
            cap: cap.max(1),
            entries: BTreeMap::new(),
        }
    }

    pub fn get(&self, id: NodeId) -> Option<Departure> {
        self.entries.get(&id).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, Departure)> + '_ {
        self.entries.iter().map(|(id, d)| (*id, *d))
    }

    /// Adds or merges one record; returns whether the set changed.
    ///
    /// When full, the oldest entry, by `(at_ms, id)`, is dropped. Every node ordering by
    /// the same key is what lets them agree on which ids to keep: a node that dropped an
    /// id would otherwise learn it again from a peer that kept it, and drop another.
    pub fn insert(&mut self, id: NodeId, dep: Departure) -> bool {
        let merged = match self.entries.get(&id) {
            Some(old) => old.merge(dep),
            None => dep,
        };
        if self.entries.get(&id) == Some(&merged) {
            return false;
        }
        self.entries.insert(id, merged);
        if self.entries.len() > self.cap {
            if let Some(oldest) = self.oldest() {
                self.entries.remove(&oldest);
                return oldest != id;
            }
        }
        true
    }

    fn oldest(&self) -> Option<NodeId> {
        self.entries
            .iter()
            .min_by_key(|(id, d)| (d.at_ms, **id))
            .map(|(id, _)| *id)
    }

    /// The set kept in `store`, empty if none was.
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut set = Departures::default();
        let Some(raw) = store.get(Table::Meta, META_KEY)? else {
            return Ok(set);
        };
        let corrupt = |why: String| StoreError::Corrupt(format!("departed ids: {why}"));
        let (format, body) = raw.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if *format != FORMAT {
            return Err(corrupt(format!("unknown format {format}")));
        }
        let Stored(entries) = rmp_serde::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
        // The cap holds whatever the file says: inserting keeps only the newest.
        for (id, dep) in entries {
            set.insert(NodeId(id), dep);
        }
        Ok(set)
    }

    /// Writes the set to `store`, durably.
    pub fn save(&self, store: &dyn Store) -> Result<(), StoreError> {
        let stored = Stored(self.entries.iter().map(|(id, d)| (id.0, *d)).collect());
        let mut raw = vec![FORMAT];
        raw.extend(
            rmp_serde::to_vec(&stored)
                .map_err(|e| StoreError::Corrupt(format!("encoding departed ids: {e}")))?,
        );
        store.write(true, &mut |txn| txn.put(Table::Meta, META_KEY, &raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use proptest::prelude::*;

    fn dep(kind: DepartureKind, at_ms: u64) -> Departure {
        Departure { kind, at_ms }
    }

    #[test]
    fn gossip_values_round_trip_and_clamp() {
        let d = dep(DepartureKind::Removed, 1_000);
        assert_eq!(Departure::decode(&d.encode(), 5_000), Some(d));
        assert_eq!(
            Departure::decode("left,9999", 5_000),
            Some(dep(DepartureKind::Left, 5_000))
        );
        assert_eq!(
            Departure::decode("1", 7),
            Some(dep(DepartureKind::Removed, 7))
        );
        assert_eq!(Departure::decode("gone,1", 7), None);
        assert_eq!(Departure::decode("left,-1", 7), None);
        assert_eq!(Departure::decode("", 7), None);
    }

    #[test]
    fn a_full_set_drops_the_oldest() {
        let mut set = Departures::new(2);
        assert!(set.insert(NodeId(1), dep(DepartureKind::Left, 10)));
        assert!(set.insert(NodeId(2), dep(DepartureKind::Removed, 20)));
        assert!(set.insert(NodeId(3), dep(DepartureKind::Removed, 30)));
        assert_eq!(set.get(NodeId(1)), None);
        // Older than everything kept: not taken, and not a change.
        assert!(!set.insert(NodeId(1), dep(DepartureKind::Left, 10)));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_removal_outranks_a_leave() {
        let mut set = Departures::new(4);
        set.insert(NodeId(1), dep(DepartureKind::Left, 50));
        assert!(set.insert(NodeId(1), dep(DepartureKind::Removed, 60)));
        assert_eq!(set.get(NodeId(1)), Some(dep(DepartureKind::Removed, 50)));
        assert!(!set.insert(NodeId(1), dep(DepartureKind::Left, 70)));
    }

    #[test]
    fn the_set_survives_a_restart() {
        let store = MemoryStore::new();
        assert!(Departures::load(&store).unwrap().is_empty());
        let mut set = Departures::default();
        set.insert(NodeId(9), dep(DepartureKind::Removed, 3));
        set.save(&store).unwrap();
        assert_eq!(Departures::load(&store).unwrap(), set);
    }

    #[test]
    fn a_corrupt_copy_is_an_error() {
        let store = MemoryStore::new();
        store
            .write(true, &mut |txn| {
                txn.put(Table::Meta, META_KEY, &[FORMAT, 0xc1])
            })
            .unwrap();
        assert!(Departures::load(&store).is_err());
        store
            .write(true, &mut |txn| txn.put(Table::Meta, META_KEY, &[9]))
            .unwrap();
        assert!(Departures::load(&store).is_err());
    }

    fn kind() -> impl Strategy<Value = DepartureKind> {
        prop_oneof![Just(DepartureKind::Left), Just(DepartureKind::Removed)]
    }

    proptest! {
        /// Nodes that hear the same records in any order keep the same set, within the cap.
        #[test]
        fn order_does_not_matter(
            records in proptest::collection::btree_map(0u64..64, (kind(), 0u64..1000), 0..40),
            cap in 1usize..16,
            seed in any::<u64>(),
        ) {
            let records: Vec<_> = records.into_iter().collect();
            let mut a = Departures::new(cap);
            for (id, (k, at)) in &records {
                a.insert(NodeId(*id), dep(*k, *at));
            }
            let mut shuffled = records.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut b = Departures::new(cap);
            for (id, (k, at)) in &shuffled {
                b.insert(NodeId(*id), dep(*k, *at));
            }
            prop_assert_eq!(&a, &b);
            prop_assert!(a.len() <= cap);
            // What is kept is the newest `cap` records.
            let mut newest: Vec<_> = records.iter().map(|(id, (_, at))| (*at, *id)).collect();
            newest.sort_unstable();
            let kept: Vec<_> = newest.iter().rev().take(cap).map(|(_, id)| NodeId(*id)).collect();
            for id in kept {
                prop_assert!(a.get(id).is_some());
            }
        }

        /// Merging records of one id is commutative, associative and idempotent.
        #[test]
        fn merge_laws(
            a in (kind(), any::<u64>()),
            b in (kind(), any::<u64>()),
            c in (kind(), any::<u64>()),
        ) {
            let (a, b, c) = (dep(a.0, a.1), dep(b.0, b.1), dep(c.0, c.1));
            prop_assert_eq!(a.merge(b), b.merge(a));
            prop_assert_eq!(a.merge(b).merge(c), a.merge(b.merge(c)));
            prop_assert_eq!(a.merge(a), a);
        }
    }
}
