//! The sibling set: every version a key holds, and the causal context they were seen in.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::vv::{Actor, Dot, VersionVector};

/// What a version holds: a value, or the mark that the key was deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Payload {
    Value { data: Bytes, content_type: String },
    Tombstone,
}

impl Payload {
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Payload::Tombstone)
    }

    /// Bytes of user data this payload carries (for size accounting).
    pub fn data_len(&self) -> usize {
        match self {
            Payload::Value { data, content_type } => data.len() + content_type.len(),
            Payload::Tombstone => 0,
        }
    }
}

/// One version of a key: the event that made it, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub dot: Dot,
    pub payload: Payload,
    /// Wall-clock time of the write at its coordinator. Informational, and the clock that
    /// tombstone GC's grace period is measured with; never used to order versions.
    pub written_at_ms: u64,
}

/// All versions a replica holds for one key, plus everything it has seen.
///
/// Invariants: `versions` is sorted by dot with no dot twice, and `context` contains
/// every version's dot.
///
/// The context is bounded by the key's real history: since a write's token is clamped
/// to it (see [`Self::update_above`]), only dots nodes issued enter it, so it names at most
/// the node incarnations that ever wrote the key, each at a counter it issued. It is not
/// pruned. An entry that no held version needs still says "these versions were
/// superseded": a replica that was away (a stale copy, a hint still in flight, a node
/// restored from an old disk) may hold one of them, and without the entry the next sync
/// would bring it back. Knowing that no replica holds any would take what tombstone GC
/// takes (every replica's digest). So instead of pruning, client input is kept from
/// adding to it, and what leaves the node is bounded: tokens are trimmed to
/// [`super::MAX_TOKEN_ACTORS`] when issued, and refused above it when they come back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SiblingSet {
    versions: Vec<Version>,
    context: VersionVector,
}

impl SiblingSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// The versions that hold values, in dot order.
    pub fn live(&self) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(|v| !v.payload.is_tombstone())
    }

    pub fn has_live(&self) -> bool {
        self.live().next().is_some()
    }

    fn holds(&self, dot: &Dot) -> bool {
        self.versions.binary_search_by(|v| v.dot.cmp(dot)).is_ok()
    }

    /// A new write by `actor` that has seen `seen` (the client's token), or, for a blind
    /// write (`seen == None`), everything this replica holds.
    ///
    /// The new version replaces exactly the versions held here whose dots `seen` covers;
    /// the rest stay as siblings. Returns the new set and the new version's dot, or
    /// [`CounterOverflow`] when the actor's counter cannot grow any more.
    pub fn update(
        &self,
        seen: Option<&VersionVector>,
        actor: Actor,
        payload: Payload,
        written_at_ms: u64,
    ) -> Result<(SiblingSet, Dot), CounterOverflow> {
        self.update_above(seen, actor, 0, payload, written_at_ms)
    }

    /// [`Self::update`] with a dot counter above `floor` too: the highest counter `actor`
    /// has issued for any key (see [`crate::identity::Identity::dot_floor`]). Counters of
    /// one actor may then skip numbers within a key; that is harmless, because a version
    /// vector entry only ever covers dots the actor issued, and skipped ones never exist.
    pub fn update_above(
        &self,
        seen: Option<&VersionVector>,
        actor: Actor,
        floor: u64,
        payload: Payload,
        written_at_ms: u64,
    ) -> Result<(SiblingSet, Dot), CounterOverflow> {
        // The token is clamped to what this replica has seen: `seen ∧ context`. The token
        // is client input, and it may claim anything: counters at u64::MAX, actors that
        // never existed. Taken as is, its claims entered the stored context, where they
        // (a) made the next dot wrap, (b) swallowed versions other replicas hold that the
        // client never saw, and (c) grew the context by every invented actor.
        //
        // Refusing tokens that claim more than this replica holds would be the other way
        // to close this, but it fails honest read-modify-write: a token read at R
        // replicas legitimately carries counters the coordinating replica has not stored
        // yet (replication lag). Clamping instead makes a forged counter exactly as
        // harmful as a blind write, which docs/design.md §1 already allows: it supersedes at most
        // what this replica holds. Versions held only by other replicas survive as
        // siblings when the sets meet, instead of being swallowed by a claim this replica
        // cannot check. The price would be a sibling in the lag case, never a lost write;
        // the coordinator avoids even that by catching up (a read at R, merged here) before
        // a write whose token claims more than this replica has seen
        // (`Coordinator::catch_up`).
        //
        // A version held here has its dot in `context`, so the clamp does not change which
        // local versions the write supersedes (a held dot is covered by `seen ∧ context`
        // iff `seen` covers it); what it changes is that the new context is exactly
        // `context + dot`: the token adds nothing to it.
        let local = &self.context;
        let seen = match seen {
            Some(token) => token.meet(local),
            None => local.clone(),
        };
        // The counter must be above anything this replica has seen of this actor and
        // anything the actor issued for any key (the floor). It is never taken from the
        // token: the floor moves only by dots this node issues. u64::MAX itself is never
        // issued, so that a counter at u64::MAX anywhere (a token, a peer's set) is proof
        // of a forgery or corruption and can be refused where it enters.
        let counter = local
            .get(&actor)
            .max(floor)
            .checked_add(1)
            .filter(|c| *c < u64::MAX)
            .ok_or(CounterOverflow { actor })?;
        let dot = Dot { actor, counter };
        let mut versions: Vec<Version> = self
            .versions
            .iter()
            .filter(|v| !seen.contains(&v.dot))
            .cloned()
            .collect();
        versions.push(Version {
            dot,
            payload,
            written_at_ms,
        });
        versions.sort_by_key(|v| v.dot);
        let mut context = local.clone();
        // `seen` is below `context`, so this adds nothing; kept so that the rule reads as
        // the DVV update (context ∪ seen ∪ {dot}) it is.
        context.merge(&seen);
        context.add(dot);
        Ok((SiblingSet { versions, context }, dot))
    }

    /// Whether any counter in this set (its context or a version's dot) is u64::MAX, the
    /// one counter no actor ever issues (see [`Self::update_above`]). A set that has one
    /// came from a forgery or corruption; merging it would make this replica's next write
    /// of that actor overflow.
    pub fn has_overflowed_counter(&self) -> bool {
        self.context.max_counter() == u64::MAX
            || self.versions.iter().any(|v| v.dot.counter == u64::MAX)
    }

    /// Merge what two replicas hold for one key. Commutative, associative and idempotent.
    ///
    /// A version survives unless the other side has seen its dot and does not hold it: then
    /// the other side replaced it with something that descends from it.
    pub fn sync(&self, other: &SiblingSet) -> SiblingSet {
        let mut versions: Vec<Version> = Vec::with_capacity(self.len().max(other.len()));
        let (mut a, mut b) = (
            self.versions.iter().peekable(),
            other.versions.iter().peekable(),
        );
        loop {
            let next = match (a.peek().copied(), b.peek().copied()) {
                (None, None) => break,
                (Some(x), None) => keep_if(a.next(), !other.context.contains(&x.dot)),
                (None, Some(y)) => keep_if(b.next(), !self.context.contains(&y.dot)),
                (Some(x), Some(y)) => match x.dot.cmp(&y.dot) {
                    std::cmp::Ordering::Less => keep_if(a.next(), !other.context.contains(&x.dot)),
                    std::cmp::Ordering::Greater => {
                        keep_if(b.next(), !self.context.contains(&y.dot))
                    }
                    // One dot is one event, so both sides hold the same version. Should
                    // they ever differ (a bug, or a dot reissued after data loss), pick the
                    // same one on every replica so that they still converge.
                    std::cmp::Ordering::Equal => {
                        let (x, y) = (a.next(), b.next());
                        x.max(y)
                    }
                },
            };
            if let Some(v) = next {
                versions.push(v.clone());
            }
        }
        let mut context = self.context.clone();
        context.merge(&other.context);
        SiblingSet { versions, context }
    }

    /// `self` has seen everything `other` holds: merging `other` into it changes nothing.
    pub fn descends(&self, other: &SiblingSet) -> bool {
        self.context.descends(&other.context)
            && self
                .versions
                .iter()
                .all(|v| other.holds(&v.dot) || !other.context.contains(&v.dot))
    }

    /// `self` descends from `other` and holds something `other` lacks.
    pub fn dominates(&self, other: &SiblingSet) -> bool {
        self.descends(other) && !other.descends(self)
    }
}

