//! `ringkv serve`: flags (each also a `RINGKV_*` variable), signals, and the ready line.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::size;
use crate::config::{
    Addrs, BlockingMode, ClusterConfig, FsyncMode, HttpLimits, Limits, NodeConfig, StorageKind,
};
use crate::config::{ClusterSecret, SecurityConfig};
use crate::net::TokioNetwork;
use crate::node::{self, NodeError};
use crate::quorum::Replication;
use crate::telemetry::{self, LogFormat};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A TOML file of serve flags, keys named like the long flags
    /// (`max-hint-bytes = "256MiB"`, `seed = ["10.0.0.1:7946"]`). Flags and `RINGKV_*`
    /// variables override it; a key that is no flag is an error.
    #[arg(long, env = "RINGKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings the node would run with (flags over environment over
    /// --config over defaults) as TOML, each with where it came from, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Where the node keeps its data and its node id.
    #[arg(long, env = "RINGKV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP API address.
    #[arg(long, env = "RINGKV_HTTP_ADDR", default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,
    /// Internode RPC address (TCP).
    #[arg(long, env = "RINGKV_RPC_ADDR", default_value = "127.0.0.1:7071")]
    pub rpc_addr: SocketAddr,
    /// Gossip address (UDP).
    #[arg(long, env = "RINGKV_GOSSIP_ADDR", default_value = "127.0.0.1:7946")]
    pub gossip_addr: SocketAddr,
    /// Host or IP that peers reach this node at, needed when listening on 0.0.0.0.
    /// A hostname is resolved once, at start.
    #[arg(long, env = "RINGKV_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Gossip address (`host:port`) of a node to join through. Repeatable; with none, the
    /// node starts a cluster of its own.
    #[arg(long = "seed", env = "RINGKV_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Nodes join only nodes with the same cluster id.
    #[arg(long, env = "RINGKV_CLUSTER_ID", default_value = "ringkv")]
    pub cluster_id: String,
    /// Virtual nodes per member on the ring. Must be the same on every node.
    #[arg(long, env = "RINGKV_VNODES", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub vnodes: u16,
    #[arg(long, env = "RINGKV_GOSSIP_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub gossip_interval: Duration,
    /// Phi accrual threshold above which a peer is considered down.
    #[arg(long, env = "RINGKV_PHI_THRESHOLD", default_value_t = 8.0)]
    pub phi_threshold: f64,
    /// How long a dead member keeps its place in the ring before it is removed.
    #[arg(long, env = "RINGKV_DEAD_NODE_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dead_node_grace: Duration,
    /// Node ids gossip may track: a datagram naming more is dropped, and past it gossip
    /// starts again to forget them (a buggy peer's invented ids).
    #[arg(long, env = "RINGKV_MAX_GOSSIP_MEMBERS", default_value_t = crate::cluster::gossip_guard::DEFAULT_MAX_GOSSIP_MEMBERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=65_535))]
    pub max_gossip_members: usize,
    /// Bound on one internode call.
    #[arg(long, env = "RINGKV_RPC_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,
    /// Share of reads (0.0 to 1.0) that ask every replica rather than R, so that read
    /// repair also finds the stale copies ordinary reads skip.
    #[arg(long, env = "RINGKV_READ_REPAIR_CHANCE", default_value_t = crate::config::DEFAULT_READ_REPAIR_CHANCE, value_parser = parse_chance)]
    pub read_repair_chance: f64,
    /// Bytes of hints kept for one down node; past this, hints are refused and counted.
    #[arg(long, env = "RINGKV_MAX_HINT_BYTES", default_value = "256MiB", value_parser = size::any_u64())]
    pub max_hint_bytes: u64,
    /// Hints older than this are dropped (anti-entropy repairs what they held). Capped at
    /// --tombstone-grace.
    #[arg(long, env = "RINGKV_MAX_HINT_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_hint_age: Duration,
    /// How often a range is compared with a fellow replica; 0 turns anti-entropy off.
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub anti_entropy_interval: Duration,
    /// A tombstone every replica holds is removed this long after the delete.
    #[arg(long, env = "RINGKV_TOMBSTONE_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tombstone_grace: Duration,
    /// How often pending hints are handed off to nodes that came back.
    #[arg(long, env = "RINGKV_HANDOFF_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub handoff_interval: Duration,
    #[arg(long, env = "RINGKV_STORAGE", value_enum, default_value = "redb")]
    pub storage: StorageKind,
    /// `always`: acknowledge only durable writes. `periodic`: sync on a timer.
    #[arg(long, env = "RINGKV_FSYNC", value_enum, default_value = "always")]
    pub fsync: FsyncMode,
    /// How often `--fsync periodic` syncs.
    #[arg(long, env = "RINGKV_FSYNC_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub fsync_interval: Duration,
    /// Put a write-ahead log (`ringkv.wal`) in front of redb: a durable write costs one
    /// log fdatasync, and the next batch is applied while it runs. Off: today's commits.
    #[arg(long, env = "RINGKV_WAL")]
    pub wal: bool,
    /// Log bytes after which redb is checkpointed durably and the log starts over.
    #[arg(long, env = "RINGKV_WAL_MAX_BYTES", default_value = "64MiB", value_parser = size::u64_between(4096, u64::MAX))]
    pub wal_max_bytes: u64,
    /// Longest time between two checkpoints of redb under `--wal` (bounds the replay).
    #[arg(long, env = "RINGKV_WAL_CHECKPOINT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub wal_checkpoint_interval: Duration,
    /// Replicas per key.
    #[arg(long, env = "RINGKV_N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub n: u16,
    /// Replies a read waits for by default.
    #[arg(long, env = "RINGKV_R", default_value_t = 2)]
    pub r: u16,
    /// Replies a write waits for by default.
    #[arg(long, env = "RINGKV_W", default_value_t = 2)]
    pub w: u16,
    /// Time a request may take when it gives no `timeout_ms`.
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = size::any_usize())]
    pub max_value_bytes: usize,
    /// Versions one key may hold before writes get 409.
    #[arg(long, env = "RINGKV_MAX_SIBLINGS", default_value_t = 64)]
    pub max_siblings: usize,
    #[arg(long, env = "RINGKV_MAX_BATCH_OPS", default_value_t = 1000)]
    pub max_batch_ops: usize,
    #[arg(long, env = "RINGKV_MAX_BATCH_BYTES", default_value = "16MiB", value_parser = size::any_usize())]
    pub max_batch_bytes: usize,
    /// Open HTTP connections at most; more wait to be accepted.
    #[arg(long, env = "RINGKV_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// The largest internode frame. Must carry --max-value-bytes x --max-siblings plus
    /// overhead; the node refuses to start otherwise. Hidden: for tests that need large
    /// batches to overflow a frame without writing gigabytes.
    #[arg(long, env = "RINGKV_MAX_FRAME_BYTES", default_value_t = crate::rpc::frame::DEFAULT_MAX_FRAME_BYTES, value_parser = size::any_usize(), hide = true)]
    pub max_frame_bytes: usize,
    /// A request's head must arrive within this of its first byte.
    #[arg(long, env = "RINGKV_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this once its head has; past it, 408.
    #[arg(long, env = "RINGKV_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// A connection serving no request that moves no byte for this long is closed (idle
    /// keep-alive, or a client that stopped reading its response).
    #[arg(long, env = "RINGKV_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// HTTP requests served at once (/health and /ready aside); past it, 503 overloaded.
    #[arg(long, env = "RINGKV_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Request-body bytes held at once; past it, 503 overloaded. At least
    /// --max-value-bytes and --max-batch-bytes.
    #[arg(long, env = "RINGKV_MAX_BODY_BYTES_IN_FLIGHT", default_value = "256MiB", value_parser = size::any_usize())]
    pub max_body_bytes_in_flight: usize,
    /// Connections beyond --max-connections that answer only /health and /ready.
    #[arg(long, env = "RINGKV_RESERVED_CONNECTIONS", default_value_t = 16)]
    pub reserved_connections: usize,
    /// redb's page cache, in bytes (`--cache-bytes` is an older name of it). Without it:
    /// min(64 MiB, an eighth of the cgroup memory limit), at least 4 MiB; 64 MiB when the
    /// node runs under no limit.
    #[arg(
        long = "cache-size",
        visible_alias = "cache-bytes",
        env = "RINGKV_CACHE_SIZE",
        value_parser = size::any_usize()
    )]
    pub cache_bytes: Option<usize>,
    /// Bytes of values one listing page holds at most (a single larger key still comes,
    /// alone), and that the scans behind it read.
    #[arg(long, env = "RINGKV_MAX_LIST_BYTES", default_value_t = crate::config::DEFAULT_MAX_LIST_BYTES, value_parser = size::usize_between(1, 1 << 30))]
    pub max_list_bytes: usize,
    /// Bearer tokens of the HTTP API, one a line (blank lines and `#` comments skipped),
    /// reread on SIGHUP. Every route but /health and /ready then needs
    /// `Authorization: Bearer <token>`. Without it the API is open to anyone who reaches it.
    #[arg(long, env = "RINGKV_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Tokens for /admin/* (same format, reread on SIGHUP too). With it, client tokens get
    /// 403 there; an admin token is good for every route.
    #[arg(long, env = "RINGKV_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain: the HTTP API is served over TLS (and, with --rpc-tls,
    /// internode RPC too, this certificate both serving and dialing).
    #[arg(long, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) of the cluster: with --rpc-tls, peers must present a
    /// certificate it signed, and are dialed only if theirs is.
    #[arg(long, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Internode RPC over mutual TLS (needs --tls-cert, --tls-key and --tls-ca).
    #[arg(long, env = "RINGKV_RPC_TLS")]
    pub rpc_tls: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[arg(long, env = "RINGKV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or filter (`RUST_LOG` wins when set).
    #[arg(long, env = "RINGKV_LOG", default_value = "info")]
    pub log: String,
    /// One info line per HTTP request: method, route (a key shows as `{key}` and its
    /// length), status, bytes, duration and request id.
    #[arg(long, env = "RINGKV_ACCESS_LOG")]
    pub access_log: bool,
}

/// Cluster authentication and RPC bounds (issue 13).
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// File holding the cluster secret (at least 16 bytes once trimmed). Every member
    /// needs the same one: RPC connections prove it, gossip datagrams are signed with it.
    /// Without it RPC and gossip are open to anyone who reaches the ports.
    #[arg(long, env = "RINGKV_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// An RPC connection that has not proved the secret by then is closed.
    #[arg(long, env = "RINGKV_RPC_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub rpc_handshake_timeout: Duration,
    /// Signed gossip stamped further than this from the local clock is dropped.
    #[arg(long, env = "RINGKV_GOSSIP_MAX_SKEW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub gossip_max_skew: Duration,
    /// Once an internode frame started arriving, the rest must arrive within this.
    #[arg(long, env = "RINGKV_RPC_FRAME_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rpc_frame_timeout: Duration,
    /// An inbound internode connection quiet for this long is closed.
    #[arg(long, env = "RINGKV_RPC_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub rpc_idle_timeout: Duration,
    /// Bytes of internode frames being read at once, over all connections. At least
    /// --max-frame-bytes.
    #[arg(long, env = "RINGKV_RPC_READ_BUDGET_BYTES", default_value = "256MiB", value_parser = size::any_usize())]
    pub rpc_read_budget_bytes: usize,
}

