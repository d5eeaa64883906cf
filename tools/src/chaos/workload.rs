//! The chaos clients: each one, through a random node per operation, PUTs unique keys with
//! unique values, deletes some of its own acknowledged keys (read for the token, delete
//! with it), and adds elements to a few shared set keys (Jepsen's set workload: read with
//! the token, merge the siblings' sets as a union, add an element, write back with the
//! token). Every write is recorded with its outcome and, when acknowledged, the dot the
//! node says it created (`X-Ringkv-Dot`), which the lost-write check needs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const TOKEN: &str = "x-causality-token";
const DOT: &str = "x-ringkv-dot";

/// A set value stops growing here, well under `--max-value-bytes` (1 MiB).
const MAX_SET_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Put,
    Delete,
    SetAdd,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Put, OpKind::Delete, OpKind::SetAdd];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::SetAdd => "set-add",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 204: acknowledged.
    Acked,
    /// A delete whose read found no live value: it wrote nothing (404).
    NothingToDelete,
    /// Anything else: the reason (`503 unavailable`, `timeout`, …). The write may still
    /// have been applied (Dynamo semantics), so its value may show up.
    Failed(String),
}

/// One write a client attempted.
#[derive(Debug, Clone, Serialize)]
pub struct Write {
    pub client: usize,
    pub kind: OpKind,
    pub key: String,
    /// The value written (put, set-add); none for a delete.
    pub value: Option<String>,
    /// The element a set-add added.
    pub element: Option<String>,
    pub dot: Option<String>,
    pub outcome: Outcome,
    /// The node it was sent to, and whether that node's disk was full (ballast in place).
    pub node: usize,
    pub via_full: bool,
    /// Milliseconds since the run started: sent, answered.
    pub sent_ms: u64,
    pub done_ms: u64,
}

impl Write {
    pub fn acked(&self) -> bool {
        self.outcome == Outcome::Acked
    }
}

pub struct ClientConfig {
    pub urls: Vec<String>,
    pub seed: u64,
    pub deadline: Instant,
    pub max_ops: u64,
    pub period: Duration,
    pub set_keys: usize,
    /// The node (1-based) whose disk is full now, or 0.
    pub full_node: Arc<AtomicUsize>,
    pub started: Instant,
}

/// The set key `k`.
pub fn set_key(k: usize) -> String {
    format!("chaos/set/{k}")
}

/// A set's elements as its value holds them: comma-separated, sorted.
pub fn elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|e| !e.is_empty())
}

/// What a GET answered.
struct Read {
    token: String,
    values: Vec<String>,
}

#[derive(Deserialize)]
struct SiblingsBody {
    siblings: Vec<SiblingBody>,
}

