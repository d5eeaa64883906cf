//! Property test: no client token destroys data.
//!
//! A model of three replicas of two keys, each replica a node with its own actor and
//! node-wide dot floor, driven by client writes and deletes whose tokens are real (read
//! or returned by a write), forged (counters at u64::MAX and u64::MAX−1 for every actor,
//! invented actors by the thousand, arbitrary vectors), of the other key, or of the old
//! format; by reads; and by replica syncs. A write goes the way the product takes it: the
//! token text is decoded for its key ([`CausalityToken::decode_for`]), then applied with
//! [`SiblingSet::update_above`] over the node's floor, which then moves to the new dot.
//!
//! The law: every acknowledged write stays readable once the replicas converge, unless a
//! later write superseded it whose token covered it and whose replica had seen it (for a
//! blind write, whose replica had seen it) — and that write is itself kept or superseded
//! the same way.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use proptest::prelude::*;

use super::*;

const REPLICAS: usize = 3;
const KEYS: [&[u8]; 2] = [b"k", b"bystander"];
const MAX_OPS: usize = 40;

fn actor(i: usize) -> Actor {
    Actor {
        node: 0xA0 + i as u64,
        epoch: 0,
    }
}

#[derive(Clone, Debug)]
enum Forgery {
    /// Every member's actor at u64::MAX (the forgery that made the next dot wrap).
    AllAtMax,
    /// Every member's actor at u64::MAX − 1.
    AllAtMaxMinus1,
    /// Only the writing replica's own actor at u64::MAX − 1 (the dot-floor finding).
    OwnAtMaxMinus1,
    /// `count` invented actors, all at `counter`.
    Invented { count: usize, counter: u64 },
    /// Arbitrary counters for the real actors.
    Arbitrary(Vec<(usize, u64)>),
    /// A real token of the other key (pool index).
    OtherKey(usize),
    /// A real token, re-encoded in the old unbound format 1 (pool index).
    FormatOne(usize),
}

#[derive(Clone, Debug)]
enum Tok {
    Blind,
    /// A real token of this key from the pool.
    Real(usize),
    Forged(Forgery),
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        key: usize,
        at: usize,
        tok: Tok,
        tombstone: bool,
    },
    Read {
        key: usize,
        at: usize,
    },
    Sync {
        key: usize,
        into: usize,
        from: usize,
    },
}

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..8u64,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX / 2),
        any::<u64>(),
    ]
}

fn forgery() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        Just(Forgery::AllAtMax),
        Just(Forgery::AllAtMaxMinus1),
        Just(Forgery::OwnAtMaxMinus1),
        (
            prop_oneof![1..64usize, 64..80usize, Just(1000usize)],
            counter()
        )
            .prop_map(|(count, counter)| Forgery::Invented { count, counter }),
        prop::collection::vec((0..REPLICAS, counter()), 1..4).prop_map(Forgery::Arbitrary),
        any::<usize>().prop_map(Forgery::OtherKey),
        any::<usize>().prop_map(Forgery::FormatOne),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::bool::weighted(0.3).prop_map(usize::from);
    let at = 0..REPLICAS;
    let tok = prop_oneof![
        2 => Just(Tok::Blind),
        3 => any::<usize>().prop_map(Tok::Real),
        3 => forgery().prop_map(Tok::Forged),
    ];
    prop_oneof![
        5 => (key.clone(), at.clone(), tok, prop::bool::weighted(0.2))
            .prop_map(|(key, at, tok, tombstone)| Op::Write { key, at, tok, tombstone }),
        2 => (key.clone(), at.clone()).prop_map(|(key, at)| Op::Read { key, at }),
        3 => (key, at.clone(), at).prop_map(|(key, into, from)| Op::Sync { key, into, from }),
    ]
}

/// An acknowledged write.
#[derive(Debug)]
struct Acked {
    key: usize,
    /// Its place in the history.
    seq: usize,
    dot: Dot,
    payload: Payload,
    /// What it was allowed to supersede: the token's claim met with what its replica had
    /// seen, or for a blind write what its replica had seen.
    allowed: VersionVector,
}

#[derive(Debug)]
struct Node {
    actor: Actor,
    floor: u64,
    sets: Vec<SiblingSet>,
}

#[derive(Debug, Default)]
struct Model {
    nodes: Vec<Node>,
    /// Tokens clients hold: (key, token text as issued).
    pool: Vec<(usize, String)>,
    acked: Vec<Acked>,
    /// Every dot ever issued, to check none twice and none at u64::MAX.
    issued: Vec<Dot>,
    refused: Vec<(Tok, TokenError)>,
    log: Vec<String>,
}

