//! The clients: each talks HTTP to a random node and does reads, blind writes, token
//! writes (read-modify-write) and deletes over a small key space, recording everything.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::history::{Event, OpKind, Outcome};
use crate::http::{self, Reply};

pub const HTTP_PORT: u16 = 7070;
const TOKEN: &str = "x-causality-token";
const DOT: &str = "x-ringkv-dot";

pub type History = Rc<RefCell<Vec<Event>>>;
/// The nodes clients may talk to, by number (1-based); churn adds to it.
pub type Targets = Rc<RefCell<Vec<usize>>>;
/// Every actor (node id, epoch) the clients have seen in a write's `X-Ringkv-Dot`: what a
/// hostile client names in the tokens it forges.
pub type Actors = Rc<RefCell<BTreeSet<(u64, u32)>>>;

/// Separates a large value's id from its padding. Small values never contain it.
const PAD_MARK: char = '|';

/// The value a write sends: its unique id, then (for large values) a padding derived from
/// the id, so that a reader can tell a whole value from a damaged one.
pub fn encode_value(id: &str, bytes: usize) -> String {
    if bytes == 0 {
        return id.to_owned();
    }
    let mut v = String::with_capacity(bytes);
    v.push_str(id);
    v.push(PAD_MARK);
    let pattern: Vec<char> = id.chars().rev().collect();
    let mut i = 0;
    while v.len() < bytes {
        v.push(pattern[i % pattern.len()]);
        i += 1;
    }
    v
}

/// A value as read or stored, back to the id the history knows it by. A large value whose
/// padding is not exactly what was written comes back as `damaged:<id>`, which no one wrote,
/// so the checker reports it as an invented read.
pub fn decode_value(raw: &str) -> String {
    match raw.split_once(PAD_MARK) {
        None => raw.to_owned(),
        Some((id, _)) if encode_value(id, raw.len()) == raw => id.to_owned(),
        Some((id, _)) => format!("damaged:{id}"),
    }
}

pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

pub struct Client {
    pub id: usize,
    pub seed: u64,
    pub keys: usize,
    pub start_at: Duration,
    pub stop_at: Duration,
    pub timeout: Duration,
    pub think: Duration,
    pub targets: Targets,
    pub history: History,
    /// Bytes of each value (0: short values).
    pub value_bytes: usize,
    /// This client forges causality tokens on half of its writes.
    pub hostile: bool,
    pub actors: Actors,
}

