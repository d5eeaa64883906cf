//! Property tests of the sibling set's laws, over sets built by simulated replica histories.
//!
//! A [`History`] replays a random sequence of client writes, deletes, reads and replica syncs
//! over 2–4 replicas of one key, and records every version it created together with the
//! causal context it was written over. The laws below are checked against those sets, so
//! every set compared is one a real cluster could hold (dots are unique per actor, and a dot
//! names the same version everywhere).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

const MAX_REPLICAS: usize = 4;
const MAX_OPS: usize = 30;

/// The actor of replica `i` (each replica coordinates its own writes).
fn actor(i: usize) -> Actor {
    Actor {
        node: 0x100 + i as u64,
        epoch: 1,
    }
}

fn value(s: &str) -> Payload {
    Payload::Value {
        data: Bytes::copy_from_slice(s.as_bytes()),
        content_type: "text/plain".into(),
    }
}

fn payload_of<'a>(set: &'a SiblingSet, dot: &Dot) -> Option<&'a Payload> {
    set.versions()
        .iter()
        .find(|v| v.dot == *dot)
        .map(|v| &v.payload)
}

/// Merge every set together (what the replicas converge to).
fn merge_all<'a>(sets: impl IntoIterator<Item = &'a SiblingSet>) -> SiblingSet {
    sets.into_iter()
        .fold(SiblingSet::new(), |acc, s| acc.sync(s))
}

/// One step of a history. Replica and token indexes are raw and taken modulo the number of
/// replicas / tokens when the history runs, so any generated sequence is valid.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A write (or delete) without a token at replica `at`.
    Blind { at: usize, tombstone: bool },
    /// A write (or delete) at replica `at` with token number `token` from the pool.
    Token {
        at: usize,
        token: usize,
        tombstone: bool,
    },
    /// A client reads at replica `at` and keeps the token.
    Read { at: usize },
    /// Replica `into` merges what replica `from` holds.
    Sync { into: usize, from: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let at = 0..MAX_REPLICAS;
    let tombstone = prop::bool::weighted(0.2);
    prop_oneof![
        3 => (at.clone(), tombstone)
            .prop_map(|(at, tombstone)| Op::Blind { at, tombstone }),
        3 => (at.clone(), 0..64usize, tombstone)
            .prop_map(|(at, token, tombstone)| Op::Token { at, token, tombstone }),
        2 => at.clone().prop_map(|at| Op::Read { at }),
        3 => (at.clone(), at).prop_map(|(into, from)| Op::Sync { into, from }),
    ]
}

/// A version the history created: a dotted version vector, its dot plus what it was written over.
#[derive(Clone, Debug)]
struct Created {
    dot: Dot,
    payload: Payload,
    /// The causal context the write was made over: the token it carried, or for a blind
    /// write the replica's context at that moment. Kept apart from `dot`: folding the dot
    /// into this vector would claim the actor's earlier dots as seen, and a write with a
    /// stale token does not descend from the siblings its own actor made since.
    seen: VersionVector,
}

impl Created {
    /// Whether this version is `w` or causally descends from it.
    fn covers(&self, w: &Created) -> bool {
        self.dot == w.dot || self.seen.contains(&w.dot)
    }
}

/// The model: replicas of one key, the clients' token pool, and every version ever created.
#[derive(Clone)]
struct History {
    replicas: Vec<SiblingSet>,
    /// Tokens clients have captured (reads, and the token a write returns). Starts with the
    /// empty token of a read that found nothing.
    tokens: Vec<VersionVector>,
    created: Vec<Created>,
    /// Every state any replica passed through, for laws over pairs and triples of sets.
    snapshots: Vec<SiblingSet>,
    /// The resolved operations, for readable counterexamples.
    log: Vec<String>,
    clock_ms: u64,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "History over {} replicas:", self.replicas.len())?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        for (i, r) in self.replicas.iter().enumerate() {
            writeln!(f, "  final r{i}: {r:?}")?;
        }
        Ok(())
    }
}

impl History {
    fn new(replicas: usize) -> Self {
        let empty = SiblingSet::new();
        History {
            replicas: vec![empty.clone(); replicas],
            tokens: vec![VersionVector::new()],
            created: Vec::new(),
            snapshots: vec![empty],
            log: Vec::new(),
            clock_ms: 0,
        }
    }

