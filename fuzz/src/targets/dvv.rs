//! Dotted version vectors: the laws of `SiblingSet::sync` and `update_above`
//! (`ringkv::version`), on sets built two ways.
//!
//! Mode (first byte, low bit): 0, the rest drives a history (`arbitrary`) of three replicas
//! of one key: writes and deletes with real, stale, forged or no tokens, reads, syncs, and
//! restarts into a new epoch, so every set checked is one a cluster can reach; 1, the rest
//! is a stream of msgpack sibling sets as a peer or the disk could send them, of which the
//! well-formed ones ([`crate::dvv::well_formed`]) are checked and the rest rejected.
//!
//! Checks ([`crate::dvv`]): sync is commutative, associative and idempotent, its context is
//! the union, it keeps every version the other side has not superseded and only those, and
//! agrees with `descends`; an update issues a fresh dot above the floor, replaces exactly the
//! versions its clamped token covers, and adds nothing from the token to the context.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ringkv::version::{Actor, Payload, SiblingSet, VersionVector};
use serde::Deserialize;

use crate::alloc::bounded;
use crate::dvv::{check_pair, check_triple, check_update, well_formed};

const REPLICAS: usize = 3;
/// Steps of one history, and sets of one decoded stream.
const MAX_STEPS: usize = 64;
const MAX_DECODED: usize = 5;
/// The most recent sets the associativity check takes triples from.
const RECENT: usize = 4;

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    if mode & 1 == 0 {
        history(rest);
    } else {
        decoded(rest);
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A write (or delete) at a replica, with a token from the pool, or blind.
    Write {
        at: u8,
        token: Option<u8>,
        tombstone: bool,
        value: u8,
    },
    /// A write with a token a client made up: actors among the replicas' and invented ones,
    /// any epoch, any counter (u64::MAX included).
    Forged { at: u8, claims: Vec<(u8, u8, u64)> },
    /// A client reads at a replica and keeps the token.
    Read { at: u8 },
    /// A replica merges what another holds.
    Sync { into: u8, from: u8 },
    /// A replica restarts into a new epoch (a new actor); its dot floor stays.
    Restart { at: u8 },
}

struct Replica {
    set: SiblingSet,
    actor: Actor,
    /// The highest counter this node issued for any key (`Identity::dot_floor`).
    floor: u64,
}

fn value(v: u8) -> Payload {
    Payload::Value {
        data: Bytes::from(vec![v]),
        content_type: "t".into(),
    }
}

struct History {
    replicas: Vec<Replica>,
    tokens: Vec<VersionVector>,
    recent: Vec<SiblingSet>,
}

impl History {
    fn new() -> Self {
        History {
            replicas: (0..REPLICAS as u64)
                .map(|i| Replica {
                    set: SiblingSet::new(),
                    actor: Actor {
                        node: 0x10 + i,
                        epoch: 1,
                    },
                    floor: 0,
                })
                .collect(),
            tokens: vec![VersionVector::new()],
            recent: Vec::new(),
        }
    }

    fn keep(&mut self, set: &SiblingSet) {
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(set.clone());
    }

    fn write(&mut self, at: usize, seen: Option<VersionVector>, payload: Payload) {
        let r = &self.replicas[at];
        let outcome = r
            .set
            .update_above(seen.as_ref(), r.actor, r.floor, payload, 0);
        check_update(&r.set, seen.as_ref(), r.actor, r.floor, &outcome);
        if let Ok((set, dot)) = outcome {
            self.tokens.push(set.context().clone());
            let r = &mut self.replicas[at];
            r.floor = r.floor.max(dot.counter);
            r.set = set.clone();
            self.keep(&set);
        }
    }

    fn step(&mut self, step: Step) {
        let pick = |i: u8| usize::from(i) % REPLICAS;
        match step {
            Step::Write {
                at,
                token,
                tombstone,
                value: v,
            } => {
                let seen = token.map(|t| self.tokens[usize::from(t) % self.tokens.len()].clone());
                let payload = if tombstone {
                    Payload::Tombstone
                } else {
                    value(v)
                };
                self.write(pick(at), seen, payload);
            }
            Step::Forged { at, claims } => {
                let forged: VersionVector = claims
                    .into_iter()
                    .take(16)
                    .map(|(node, epoch, counter)| {
                        let actor = Actor {
                            node: 0x10 + u64::from(node % 5),
                            epoch: u32::from(epoch % 3),
                        };
                        (actor, counter)
                    })
                    .collect();
                self.write(pick(at), Some(forged), value(0xf0));
            }
            Step::Read { at } => {
                let context = self.replicas[pick(at)].set.context().clone();
                self.tokens.push(context);
            }
            Step::Sync { into, from } => {
                let (into, from) = (pick(into), pick(from));
                let (a, b) = (
                    self.replicas[into].set.clone(),
                    self.replicas[from].set.clone(),
                );
                check_pair(&a, &b);
                let merged = a.sync(&b);
                self.replicas[into].set = merged.clone();
                self.keep(&merged);
            }
            Step::Restart { at } => {
                let r = &mut self.replicas[pick(at)];
                r.actor.epoch = r.actor.epoch.saturating_add(1);
            }
        }
    }
}

fn history(rest: &[u8]) {
    let mut u = Unstructured::new(rest);
    let mut h = History::new();
    for _ in 0..MAX_STEPS {
        match Step::arbitrary(&mut u) {
            Ok(step) => h.step(step),
            Err(_) => break,
        }
        if u.is_empty() {
            break;
        }
    }
    let sets: Vec<SiblingSet> = h.replicas.iter().map(|r| r.set.clone()).collect();
    check_all(&sets);
    check_all(&h.recent);
}

fn check_all(sets: &[SiblingSet]) {
    for a in sets {
        for b in sets {
            check_pair(a, b);
        }
    }
    for a in sets {
        for b in sets {
            for c in sets {
                check_triple(a, b, c);
            }
        }
    }
}

fn decoded(rest: &[u8]) {
    let mut sets = Vec::new();
    bounded("decode sibling sets", rest.len(), || {
        let mut de = rmp_serde::Deserializer::from_read_ref(rest);
        while sets.len() < MAX_DECODED {
            match SiblingSet::deserialize(&mut de) {
                Ok(set) => sets.push(set),
                Err(_) => break,
            }
        }
    });
    // What a validating decoder would refuse.
    sets.retain(well_formed);
    for set in &sets {
        let stored = ringkv::kv::record::encode(set);
        assert_eq!(
            ringkv::kv::record::decode(&stored).ok().as_ref(),
            Some(set),
            "a set changed through the stored record"
        );
    }
    check_all(&sets);
    // Writes over decoded sets, with each other's contexts as tokens and blind.
    let actor = Actor { node: 7, epoch: 0 };
    for set in &sets {
        let mut tokens: Vec<Option<&VersionVector>> = vec![None];
        tokens.extend(sets.iter().map(|s| Some(s.context())));
        for seen in tokens {
            let outcome = set.update_above(seen, actor, 0, Payload::Tombstone, 0);
            check_update(set, seen, actor, 0, &outcome);
        }
    }
}
