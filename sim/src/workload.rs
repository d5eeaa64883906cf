//! The clients: each talks HTTP to a random node and does reads, blind writes, token
//! writes (read-modify-write) and deletes over a small key space, recording everything.

use std::cell::RefCell;
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
}

impl Client {
    pub async fn run(self) -> turmoil::Result {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut seq = 0u64;
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
            if roll < 0.35 {
                self.read(&key, node).await;
            } else if roll < 0.6 {
                self.mutate(&key, node, OpKind::BlindWrite, Some(value), None)
                    .await;
            } else if roll < 0.88 {
                // Read-modify-write: the token of a read, sent back with the new value.
                let token = self.read(&key, node).await;
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
            Some(v) => (Method::PUT, Bytes::from(v.clone())),
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

    fn record(&self, event: Event) {
        self.history.borrow_mut().push(event);
    }
}

pub fn addr(node: usize) -> std::net::SocketAddr {
    (turmoil::lookup(node_name(node)), HTTP_PORT).into()
}

/// The values a GET answered with: the body of a 200, the siblings of a 300.
pub fn values_read(reply: &Reply) -> Vec<String> {
    match reply.status {
        200 => vec![String::from_utf8_lossy(&reply.body).into_owned()],
        300 => reply
            .json()
            .and_then(|j| {
                j.get("siblings")?.as_array().map(|s| {
                    s.iter()
                        .filter_map(|v| v.get("value")?.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