/// An actor's counter is at its end: no further dot can be issued for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the dot counter of actor {actor} is exhausted (u64::MAX); this node cannot issue another version")]
pub struct CounterOverflow {
    pub actor: Actor,
}

fn keep_if(v: Option<&Version>, keep: bool) -> Option<&Version> {
    v.filter(|_| keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(n: u64) -> Actor {
        Actor { node: n, epoch: 0 }
    }

    fn val(s: &str) -> Payload {
        Payload::Value {
            data: Bytes::copy_from_slice(s.as_bytes()),
            content_type: "text/plain".into(),
        }
    }

    #[test]
    fn blind_write_replaces_what_the_replica_holds() {
        let (s1, _) = SiblingSet::new()
            .update(None, actor(1), val("v1"), 0)
            .unwrap();
        let (s2, _) = s1.update(None, actor(1), val("v2"), 0).unwrap();
        assert_eq!(s2.len(), 1);
        assert_eq!(s2.versions()[0].payload, val("v2"));
    }

    #[test]
    fn stale_token_makes_siblings_and_a_covering_token_resolves_them() {
        let (s1, _) = SiblingSet::new()
            .update(None, actor(1), val("v1"), 0)
            .unwrap();
        let token = s1.context().clone();
        let (s2, _) = s1.update(Some(&token), actor(1), val("a"), 0).unwrap();
        let (s3, _) = s2.update(Some(&token), actor(1), val("b"), 0).unwrap();
        assert_eq!(s3.len(), 2);
        let (s4, _) = s3
            .update(Some(&s3.context().clone()), actor(1), val("c"), 0)
            .unwrap();
        assert_eq!(s4.len(), 1);
    }

    #[test]
    fn a_write_unseen_by_the_other_side_survives_sync() {
        let (base, _) = SiblingSet::new()
            .update(None, actor(1), val("v1"), 0)
            .unwrap();
        // Each side of a partition overwrites blindly.
        let (left, _) = base.update(None, actor(1), val("left"), 0).unwrap();
        let (right, _) = base.update(None, actor(2), val("right"), 0).unwrap();
        let merged = left.sync(&right);
        assert_eq!(merged.len(), 2);
        assert!(merged.descends(&left) && merged.descends(&right));
        assert!(merged.dominates(&base));
    }
}