    fn run(replicas: usize, ops: &[Op]) -> Self {
        let mut h = History::new(replicas);
        for op in ops {
            h.apply(*op);
        }
        h
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    fn apply(&mut self, op: Op) {
        let n = self.n();
        match op {
            Op::Blind { at, tombstone } => {
                self.write(at % n, None, tombstone);
            }
            Op::Token {
                at,
                token,
                tombstone,
            } => {
                let token = token % self.tokens.len();
                self.write(at % n, Some(token), tombstone);
            }
            Op::Read { at } => {
                let at = at % n;
                self.tokens.push(self.replicas[at].context().clone());
                self.log
                    .push(format!("read r{at} -> tok#{}", self.tokens.len() - 1));
            }
            Op::Sync { into, from } => {
                let into = into % n;
                // Never a replica with itself: pick among the others.
                let from = (into + 1 + from % (n - 1)) % n;
                self.replicas[into] = self.replicas[into].sync(&self.replicas[from]);
                self.snapshots.push(self.replicas[into].clone());
                self.log.push(format!("sync r{into} <- r{from}"));
            }
        }
    }

    /// A write at replica `at` with token number `token` (or blind), returning its dot.
    fn write(&mut self, at: usize, token: Option<usize>, tombstone: bool) -> Dot {
        self.clock_ms += 1;
        let name = format!("v{}", self.created.len());
        let payload = if tombstone {
            Payload::Tombstone
        } else {
            value(&name)
        };
        let seen = token.map(|t| self.tokens[t].clone());
        let replica = &self.replicas[at];
        let (next, dot) = replica
            .update(seen.as_ref(), actor(at), payload.clone(), self.clock_ms)
            .unwrap();
        // What the write really covers: the token clamped to the replica's context (see
        // `SiblingSet::update_above`), or for a blind write that context.
        let seen = seen.map_or_else(|| replica.context().clone(), |t| t.meet(replica.context()));
        self.log.push(format!(
            "{} {name} at r{at} over {} -> dot ({}, {})",
            if tombstone { "delete" } else { "put" },
            token.map_or("nothing (blind)".to_string(), |t| format!("tok#{t}")),
            dot.actor,
            dot.counter,
        ));
        self.created.push(Created { dot, payload, seen });
        // The write's response carries the new context as its token.
        self.tokens.push(next.context().clone());
        self.snapshots.push(next.clone());
        self.replicas[at] = next;
        dot
    }

    fn merged(&self) -> SiblingSet {
        merge_all(&self.replicas)
    }

    fn by_dot(&self) -> BTreeMap<Dot, &Created> {
        self.created.iter().map(|c| (c.dot, c)).collect()
    }
}

fn history() -> impl Strategy<Value = History> {
    (2..=MAX_REPLICAS, prop::collection::vec(op(), 0..=MAX_OPS))
        .prop_map(|(n, ops)| History::run(n, &ops))
}

/// Whether `set` holds `w`, or a version written over a context containing `w`'s dot.
/// (Versions missing from `by_dot` count as nothing; `no_write_is_lost` flags them.)
fn keeps(set: &SiblingSet, w: &Created, by_dot: &BTreeMap<Dot, &Created>) -> bool {
    set.versions()
        .iter()
        .any(|v| by_dot.get(&v.dot).is_some_and(|s| s.covers(w)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// sync is commutative, associative and idempotent, and its result descends both sides.
    #[test]
    fn sync_is_a_join(
        h in history(),
        ia in any::<prop::sample::Index>(),
        ib in any::<prop::sample::Index>(),
        ic in any::<prop::sample::Index>(),
    ) {
        let a = ia.get(&h.snapshots);
        let b = ib.get(&h.snapshots);
        let c = ic.get(&h.snapshots);
        prop_assert_eq!(a.sync(b), b.sync(a), "commutative");
        prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)), "associative");
        prop_assert_eq!(&a.sync(a), a, "idempotent");
        let ab = a.sync(b);
        prop_assert!(ab.descends(a) && ab.descends(b), "join descends both: {:?}", ab);
        // Replicas converge whatever order anti-entropy runs in.
        let forward = h.merged();
        let backward = merge_all(h.replicas.iter().rev());
        prop_assert_eq!(&forward, &backward);
        for r in &h.replicas {
            prop_assert_eq!(&r.sync(&forward), &forward, "a replica after full sync");
        }
    }