#[derive(Deserialize)]
struct SiblingBody {
    value: String,
    encoding: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

pub struct Http {
    http: reqwest::Client,
}

impl Http {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Http { http })
    }

    fn key_url(base: &str, key: &str) -> String {
        let escaped: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        format!("{base}/kv/{escaped}")
    }

    async fn get(&self, base: &str, key: &str) -> Result<Read, String> {
        let resp = self
            .http
            .get(Self::key_url(base, key))
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let token = header(&resp, TOKEN);
        match status {
            200 => {
                let body = resp.bytes().await.map_err(|e| transport(&e))?;
                Ok(Read {
                    token,
                    values: vec![String::from_utf8_lossy(&body).into_owned()],
                })
            }
            300 => {
                let body: SiblingsBody = resp.json().await.map_err(|e| transport(&e))?;
                let values = body
                    .siblings
                    .into_iter()
                    .map(|s| decode(&s.value, &s.encoding))
                    .collect::<Result<_, _>>()?;
                Ok(Read { token, values })
            }
            404 => Ok(Read {
                token,
                values: Vec::new(),
            }),
            _ => Err(api_error(status, resp).await),
        }
    }

    /// A key's live values (siblings included) at the default quorum; none on 404.
    pub async fn read_values(&self, base: &str, key: &str) -> Result<Vec<String>, String> {
        self.get(base, key).await.map(|r| r.values)
    }

    /// A PUT or DELETE: `Ok(Some(dot))` on 204, `Ok(None)` on a DELETE's 404.
    async fn write(
        &self,
        base: &str,
        key: &str,
        value: Option<&str>,
        token: &str,
    ) -> Result<Option<String>, String> {
        let url = Self::key_url(base, key);
        let mut req = match value {
            Some(v) => self
                .http
                .put(url)
                .header("content-type", "text/plain")
                .body(Bytes::from(v.to_owned())),
            None => self.http.delete(url),
        };
        if !token.is_empty() {
            req = req.header(TOKEN, token);
        }
        let resp = req.send().await.map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        match status {
            204 => Ok(Some(header(&resp, DOT))),
            404 if value.is_none() => Ok(None),
            _ => Err(api_error(status, resp).await),
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn decode(value: &str, encoding: &str) -> Result<String, String> {
    match encoding {
        "utf8" => Ok(value.to_owned()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(value)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("bad base64 sibling: {e}")),
        other => Err(format!("unknown sibling encoding {other:?}")),
    }
}

/// `503 unavailable`, or the status alone when the body is not the JSON error shape
/// (itself worth seeing in the report).
async fn api_error(status: u16, resp: reqwest::Response) -> String {
    let body = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&body) {
        Ok(e) => format!("{status} {}", e.error),
        Err(_) => format!("{status} without the JSON error shape"),
    }
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// One client: runs until the deadline or `max_ops`, one operation per `period`, and
/// returns every write it attempted.
pub async fn client(id: usize, http: Arc<Http>, c: Arc<ClientConfig>) -> Vec<Write> {
    let mut rng =
        StdRng::seed_from_u64(c.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = Vec::new();
    // This client's acknowledged keys not yet deleted: the delete candidates.
    let mut live: Vec<String> = Vec::new();
    let mut full_sets: BTreeSet<String> = BTreeSet::new();
    let mut ticker = tokio::time::interval(c.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ms = |t: Instant| t.saturating_duration_since(c.started).as_millis() as u64;
    for seq in 0..c.max_ops {
        ticker.tick().await;
        if Instant::now() >= c.deadline {
            break;
        }
        let node = rng.gen_range(1..=c.urls.len());
        let base = &c.urls[node - 1];
        let via_full = c.full_node.load(Ordering::Acquire) == node;
        let roll = rng.gen_range(0..100);
        let sent = Instant::now();
        let mut w = Write {
            client: id,
            kind: OpKind::Put,
            key: String::new(),
            value: None,
            element: None,
            dot: None,
            outcome: Outcome::Acked,
            node,
            via_full,
            sent_ms: ms(sent),
            done_ms: 0,
        };
        if roll < 45 || (roll < 60 && live.is_empty()) {
            w.key = format!("chaos/put/c{id}/{seq}");
            let value = format!("v.c{id}.{seq}");
            w.outcome = match http.write(base, &w.key, Some(&value), "").await {
                Ok(dot) => {
                    w.dot = dot.filter(|d| !d.is_empty());
                    live.push(w.key.clone());
                    Outcome::Acked
                }
                Err(e) => Outcome::Failed(e),
            };
            w.value = Some(value);
        } else if roll < 60 {
            w.kind = OpKind::Delete;
            // Once tried, a key is not deleted again: its state is the delete's, acked
            // or not.
            w.key = live.swap_remove(rng.gen_range(0..live.len()));
            w.outcome = match http.get(base, &w.key).await {
                Err(e) => Outcome::Failed(format!("read: {e}")),
                Ok(read) => match http.write(base, &w.key, None, &read.token).await {
                    Ok(Some(dot)) => {
                        w.dot = Some(dot).filter(|d| !d.is_empty());
                        Outcome::Acked
                    }
                    Ok(None) => Outcome::NothingToDelete,
                    Err(e) => Outcome::Failed(e),
                },
            };
        } else {
            w.kind = OpKind::SetAdd;
            w.key = set_key(rng.gen_range(0..c.set_keys.max(1)));
            if full_sets.contains(&w.key) {
                continue;
            }
            let element = format!("c{id}.{seq}");
            w.outcome = match http.get(base, &w.key).await {
                Err(e) => Outcome::Failed(format!("read: {e}")),
                Ok(read) => {
                    let mut set: BTreeSet<&str> =
                        read.values.iter().flat_map(|v| elements(v)).collect();
                    set.insert(&element);
                    let value = set.into_iter().collect::<Vec<_>>().join(",");
                    if value.len() > MAX_SET_BYTES {
                        full_sets.insert(w.key.clone());
                        continue;
                    }
                    let r = http.write(base, &w.key, Some(&value), &read.token).await;
                    w.value = Some(value);
                    match r {
                        Ok(dot) => {
                            w.dot = dot.filter(|d| !d.is_empty());
                            Outcome::Acked
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
            };
            w.element = Some(element);
        }
        w.done_ms = ms(Instant::now());
        out.push(w);
    }
    out
}
