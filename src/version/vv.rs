//! Actors, dots and version vectors: the pure algebra under the sibling set.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Who creates versions: a node incarnation, never a client.
///
/// `epoch` grows each time the node restarts after an unclean stop. Under `--fsync
/// periodic` a crash can forget the last dots a node issued; a fresh epoch makes sure a
/// forgotten dot is never issued again for a different value, which would make two
/// different versions look identical to every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub node: u64,
    pub epoch: u32,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{}", self.node, self.epoch)
    }
}

/// One event: a version created by `actor`, unique among all its versions of all keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

/// A version vector: for each actor, the highest counter seen. An actor's counters only
/// grow, so "seen counter c" means "seen every event of that actor up to c" (counters it
/// skipped for this key were events of other keys, and never occur here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Whether the event `dot` is in this causal history.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Record the event `dot` (and with it every earlier event of its actor).
    pub fn add(&mut self, dot: Dot) {
        // Counter 0 is what every vector holds already; an entry for it would make equal
        // histories unequal values.
        if dot.counter == 0 {
            return;
        }
        let entry = self.0.entry(dot.actor).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// Pointwise maximum: the union of two causal histories.
    pub fn merge(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.0 {
            if counter == 0 {
                continue;
            }
            let entry = self.0.entry(*actor).or_insert(0);
            *entry = (*entry).max(counter);
        }
    }

    /// Pointwise minimum: what both histories have seen. Actors missing from either side
    /// are left out (a missing entry is counter 0).
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(
            self.0
                .iter()
                .filter_map(|(actor, &c)| {
                    let m = c.min(other.get(actor));
                    (m > 0).then_some((*actor, m))
                })
                .collect(),
        )
    }

    /// The highest counter of any actor (0 when empty).
    pub fn max_counter(&self) -> u64 {
        self.0.values().copied().max().unwrap_or(0)
    }

    /// How many actors this vector names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `self` has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(actor, &c)| self.get(actor) >= c)
    }

    /// `self` has seen strictly more than `other`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self.descends(other) && self != other
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Actor, &u64)> {
        self.0.iter()
    }
}

impl FromIterator<(Actor, u64)> for VersionVector {
    /// Entries as given; an actor given twice keeps its highest counter.
    fn from_iter<I: IntoIterator<Item = (Actor, u64)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(actor, counter)| Dot { actor, counter })
            .collect()
    }
}

impl FromIterator<Dot> for VersionVector {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for dot in iter {
            vv.add(dot);
        }
        vv
    }
}