    /// `descends` is "merging changes nothing"; `descends` is a partial order and
    /// `dominates` its strict part.
    #[test]
    fn descends_and_dominates_agree_with_sync(
        h in history(),
        ia in any::<prop::sample::Index>(),
        ib in any::<prop::sample::Index>(),
        ic in any::<prop::sample::Index>(),
    ) {
        let a = ia.get(&h.snapshots);
        let b = ib.get(&h.snapshots);
        let c = ic.get(&h.snapshots);
        prop_assert_eq!(a.descends(b), &a.sync(b) == a);
        prop_assert_eq!(b.descends(a), &b.sync(a) == b);
        prop_assert!(a.descends(a), "reflexive");
        prop_assert!(!a.dominates(a), "dominates is irreflexive");
        prop_assert!(!(a.dominates(b) && b.dominates(a)), "dominates is antisymmetric");
        prop_assert_eq!(a.dominates(b), a.descends(b) && a != b);
        if a.descends(b) && b.descends(a) {
            prop_assert_eq!(a, b, "descends is antisymmetric");
        }
        if a.descends(b) && b.descends(c) {
            prop_assert!(a.descends(c), "descends is transitive");
        }
        // The join is the least set above both: anything above both descends from it.
        let ab = a.sync(b);
        if c.descends(a) && c.descends(b) {
            prop_assert!(c.descends(&ab));
        }
    }

    /// A write whose token covers every sibling, and a blind write, leave exactly one
    /// version: the new one. Any update dominates the set it was applied to.
    #[test]
    fn covering_and_blind_writes_leave_one_version(h in history()) {
        for (i, r) in h.replicas.iter().enumerate() {
            let (covered, dot) = r.update(Some(r.context()), actor(i), value("new"), 1_000).unwrap();
            prop_assert_eq!(covered.len(), 1);
            prop_assert_eq!(payload_of(&covered, &dot), Some(&value("new")));
            prop_assert!(covered.dominates(r));

            let (blind, dot) = r.update(None, actor(i), Payload::Tombstone, 1_000).unwrap();
            prop_assert_eq!(blind.len(), 1);
            prop_assert_eq!(payload_of(&blind, &dot), Some(&Payload::Tombstone));
            prop_assert!(blind.dominates(r));
            prop_assert_eq!(blind.context(), covered.context());
        }
    }

    /// Two writes with the same (stale) token are concurrent: both stay, as siblings, whether
    /// they land at one replica or at two that then sync, and after all replicas converge.
    #[test]
    fn same_token_writes_become_siblings(
        h in history(),
        i in 0..MAX_REPLICAS,
        j in 0..MAX_REPLICAS,
        t in any::<prop::sample::Index>(),
    ) {
        let n = h.n();
        let (i, j) = (i % n, j % n);
        let token = t.get(&h.tokens);

        // Same replica, one after the other.
        let (s1, d1) = h.replicas[i].update(Some(token), actor(i), value("A"), 1_000).unwrap();
        let (s2, d2) = s1.update(Some(token), actor(i), value("B"), 1_001).unwrap();
        prop_assert_ne!(d1, d2);
        prop_assert!(s2.len() >= 2);
        prop_assert_eq!(payload_of(&s2, &d1), Some(&value("A")));
        prop_assert_eq!(payload_of(&s2, &d2), Some(&value("B")));

        // Two replicas (or the same one twice when i == j), then everything converges.
        let mut replicas = h.replicas.clone();
        let (a, d1) = replicas[i].update(Some(token), actor(i), value("A"), 1_000).unwrap();
        replicas[i] = a;
        let (b, d2) = replicas[j].update(Some(token), actor(j), value("B"), 1_001).unwrap();
        replicas[j] = b;
        let pair = replicas[i].sync(&replicas[j]);
        let all = merge_all(&replicas);
        for set in [&pair, &all] {
            prop_assert!(set.len() >= 2);
            prop_assert_eq!(payload_of(set, &d1), Some(&value("A")), "in {:?}", set);
            prop_assert_eq!(payload_of(set, &d2), Some(&value("B")), "in {:?}", set);
        }
    }

    /// No write is lost: after all replicas converge, every version ever created is still
    /// held, or a held version was written over a context containing its dot. Every replica's
    /// context is justified the same way, dots are never reissued, held versions are exactly
    /// the created ones, and no held sibling descends from another.
    #[test]
    fn no_write_is_lost(h in history()) {
        let by_dot = h.by_dot();
        prop_assert_eq!(by_dot.len(), h.created.len(), "a dot was issued twice");

        let merged = h.merged();
        for w in &h.created {
            prop_assert!(
                keeps(&merged, w, &by_dot),
                "write {:?} lost; converged set {:?}", w, merged
            );
        }
        for (i, r) in h.replicas.iter().enumerate() {
            for w in h.created.iter().filter(|w| r.context().contains(&w.dot)) {
                prop_assert!(
                    keeps(r, w, &by_dot),
                    "r{} has seen {:?} but neither holds it nor a descendant: {:?}", i, w, r
                );
            }
        }
        for set in h.snapshots.iter().chain([&merged]) {
            for v in set.versions() {
                let c = by_dot.get(&v.dot);
                prop_assert!(c.is_some(), "phantom version {:?}", v);
                prop_assert_eq!(&c.unwrap().payload, &v.payload, "dot {:?} changed payload", v.dot);
                prop_assert!(set.context().contains(&v.dot));
            }
        }
        for s in merged.versions() {
            for v in merged.versions().iter().filter(|v| v.dot != s.dot) {
                prop_assert!(
                    !by_dot[&s.dot].covers(by_dot[&v.dot]),
                    "{:?} descends from sibling {:?}", s, v
                );
            }
        }
    }