impl SecurityArgs {
    fn to_config(&self, max_frame_bytes: usize) -> Result<SecurityConfig, ServeError> {
        let cluster_secret = match &self.cluster_secret_file {
            None => None,
            Some(path) => Some(
                ClusterSecret::from_file(path)
                    .map_err(|e| ServeError::Config(format!("--cluster-secret-file: {e}")))?,
            ),
        };
        if self.rpc_read_budget_bytes < max_frame_bytes {
            return Err(ServeError::Config(format!(
                "--rpc-read-budget-bytes ({}) must be at least --max-frame-bytes ({max_frame_bytes})",
                self.rpc_read_budget_bytes
            )));
        }
        let zero = [
            ("--rpc-handshake-timeout", self.rpc_handshake_timeout),
            ("--gossip-max-skew", self.gossip_max_skew),
            ("--rpc-frame-timeout", self.rpc_frame_timeout),
            ("--rpc-idle-timeout", self.rpc_idle_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((flag, _)) = zero {
            return Err(ServeError::Config(format!("{flag} must be more than 0")));
        }
        Ok(SecurityConfig {
            cluster_secret,
            handshake_timeout: self.rpc_handshake_timeout,
            gossip_max_skew: self.gossip_max_skew,
            frame_read_timeout: self.rpc_frame_timeout,
            rpc_idle_timeout: self.rpc_idle_timeout,
            read_budget_bytes: self.rpc_read_budget_bytes,
            ..SecurityConfig::default()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Auth(#[from] crate::http::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cannot listen for SIGHUP (token reload): {0}")]
    Signal(#[source] std::io::Error),
}

impl ServeArgs {
    pub fn to_config(&self) -> Result<NodeConfig, ServeError> {
        let (n, r, w) = (self.n as usize, self.r as usize, self.w as usize);
        if !(1..=n).contains(&r) || !(1..=n).contains(&w) {
            return Err(ServeError::Config(format!(
                "--r and --w must be in 1..=--n ({n}); got r={r} w={w}"
            )));
        }
        if self.max_value_bytes == 0 || self.max_siblings == 0 || self.max_batch_ops == 0 {
            return Err(ServeError::Config(
                "--max-value-bytes, --max-siblings and --max-batch-ops must be at least 1".into(),
            ));
        }
        self.check_http_limits()?;
        crate::rpc::batch::check_frame_fits(
            self.max_frame_bytes,
            self.max_value_bytes,
            self.max_siblings,
        )
        .map_err(|e| ServeError::Config(e.to_string()))?;
        let advertise_host = match &self.advertise_host {
            None => None,
            Some(host) => Some(resolve_host(host)?),
        };
        let seeds = match (&self.advertise_host, advertise_host) {
            (Some(name), Some(ip)) => own_seed_by_name(
                &self.seeds,
                name,
                SocketAddr::new(ip, self.gossip_addr.port()),
            ),
            _ => self.seeds.clone(),
        };
        Ok(NodeConfig {
            addrs: Addrs {
                http: self.http_addr,
                rpc: self.rpc_addr,
                gossip: self.gossip_addr,
                advertise_host,
            },
            cluster: ClusterConfig {
                cluster_id: self.cluster_id.clone(),
                seeds,
                vnodes: self.vnodes,
                gossip_interval: self.gossip_interval,
                phi_threshold: self.phi_threshold,
                dead_node_grace: self.dead_node_grace,
                rpc_timeout: self.rpc_timeout,
                read_repair_chance: self.read_repair_chance,
                max_hint_bytes: self.max_hint_bytes,
                // A hint older than the tombstone grace could bring back a key whose
                // tombstone was collected: cap it.
                max_hint_age: self.max_hint_age.min(self.tombstone_grace),
                handoff_interval: self.handoff_interval,
                anti_entropy_interval: self.anti_entropy_interval,
                tombstone_grace: self.tombstone_grace,
                max_gossip_members: self.max_gossip_members,
                ..ClusterConfig::default()
            },
            data_dir: self.data_dir.clone(),
            storage: self.storage,
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            wal: self.wal.then_some(crate::store::WalSettings {
                max_bytes: self.wal_max_bytes,
                max_age: self.wal_checkpoint_interval,
            }),
            replication: Replication { n, r, w },
            request_timeout: self.request_timeout,
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
                max_siblings: self.max_siblings,
                max_batch_ops: self.max_batch_ops,
                max_batch_bytes: self.max_batch_bytes,
                max_connections: self.max_connections,
                max_frame_bytes: self.max_frame_bytes,
                http: HttpLimits {
                    header_read_timeout: self.header_read_timeout,
                    body_read_timeout: self.body_read_timeout,
                    idle_timeout: self.idle_timeout,
                    max_in_flight: self.max_in_flight,
                    max_body_bytes_in_flight: self.max_body_bytes_in_flight,
                    reserved_connections: self.reserved_connections,
                },
                cache_bytes: self.cache_bytes.unwrap_or_else(|| {
                    crate::store::cache_size::default_cache_bytes(
                        crate::store::cache_size::read_limit(),
                    )
                }),
                max_list_bytes: self.max_list_bytes,
                ..Limits::default()
            },
            blocking: BlockingMode::Threaded,
            rng_seed: None,
            security: {
                let (auth, tls) = self.client_security()?;
                crate::config::SecurityConfig {
                    auth,
                    tls,
                    ..self.security.to_config(self.max_frame_bytes)?
                }
            },
        })
    }

    /// Loads the token and certificate files the flags name: a node that was asked to
    /// protect its API and cannot does not start.
    fn client_security(
        &self,
    ) -> Result<
        (
            Option<std::sync::Arc<crate::http::auth::Auth>>,
            crate::net::tls::NodeTls,
        ),
        ServeError,
    > {
        use crate::net::tls::{NodeTls, TlsFlags};
        let auth = match (&self.auth_token_file, &self.admin_token_file) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ServeError::Config(
                    "--admin-token-file needs --auth-token-file".into(),
                ))
            }
            (Some(client), admin) => Some(std::sync::Arc::new(crate::http::auth::Auth::load(
                client,
                admin.as_deref(),
            )?)),
        };
        let tls = NodeTls::load(TlsFlags {
            cert: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
            ca: self.tls_ca.as_deref(),
            rpc: self.rpc_tls,
        })?;
        Ok((auth, tls))
    }
}

impl ServeArgs {
    /// The HTTP bounds that would make the node refuse what it means to take: a body its
    /// budget could never hold, or a timeout of zero.
    fn check_http_limits(&self) -> Result<(), ServeError> {
        let largest = self.max_value_bytes.max(self.max_batch_bytes);
        if self.max_body_bytes_in_flight < largest {
            return Err(ServeError::Config(format!(
                "--max-body-bytes-in-flight ({}) must hold the largest body a route takes \
                 ({largest}, from --max-value-bytes and --max-batch-bytes)",
                self.max_body_bytes_in_flight
            )));
        }
        if self.max_in_flight == 0 {
            return Err(ServeError::Config(
                "--max-in-flight must be at least 1".into(),
            ));
        }
        let timeouts = [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--idle-timeout", self.idle_timeout),
        ];
        if let Some((flag, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(ServeError::Config(format!("{flag} must be more than 0")));
        }
        Ok(())
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run_serve(args: ServeArgs) -> Result<(), ServeError> {
    telemetry::init(&telemetry::LogSettings {
        format: args.log_format,
        level: args.log.clone(),
        access_log: args.access_log,
    });
    let config = args.to_config()?;
    // Logged once, so that an operator sees which limit the default cache followed.
    let cgroup_limit = crate::store::cache_size::read_limit();
    tracing::info!(
        cgroup_memory_limit = ?cgroup_limit,
        cache_bytes = config.limits.cache_bytes,
        from_flag = args.cache_bytes.is_some(),
        "redb page cache"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    match config.security.auth.clone() {
        None => tracing::warn!(
            http = %config.addrs.http,
            "no --auth-token-file: the HTTP API is open to anyone who can reach it"
        ),
        Some(auth) => reload_tokens_on_sighup(auth)?,
    }
    let format = args.log_format;
    node::run(config, TokioNetwork, shutdown, |started| {
        // One line on stdout, for scripts that start the node on port 0.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", ready_line(format, started));
        let _ = out.flush();
    })
    .await?;
    Ok(())
}

/// `ringkv ready http=… rpc=… gossip=… node_id=…`, or under `--log-format json` the same
/// as one JSON object, `{"event":"ready",…}`: a script reading JSON logs reads it too.
fn ready_line(format: LogFormat, started: &node::Started) -> String {
    let node_id = format!("{:016x}", started.node_id);
    match format {
        LogFormat::Text => format!(
            "ringkv ready http={} rpc={} gossip={} node_id={node_id}",
            started.http_addr, started.rpc_addr, started.gossip_addr
        ),
        LogFormat::Json => serde_json::json!({
            "event": "ready",
            "http": started.http_addr.to_string(),
            "rpc": started.rpc_addr.to_string(),
            "gossip": started.gossip_addr.to_string(),
            "node_id": node_id,
        })
        .to_string(),
    }
}

/// The seeds, with any that names this node by its advertised name (`name:port` with the
/// gossip port) written as its advertised address: the node then knows it is its own
/// seed, the first node of its cluster, without a DNS lookup that could fail. A
/// Kubernetes StatefulSet gives every pod the same `--seed` (pod 0's stable name), and
/// pod 0 must not wait to join itself (`deploy/k8s/`).
fn own_seed_by_name(seeds: &[String], name: &str, me: SocketAddr) -> Vec<String> {
    seeds
        .iter()
        .map(|seed| match seed.rsplit_once(':') {
            Some((host, port))
                if host.eq_ignore_ascii_case(name)
                    && port.parse::<u16>().ok() == Some(me.port()) =>
            {
                me.to_string()
            }
            _ => seed.clone(),
        })
        .collect()
}

/// A share of reads: a number in `0.0..=1.0` (NaN and infinities refused).
fn parse_chance(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(c) if (0.0..=1.0).contains(&c) => Ok(c),
        Ok(c) => Err(format!("expected a share between 0.0 and 1.0, got {c}")),
        Err(e) => Err(format!("expected a share between 0.0 and 1.0: {e}")),
    }
}

/// An IP as is, or a hostname resolved now (docker-compose service names, say).
fn resolve_host(host: &str) -> Result<IpAddr, ServeError> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| ServeError::Config(format!("--advertise-host {host}: {e}")))?
        .map(|a| a.ip())
        .next()
        .ok_or_else(|| ServeError::Config(format!("--advertise-host {host}: no address")))
}

async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}

/// Rereads the token files on every SIGHUP. The handler is installed before the node
/// starts, so a SIGHUP sent once it is up never takes SIGHUP's default (exit).
fn reload_tokens_on_sighup(
    auth: std::sync::Arc<crate::http::auth::Auth>,
) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match auth.reload() {
                Ok(()) => {
                    let (client, admin) = auth.counts();
                    tracing::info!(client, admin, "SIGHUP: token files reread");
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "SIGHUP: token files not reread; the tokens in use stay"
                ),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{own_seed_by_name, parse_chance};

    #[test]
    fn a_seed_naming_this_node_becomes_its_address() {
        let me: std::net::SocketAddr = "10.1.2.3:7946".parse().unwrap();
        let name = "ringkv-0.ringkv.db.svc.cluster.local";
        let seeds = vec![
            "ringkv-0.ringkv.db.svc.cluster.local:7946".to_owned(),
            "RINGKV-0.ringkv.db.svc.cluster.local:7946".to_owned(),
            "ringkv-0.ringkv.db.svc.cluster.local:7000".to_owned(),
            "ringkv-1.ringkv.db.svc.cluster.local:7946".to_owned(),
            "10.9.9.9:7946".to_owned(),
        ];
        assert_eq!(
            own_seed_by_name(&seeds, name, me),
            [
                "10.1.2.3:7946",
                "10.1.2.3:7946",
                "ringkv-0.ringkv.db.svc.cluster.local:7000",
                "ringkv-1.ringkv.db.svc.cluster.local:7946",
                "10.9.9.9:7946",
            ]
        );
    }

    #[test]
    fn a_chance_is_a_share_between_zero_and_one() {
        assert_eq!(parse_chance("0"), Ok(0.0));
        assert_eq!(parse_chance("0.25"), Ok(0.25));
        assert_eq!(parse_chance("1.0"), Ok(1.0));
        for bad in ["-0.1", "1.01", "NaN", "inf", "", "ten"] {
            assert!(parse_chance(bad).is_err(), "{bad:?} accepted");
        }
    }
}