fn issue(key: usize, set: &SiblingSet) -> String {
    let shown: Vec<Actor> = set.versions().iter().map(|v| v.dot.actor).collect();
    CausalityToken::for_key(KEYS[key], set.context(), &shown).encode()
}

fn forge(key: usize, context: VersionVector) -> String {
    CausalityToken {
        key_hash: key_hash(KEYS[key]),
        context,
    }
    .encode()
}

impl Model {
    fn new() -> Self {
        let mut m = Model {
            nodes: (0..REPLICAS)
                .map(|i| Node {
                    actor: actor(i),
                    floor: 0,
                    sets: vec![SiblingSet::new(); KEYS.len()],
                })
                .collect(),
            ..Default::default()
        };
        // The 404 token of each key, as a first read returns it.
        for key in 0..KEYS.len() {
            m.pool.push((key, issue(key, &SiblingSet::new())));
        }
        m
    }

    fn real_token(&self, key: usize, i: usize) -> Option<String> {
        let mine: Vec<&String> = self
            .pool
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, t)| t)
            .collect();
        (!mine.is_empty()).then(|| mine[i % mine.len()].clone())
    }

    /// The text the client sends.
    fn token_text(&self, key: usize, at: usize, tok: &Tok) -> Option<String> {
        let all = |c: u64| (0..REPLICAS).map(|i| (actor(i), c)).collect();
        match tok {
            Tok::Blind => None,
            Tok::Real(i) => self.real_token(key, *i),
            Tok::Forged(f) => Some(match f {
                Forgery::AllAtMax => forge(key, all(u64::MAX)),
                Forgery::AllAtMaxMinus1 => forge(key, all(u64::MAX - 1)),
                Forgery::OwnAtMaxMinus1 => {
                    forge(key, [(actor(at), u64::MAX - 1)].into_iter().collect())
                }
                Forgery::Invented { count, counter } => forge(
                    key,
                    (0..*count as u64)
                        .map(|n| {
                            (
                                Actor {
                                    node: 0xF000_0000 + n,
                                    epoch: 7,
                                },
                                *counter,
                            )
                        })
                        .collect(),
                ),
                Forgery::Arbitrary(entries) => {
                    forge(key, entries.iter().map(|(i, c)| (actor(*i), *c)).collect())
                }
                Forgery::OtherKey(i) => self.real_token(1 - key, *i)?,
                Forgery::FormatOne(i) => {
                    let real = CausalityToken::decode(&self.real_token(key, *i)?).ok()?;
                    let mut raw = vec![1u8];
                    rmp_serde::encode::write(&mut raw, &real.context).ok()?;
                    URL_SAFE_NO_PAD.encode(raw)
                }
            }),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write {
                key,
                at,
                tok,
                tombstone,
            } => {
                let (key, at) = (*key, *at);
                let text = self.token_text(key, at, tok);
                let seen = match text
                    .as_deref()
                    .map(|t| CausalityToken::decode_for(t, KEYS[key]))
                    .transpose()
                {
                    Ok(seen) => seen,
                    Err(e) => {
                        self.log
                            .push(format!("write k{key}@r{at} {tok:?}: refused {e}"));
                        self.refused.push((tok.clone(), e));
                        return;
                    }
                };
                let seq = self.log.len();
                let payload = if *tombstone {
                    Payload::Tombstone
                } else {
                    Payload::Value {
                        data: Bytes::from(format!("w{seq}")),
                        content_type: "text/plain".into(),
                    }
                };
                let node = &mut self.nodes[at];
                let current = &node.sets[key];
                let (next, dot) = current
                    .update_above(seen.as_ref(), node.actor, node.floor, payload.clone(), 1)
                    .expect("no write of a real actor overflows: tokens cannot raise counters");
                // Stricter than the token's claim: what the token covered *and* the replica
                // had seen. The law below holding with this allowance implies it holds
                // with the token's claim alone (the law as first stated), and says more: a
                // forged claim supersedes no more than a blind write at that replica.
                let allowed =
                    seen.map_or_else(|| current.context().clone(), |s| s.meet(current.context()));
                node.floor = node.floor.max(dot.counter);
                node.sets[key] = next.clone();
                self.log.push(format!(
                    "write k{key}@r{at} {tok:?} -> ({}, {})",
                    dot.actor, dot.counter
                ));
                self.issued.push(dot);
                self.acked.push(Acked {
                    key,
                    seq,
                    dot,
                    payload,
                    allowed,
                });
                self.pool.push((key, issue(key, &next)));
            }
            Op::Read { key, at } => {
                let set = &self.nodes[*at].sets[*key];
                self.pool.push((*key, issue(*key, set)));
                self.log.push(format!("read k{key}@r{at}"));
            }
            Op::Sync { key, into, from } => {
                let (key, into) = (*key, *into);
                let from = (into + 1 + from % (REPLICAS - 1)) % REPLICAS;
                let other = self.nodes[from].sets[key].clone();
                // What a replica checks of a peer's set before merging it.
                assert!(!other.has_overflowed_counter(), "a replica holds u64::MAX");
                let merged = self.nodes[into].sets[key].sync(&other);
                self.nodes[into].sets[key] = merged;
                self.log.push(format!("sync k{key} r{into} <- r{from}"));
            }
        }
    }

    fn converged(&self, key: usize) -> SiblingSet {
        self.nodes
            .iter()
            .fold(SiblingSet::new(), |acc, n| acc.sync(&n.sets[key]))
    }
}

