//! `ringkv-tools bench`: the load generator of `ringkv bench`, the same workers, workload
//! and report, against the stores ringkv is compared with: etcd (its v3 JSON gateway) and
//! Redis (RESP). They live here, not in the product, so that their client crates stay out
//! of the node's dependency tree; `scripts/bench-compare.sh` runs both binaries.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use ringkv::bench::target::{normalise_urls, Conn, OpError, RoundRobin, Target};
use ringkv::cli::{run_and_print, BenchOptions};
use ringkv::client::ClientOptions;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtherStore {
    /// etcd's v3 JSON gateway (`/v3/kv/put`, serializable `/v3/kv/range`), round-robin.
    Etcd,
    /// Redis (RESP `SET`/`GET`), one connection per worker, spread over the URLs.
    Redis,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to load. (ringkv itself and the reference server: `ringkv bench`.)
    #[arg(long, value_enum)]
    pub target: OtherStore,
    #[command(flatten)]
    pub options: BenchOptions,
}

/// Runs the benchmark against etcd or Redis and prints its report.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let BenchArgs { target, options } = args;
    options.check(false)?;
    let client = options.client_options();
    let unreachable = |e: OpError| format!("cannot reach the target: {e}");
    let target: Arc<dyn Target> = match target {
        OtherStore::Etcd => Arc::new(
            Etcd::new(options.urls_or("http://127.0.0.1:2379"), &client).map_err(unreachable)?,
        ),
        OtherStore::Redis => Arc::new(
            Redis::new(options.urls_or("redis://127.0.0.1:6379"), &client).map_err(unreachable)?,
        ),
    };
    let json = options.json;
    run_and_print(options.into_config(target, Vec::new()), json).await
}

/// etcd members, through the v3 JSON gateway, with the pooled client settings every HTTP
/// target gets.
#[derive(Debug)]
struct Etcd {
    urls: Vec<String>,
    http: reqwest::Client,
}

impl Etcd {
    fn new(urls: Vec<String>, options: &ClientOptions) -> Result<Self, OpError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.max_idle_connections)
            .tcp_nodelay(true)
            .build()?;
        Ok(Etcd {
            urls: normalise_urls(urls)?,
            http,
        })
    }
}

#[async_trait::async_trait]
impl Target for Etcd {
    fn name(&self) -> &str {
        "etcd"
    }

    fn urls(&self) -> &[String] {
        &self.urls
    }

    async fn connect(&self, worker: usize) -> Result<Box<dyn Conn + '_>, OpError> {
        Ok(Box::new(EtcdConn {
            target: self,
            next: RoundRobin::starting_at(worker),
        }))
    }
}

struct EtcdConn<'a> {
    target: &'a Etcd,
    next: RoundRobin,
}

#[derive(Deserialize)]
struct EtcdRange {
    #[serde(default)]
    kvs: Vec<serde::de::IgnoredAny>,
}

impl EtcdConn<'_> {
    fn url(&mut self, path: &str) -> String {
        let urls = &self.target.urls;
        format!("{}{path}", urls[self.next.pick(urls.len())])
    }
}

fn status_error(status: reqwest::StatusCode) -> OpError {
    OpError::Status {
        status: status.as_u16(),
        code: String::new(),
    }
}

#[async_trait::async_trait]
impl Conn for EtcdConn<'_> {
    async fn get(&mut self, key: &str) -> Result<bool, OpError> {
        let url = self.url("/v3/kv/range");
        let body = serde_json::json!({"key": B64.encode(key), "serializable": true});
        let resp = self.target.http.post(url).json(&body).send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(status));
        }
        let range: EtcdRange = resp.json().await?;
        Ok(!range.kvs.is_empty())
    }

    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        let url = self.url("/v3/kv/put");
        let body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
        let resp = self.target.http.post(url).json(&body).send().await?;
        let status = resp.status();
        // Read the body through, so the connection goes back to the pool.
        resp.bytes().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(status))
        }
    }
}

/// Redis servers: one multiplexed connection per worker, as each HTTP worker keeps one
/// request in flight.
#[derive(Debug)]
struct Redis {
    urls: Vec<String>,
    timeout: std::time::Duration,
}

impl Redis {
    fn new(urls: Vec<String>, options: &ClientOptions) -> Result<Self, OpError> {
        Ok(Redis {
            urls: normalise_urls(urls)?,
            timeout: options.timeout,
        })
    }
}

/// A Redis error in the bench's terms (the orphan rule keeps this a function).
fn redis_error(e: redis::RedisError) -> OpError {
    if e.is_timeout() {
        OpError::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() {
        OpError::Connect(e.to_string())
    } else {
        OpError::Other(e.to_string())
    }
}

#[async_trait::async_trait]
impl Target for Redis {
    fn name(&self) -> &str {
        "redis"
    }

    fn urls(&self) -> &[String] {
        &self.urls
    }

    async fn connect(&self, worker: usize) -> Result<Box<dyn Conn + '_>, OpError> {
        let url = &self.urls[RoundRobin::starting_at(worker).pick(self.urls.len())];
        let client = redis::Client::open(url.as_str()).map_err(redis_error)?;
        let conn = tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| OpError::Timeout)?
            .map_err(redis_error)?;
        Ok(Box::new(RedisConn { conn }))
    }
}

struct RedisConn {
    conn: redis::aio::MultiplexedConnection,
}

#[async_trait::async_trait]
impl Conn for RedisConn {
    async fn get(&mut self, key: &str) -> Result<bool, OpError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_error)?;
        Ok(value.is_some())
    }

    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(redis_error)
    }
}
