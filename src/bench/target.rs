//! The systems `ringkv bench` can load, behind one pair of operations (get, put). Every
//! HTTP target uses the same pooled keep-alive client settings; Redis gets one
//! connection per worker, as the HTTP targets get one in-flight request per worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::client::{Client, ClientError, ClientOptions};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// ringkv nodes (`/kv/{key}`), round-robin.
    Ringkv,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, serializable `/v3/kv/range`), round-robin.
    Etcd,
    /// Redis (RESP `SET`/`GET`), one connection per worker, spread over the URLs.
    Redis,
    /// The in-memory axum server (`examples/bench_reference.rs`): the HTTP ceiling.
    Reference,
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
        }
    }
}

impl From<redis::RedisError> for OpError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            OpError::Timeout
        } else if e.is_connection_refusal() || e.is_connection_dropped() {
            OpError::Connect(e.to_string())
        } else {
            OpError::Other(e.to_string())
        }
    }
}

/// How to reach the target, shared by every worker.
pub struct Target {
    kind: TargetKind,
    urls: Vec<String>,
    http: Vec<Client>,
    etcd: reqwest::Client,
    timeout: Duration,
}

impl Target {
    pub fn new(
        kind: TargetKind,
        urls: Vec<String>,
        options: &ClientOptions,
    ) -> Result<Self, OpError> {
        if urls.is_empty() {
            return Err(OpError::Other("no target URL given".into()));
        }
        let http = match kind {
            TargetKind::Ringkv | TargetKind::Reference => urls
                .iter()
                .map(|u| Client::with_options(u, options))
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let etcd = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.max_idle_connections)
            .tcp_nodelay(true)
            .build()?;
        Ok(Target {
            kind,
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            http,
            etcd,
            timeout: options.timeout,
        })
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// A worker's handle. Its requests go round-robin over the URLs, starting at a
    /// different one per worker.
    pub async fn connect(&self, worker: usize) -> Result<Conn<'_>, OpError> {
        let redis = match self.kind {
            TargetKind::Redis => {
                let url = &self.urls[worker % self.urls.len()];
                let client = redis::Client::open(url.as_str())?;
                let conn =
                    tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection())
                        .await
                        .map_err(|_| OpError::Timeout)??;
                Some(conn)
            }
            _ => None,
        };
        Ok(Conn {
            target: self,
            next: AtomicUsize::new(worker),
            redis,
        })
    }
}

pub struct Conn<'a> {
    target: &'a Target,
    next: AtomicUsize,
    redis: Option<redis::aio::MultiplexedConnection>,
}

#[derive(Deserialize)]
struct EtcdRange {
    #[serde(default)]
    kvs: Vec<serde::de::IgnoredAny>,
}

impl Conn<'_> {
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.target.urls.len()
    }

    /// Reads a key; whether it had a value.
    pub async fn get(&mut self, key: &str) -> Result<bool, OpError> {
        let t = self.target;
        match t.kind {
            TargetKind::Ringkv | TargetKind::Reference => {
                Ok(t.http[self.pick()].exists(key).await?)
            }
            TargetKind::Etcd => {
                let url = format!("{}/v3/kv/range", t.urls[self.pick()]);
                let body = serde_json::json!({"key": B64.encode(key), "serializable": true});
                let resp = t.etcd.post(url).json(&body).send().await?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(OpError::Status {
                        status: status.as_u16(),
                        code: String::new(),
                    });
                }
                let range: EtcdRange = resp.json().await?;
                Ok(!range.kvs.is_empty())
            }
            TargetKind::Redis => {
                let conn = self.redis_conn()?;
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
                Ok(value.is_some())
            }
        }
    }

    pub async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        let t = self.target;
        match t.kind {
            TargetKind::Ringkv | TargetKind::Reference => {
                Ok(t.http[self.pick()].put_blind(key, value.clone()).await?)
            }
            TargetKind::Etcd => {
                let url = format!("{}/v3/kv/put", t.urls[self.pick()]);
                let body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
                let resp = t.etcd.post(url).json(&body).send().await?;
                let status = resp.status();
                // Read the body through, so the connection goes back to the pool.
                resp.bytes().await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(OpError::Status {
                        status: status.as_u16(),
                        code: String::new(),
                    })
                }
            }
            TargetKind::Redis => {
                let conn = self.redis_conn()?;
                redis::cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .query_async::<()>(conn)
                    .await?;
                Ok(())
            }
        }
    }

    fn redis_conn(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, OpError> {
        self.redis
            .as_mut()
            .ok_or_else(|| OpError::Other("no Redis connection".into()))
    }
}