/// Whether `w` is held in `set`, or superseded by a later acknowledged write of its key
/// whose allowance covered it and which is itself kept in the same sense.
fn kept(set: &SiblingSet, acked: &[Acked], w: &Acked) -> bool {
    set.versions().iter().any(|v| v.dot == w.dot)
        || acked.iter().any(|x| {
            x.key == w.key && x.seq > w.seq && x.allowed.contains(&w.dot) && kept(set, acked, x)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_token_destroys_an_acknowledged_write(ops in prop::collection::vec(op(), 0..=MAX_OPS)) {
        let mut m = Model::new();
        for op in &ops {
            m.apply(op);
        }
        let history = m.log.join("\n");
        for key in 0..KEYS.len() {
            let converged = m.converged(key);
            for w in m.acked.iter().filter(|w| w.key == key) {
                prop_assert!(
                    kept(&converged, &m.acked, w),
                    "acknowledged write {:?} lost; converged {:?}\n{}", w, converged, history
                );
            }
            // Held versions are acknowledged writes, with their own payloads.
            for v in converged.versions() {
                let w = m.acked.iter().find(|w| w.dot == v.dot);
                prop_assert!(w.is_some_and(|w| w.payload == v.payload), "phantom {:?}", v);
            }
            // Contexts name only real actors, at counters they issued: client input adds
            // nothing to what a key has seen.
            for node in &m.nodes {
                for (a, &c) in node.sets[key].context().iter() {
                    let issued = m.issued.iter().filter(|d| d.actor == *a).map(|d| d.counter).max();
                    prop_assert!(issued.is_some_and(|i| c <= i), "context entry {}:{} was never issued", a, c);
                }
            }
        }
        // Dots are unique, never at u64::MAX, and each floor is exactly the highest counter
        // its node issued: it moves only by dots the node issues.
        let unique: BTreeSet<Dot> = m.issued.iter().copied().collect();
        prop_assert_eq!(unique.len(), m.issued.len(), "a dot was issued twice");
        prop_assert!(m.issued.iter().all(|d| d.counter < u64::MAX));
        for node in &m.nodes {
            let top = m.issued.iter().filter(|d| d.actor == node.actor).map(|d| d.counter).max();
            prop_assert_eq!(node.floor, top.unwrap_or(0));
        }
        // Every refusal is for the right reason, and every write that had to be refused was.
        for (tok, e) in &m.refused {
            let expected = match tok {
                Tok::Forged(Forgery::AllAtMax) => matches!(e, TokenError::CounterOverflow(_)),
                Tok::Forged(Forgery::Invented { count, counter }) => {
                    if *count > MAX_TOKEN_ACTORS {
                        // Too many to encode in a header, or to name.
                        *e == TokenError::TooManyActors(*count) || *e == TokenError::TooLong
                    } else {
                        *counter == u64::MAX && matches!(e, TokenError::CounterOverflow(_))
                    }
                }
                Tok::Forged(Forgery::Arbitrary(entries)) => {
                    entries.iter().any(|(_, c)| *c == u64::MAX)
                        && matches!(e, TokenError::CounterOverflow(_))
                }
                Tok::Forged(Forgery::OtherKey(_)) => *e == TokenError::WrongKey,
                Tok::Forged(Forgery::FormatOne(_)) => *e == TokenError::OldFormat,
                _ => false,
            };
            prop_assert!(expected, "{:?} refused with {}\n{}", tok, e, history);
        }
        for line in m.log.iter().filter(|l| l.contains("OtherKey") || l.contains("FormatOne")) {
            prop_assert!(line.contains("refused"), "accepted: {}", line);
        }
    }
}