impl Client {
    pub async fn run(self) -> turmoil::Result {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut seq = 0u64;
        // The last token this client saw for each key: a hostile client replays one key's
        // token on another.
        let mut tokens: BTreeMap<String, String> = BTreeMap::new();
        let now = turmoil::sim_elapsed().unwrap_or_default();
        tokio::time::sleep(self.start_at.saturating_sub(now)).await;
        // Bounded by time, and by count as a backstop.
        for _ in 0..1_000_000 {
            if turmoil::sim_elapsed().unwrap_or_default() >= self.stop_at {
                break;
            }
            let key = key_name(rng.gen_range(0..self.keys));
            let node = {
                let targets = self.targets.borrow();
                targets[rng.gen_range(0..targets.len())]
            };
            let roll: f64 = rng.gen();
            seq += 1;
            let value = format!("c{}-{}", self.id, seq);
            if self.hostile && roll < 0.5 {
                let forged = self.forge(&mut rng, &key, &tokens);
                let kind = if rng.gen_bool(0.8) {
                    OpKind::ForgedWrite
                } else {
                    OpKind::Delete
                };
                let value = (kind == OpKind::ForgedWrite).then_some(value);
                self.mutate(&key, node, kind, value, Some(forged)).await;
            } else if roll < 0.35 {
                if let Some(t) = self.read(&key, node).await {
                    tokens.insert(key.clone(), t);
                }
            } else if roll < 0.6 {
                self.mutate(&key, node, OpKind::BlindWrite, Some(value), None)
                    .await;
            } else if roll < 0.88 {
                // Read-modify-write: the token of a read, sent back with the new value.
                let token = self.read(&key, node).await;
                if let Some(t) = &token {
                    tokens.insert(key.clone(), t.clone());
                }
                let node = {
                    let targets = self.targets.borrow();
                    targets[rng.gen_range(0..targets.len())]
                };
                self.mutate(&key, node, OpKind::TokenWrite, Some(value), token)
                    .await;
            } else {
                let token = if rng.gen_bool(0.5) {
                    self.read(&key, node).await
                } else {
                    None
                };
                self.mutate(&key, node, OpKind::Delete, None, token).await;
            }
            let pause = rng.gen_range(0..=self.think.as_millis() as u64 * 2);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(())
    }

    async fn read(&self, key: &str, node: usize) -> Option<String> {
        let start = now_ms();
        let reply = http::request(
            addr(node),
            Method::GET,
            &format!("/kv/{key}"),
            &[],
            Bytes::new(),
            self.timeout,
        )
        .await;
        let (outcome, token, read) = match &reply {
            Ok(r) => (Outcome::Status(r.status), r.header(TOKEN), values_read(r)),
            Err(e) => (Outcome::NoReply(e.clone()), None, Vec::new()),
        };
        self.record(Event {
            client: self.id,
            key: key.to_owned(),
            node,
            kind: OpKind::Read,
            start_ms: start,
            end_ms: now_ms(),
            value: None,
            token_in: None,
            outcome,
            token_out: token.clone(),
            dot: None,
            read,
        });
        token
    }

    /// A PUT of `value`, or a DELETE when there is none.
    async fn mutate(
        &self,
        key: &str,
        node: usize,
        kind: OpKind,
        value: Option<String>,
        token: Option<String>,
    ) {
        let mut headers = Vec::new();
        if let Some(t) = &token {
            headers.push((TOKEN, t.clone()));
        }
        let (method, body) = match &value {
            Some(v) => (Method::PUT, Bytes::from(encode_value(v, self.value_bytes))),
            None => (Method::DELETE, Bytes::new()),
        };
        let start = now_ms();
        let reply = http::request(
            addr(node),
            method,
            &format!("/kv/{key}"),
            &headers,
            body,
            self.timeout,
        )
        .await;
        let (outcome, token_out, dot) = match &reply {
            Ok(r) => (Outcome::Status(r.status), r.header(TOKEN), r.header(DOT)),
            Err(e) => (Outcome::NoReply(e.clone()), None, None),
        };
        if let Some(actor) = dot.as_deref().and_then(parse_actor) {
            self.actors.borrow_mut().insert(actor);
        }
        self.record(Event {
            client: self.id,
            key: key.to_owned(),
            node,
            kind,
            start_ms: start,
            end_ms: now_ms(),
            value,
            token_in: token,
            outcome,
            token_out,
            dot,
            read: Vec::new(),
        });
    }

    /// A token no honest client holds: wrapped and near-wrapped counters for every actor
    /// seen so far, a thousand invented actors, another key's token, or noise.
    fn forge(&self, rng: &mut SmallRng, key: &str, tokens: &BTreeMap<String, String>) -> String {
        let actors: Vec<(u64, u32)> = self.actors.borrow().iter().copied().collect();
        let entries = |counter: &dyn Fn(&mut SmallRng) -> u64, rng: &mut SmallRng| {
            actors
                .iter()
                .map(|&(node, epoch)| (node, epoch, counter(rng)))
                .collect::<Vec<_>>()
        };
        match rng.gen_range(0..6) {
            0 => forged_token(key, &entries(&|_| u64::MAX, rng)),
            1 => forged_token(key, &entries(&|_| u64::MAX - 1, rng)),
            2 => {
                let invented: Vec<(u64, u32, u64)> = (0..1000)
                    .map(|_| (rng.gen(), rng.gen_range(0..4), rng.gen_range(1..1 << 40)))
                    .collect();
                forged_token(key, &invented)
            }
            3 => {
                let other = tokens.iter().find(|(k, _)| k.as_str() != key);
                match other {
                    Some((_, t)) => t.clone(),
                    None => forged_token(key, &entries(&|_| u64::MAX, rng)),
                }
            }
            4 => forged_token(key, &entries(&|r| r.gen_range(1..1 << 20), rng)),
            _ => {
                use base64::Engine;
                let noise: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(noise)
            }
        }
    }

    fn record(&self, event: Event) {
        self.history.borrow_mut().push(event);
    }
}

/// The actor of an `X-Ringkv-Dot` (`<node hex>.<epoch>:<counter>`).
fn parse_actor(dot: &str) -> Option<(u64, u32)> {
    let (actor, _) = dot.rsplit_once(':')?;
    let (node, epoch) = actor.split_once('.')?;
    Some((u64::from_str_radix(node, 16).ok()?, epoch.parse().ok()?))
}

/// A token for `key` that claims `(node, epoch, counter)` entries, encoded exactly as the
/// product encodes its own: the node must judge it by what it claims, not by its shape.
fn forged_token(key: &str, entries: &[(u64, u32, u64)]) -> String {
    use ringkv::version::{key_hash, Actor, CausalityToken, Dot, VersionVector};
    let context: VersionVector = entries
        .iter()
        .map(|&(node, epoch, counter)| Dot {
            actor: Actor { node, epoch },
            counter,
        })
        .collect();
    CausalityToken {
        key_hash: key_hash(key.as_bytes()),
        context,
    }
    .encode()
}

pub fn addr(node: usize) -> std::net::SocketAddr {
    (turmoil::lookup(node_name(node)), HTTP_PORT).into()
}

/// The values a GET answered with: the body of a 200, the siblings of a 300.
pub fn values_read(reply: &Reply) -> Vec<String> {
    match reply.status {
        200 => vec![decode_value(&String::from_utf8_lossy(&reply.body))],
        300 => reply
            .json()
            .and_then(|j| {
                j.get("siblings")?.as_array().map(|s| {
                    s.iter()
                        .filter_map(|v| v.get("value")?.as_str().map(decode_value))
                        .collect()
                })
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
