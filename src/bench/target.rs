//! What `ringkv bench` loads, behind one pair of operations (get, put): a [`Target`] shared
//! by every worker, and one [`Conn`] per worker. The product ships the HTTP target: ringkv
//! nodes, and the reference server (`examples/bench_reference.rs`), which speaks the same
//! `/kv/{key}` API. The adapters for other stores (etcd, Redis) live in `ringkv-tools`, so
//! that their client crates stay out of the node's dependencies.

use bytes::Bytes;

use crate::client::{Client, ClientError, ClientOptions};

/// The targets `ringkv bench` itself can load.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// ringkv nodes (`/kv/{key}`), round-robin.
    Ringkv,
    /// The in-memory axum server (`examples/bench_reference.rs`): the HTTP ceiling.
    Reference,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Ringkv => "ringkv",
            TargetKind::Reference => "reference",
        }
    }
}

/// Why one operation failed; `kind()` is the key of the error table.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP {status} {code}")]
    Status { status: u16, code: String },
    #[error("{0}")]
    Other(String),
}

impl OpError {
    pub fn kind(&self) -> String {
        match self {
            OpError::Timeout => "timeout".into(),
            OpError::Connect(_) => "connect".into(),
            OpError::Status { status, code } if code.is_empty() => format!("http_{status}"),
            OpError::Status { status, code } => format!("http_{status}_{code}"),
            OpError::Other(_) => "other".into(),
        }
    }
}

impl From<reqwest::Error> for OpError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            OpError::Timeout
        } else if e.is_connect() {
            OpError::Connect(e.to_string())
        } else {
            OpError::Other(e.to_string())
        }
    }
}

impl From<ClientError> for OpError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Transport(e) => e.into(),
            ClientError::Api { status, code, .. } => OpError::Status { status, code },
            ClientError::Unexpected { status, .. } => OpError::Status {
                status,
                code: String::new(),
            },
            e => OpError::Other(e.to_string()),
        }
    }
}

/// A system under load, shared by every worker.
#[async_trait::async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    /// The name a report gives it (`ringkv`, `etcd`, …).
    fn name(&self) -> &str;
    /// Where its requests go.
    fn urls(&self) -> &[String];
    /// A worker's handle. Workers start at different URLs, then go round-robin.
    async fn connect(&self, worker: usize) -> Result<Box<dyn Conn + '_>, OpError>;
}

/// One worker's connection: it keeps one request in flight at a time.
#[async_trait::async_trait]
pub trait Conn: Send {
    /// Reads a key; whether it had a value.
    async fn get(&mut self, key: &str) -> Result<bool, OpError>;
    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError>;
}

/// Round-robin over `len` URLs from a worker's own starting point.
#[derive(Clone, Copy, Debug)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn starting_at(worker: usize) -> Self {
        RoundRobin { next: worker }
    }

    /// The next index below `len` (`len` is at least 1: a target has a URL).
    pub fn pick(&mut self, len: usize) -> usize {
        let i = self.next % len.max(1);
        self.next = self.next.wrapping_add(1);
        i
    }
}

/// URLs without a trailing slash; an empty list is an error.
pub fn normalise_urls(urls: Vec<String>) -> Result<Vec<String>, OpError> {
    if urls.is_empty() {
        return Err(OpError::Other("no target URL given".into()));
    }
    Ok(urls
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect())
}

/// ringkv nodes, or the reference server: the same pooled keep-alive client for both.
#[derive(Debug)]
pub struct HttpTarget {
    kind: TargetKind,
    urls: Vec<String>,
    http: Vec<Client>,
}

impl HttpTarget {
    pub fn new(
        kind: TargetKind,
        urls: Vec<String>,
        options: &ClientOptions,
    ) -> Result<Self, OpError> {
        let urls = normalise_urls(urls)?;
        // One client per node, each without retries: the bench does its own round-robin,
        // and a failed op is counted as the error it was, not hidden by a second attempt.
        let options = ClientOptions {
            retries: 0,
            ..options.clone()
        };
        let http = urls
            .iter()
            .map(|u| Client::with_options(u, &options))
            .collect::<Result<_, _>>()?;
        Ok(HttpTarget { kind, urls, http })
    }
}

#[async_trait::async_trait]
impl Target for HttpTarget {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn urls(&self) -> &[String] {
        &self.urls
    }

    async fn connect(&self, worker: usize) -> Result<Box<dyn Conn + '_>, OpError> {
        Ok(Box::new(HttpConn {
            target: self,
            next: RoundRobin::starting_at(worker),
        }))
    }
}

struct HttpConn<'a> {
    target: &'a HttpTarget,
    next: RoundRobin,
}

#[async_trait::async_trait]
impl Conn for HttpConn<'_> {
    async fn get(&mut self, key: &str) -> Result<bool, OpError> {
        let client = &self.target.http[self.next.pick(self.target.http.len())];
        Ok(client.exists(key).await?)
    }

    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        let client = &self.target.http[self.next.pick(self.target.http.len())];
        Ok(client.put_blind(key, value.clone()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_url_in_turn_from_its_start() {
        let mut rr = RoundRobin::starting_at(2);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, vec![2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn no_url_is_an_error() {
        assert!(normalise_urls(Vec::new()).is_err());
        assert_eq!(
            normalise_urls(vec!["http://a:1/".into()]).unwrap(),
            vec!["http://a:1".to_owned()]
        );
    }
}