    /// A token may carry a counter for the writing actor above what the replica has stored
    /// (another replica saw newer writes of that actor, or the replica lost its state). The
    /// new dot must still be outside the token, which the actor's node-wide floor ensures;
    /// and the token's claims beyond this replica's context are not taken in: the versions
    /// only the other replica holds survive as siblings, never swallowed.
    #[test]
    fn new_dots_are_never_already_seen(
        h in history(),
        i in 0..MAX_REPLICAS,
        j in 0..MAX_REPLICAS,
        fresh in any::<bool>(),
    ) {
        let n = h.n();
        let i = i % n;
        let j = (i + 1 + j % (n - 1)) % n;
        // Replica j has written at least once; a client reads there.
        let (rj, _) = h.replicas[j].update(None, actor(j), value("seen"), 1_000).unwrap();
        let token = rj.context().clone();
        // Everything actor j issued is in j's own context: that is its floor.
        let floor = token.get(&actor(j));
        // A write by j's actor lands on a set that has not caught up with j.
        let base = if fresh { SiblingSet::new() } else { h.replicas[i].clone() };
        prop_assert!(token.get(&actor(j)) > base.context().get(&actor(j)));
        let (out, dot) = base
            .update_above(Some(&token), actor(j), floor, value("late"), 1_001)
            .unwrap();
        prop_assert!(!token.contains(&dot), "new dot {:?} is inside the token {:?}", dot, token);
        prop_assert!(!base.context().contains(&dot));
        prop_assert!(out.dominates(&base));
        let mut context = base.context().clone();
        context.add(dot);
        prop_assert_eq!(out.context(), &context, "the token added to the context");
        // Merged with the replica the token came from: the new write replaces what the set
        // held under the token; what only j held, and the new context does not cover,
        // stays. (The new dot covers every earlier dot of its own actor: see
        // `Identity::dot_floor` for why that is accepted.)
        let merged = out.sync(&rj);
        let mut expected: Vec<Dot> = base
            .versions()
            .iter()
            .map(|v| v.dot)
            .filter(|d| !token.contains(d))
            .chain(
                rj.versions()
                    .iter()
                    .map(|v| v.dot)
                    .filter(|d| !out.context().contains(d)),
            )
            .chain([dot])
            .collect();
        expected.sort();
        let got: Vec<Dot> = merged.versions().iter().map(|v| v.dot).collect();
        prop_assert_eq!(got, expected, "{:?}", merged);
        prop_assert_eq!(payload_of(&merged, &dot), Some(&value("late")));
    }

    /// Siblings are bounded by write concurrency: never more than the writes made, and once
    /// a write covers the fully merged context at a replica that holds it, everything
    /// converges to that one version. At a replica that lags, the token is clamped to what
    /// it has seen: the versions it never saw stay as siblings of the new one.
    #[test]
    fn siblings_are_bounded(h in history(), i in 0..MAX_REPLICAS, synced_first in any::<bool>()) {
        let merged = h.merged();
        prop_assert!(merged.len() <= h.created.len());
        prop_assert_eq!(merged.is_empty(), h.created.is_empty());

        let i = i % h.n();
        let mut replicas = h.replicas.clone();
        // Either replica i caught up by anti-entropy and a client read there, or a client read
        // the merged state elsewhere and wrote through replica i.
        let token = if synced_first {
            replicas[i] = replicas[i].sync(&merged);
            replicas[i].context().clone()
        } else {
            merged.context().clone()
        };
        let unseen: Vec<Dot> = merged
            .versions()
            .iter()
            .map(|v| v.dot)
            .filter(|d| !replicas[i].context().contains(d))
            .collect();
        let (next, dot) = replicas[i].update(Some(&token), actor(i), value("last"), 1_000).unwrap();
        replicas[i] = next;
        let converged = merge_all(&replicas);
        let mut expected: Vec<Dot> = unseen.into_iter().chain([dot]).collect();
        expected.sort();
        let got: Vec<Dot> = converged.versions().iter().map(|v| v.dot).collect();
        prop_assert_eq!(got, expected, "{:?}", converged);
        if synced_first {
            prop_assert_eq!(converged.len(), 1, "{:?}", converged);
        }
        prop_assert_eq!(payload_of(&converged, &dot), Some(&value("last")));
    }
}
