//! The node's configuration, independent of how it was given (CLI flags, env, tests).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::quorum::Replication;

/// When a commit reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// Acknowledge a write only once its commit is durable (group commit shares the fsync).
    Always,
    /// Acknowledge after the commit; sync on a timer. A crash loses up to one interval.
    Periodic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    Redb,
    Memory,
}

/// How blocking storage work runs. Production moves commits to tokio's blocking pool so an
/// fsync never stalls the reactor; the simulation runs them inline, because extra threads
/// would make a run non-deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingMode {
    Threaded,
    Inline,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_value_bytes: usize,
    pub max_siblings: usize,
    pub max_batch_ops: usize,
    pub max_batch_bytes: usize,
    pub max_connections: usize,
    /// Mutations waiting for the writer; a full queue makes writers wait (backpressure).
    pub write_queue: usize,
    /// Mutations folded into one transaction at most.
    pub max_commit_batch: usize,
    /// The largest internode frame either end sends or accepts. It must carry a key's
    /// largest sibling set (`rpc::batch::check_frame_fits`).
    pub max_frame_bytes: usize,
    /// How the HTTP API defends itself from slow clients and overload (`http::serve`,
    /// `http::overload`), and the storage cache that bounds the node's memory.
    pub http: HttpLimits,
    /// redb's page cache. redb's own default is 1 GiB, which a burst of writes fills and
    /// never gives back: the largest part of a node's resident memory.
    pub cache_bytes: usize,
    /// Bytes of values one listing page (`GET /kv`, `/debug/keys`) holds, and that the
    /// scans behind it read: a page bounded only in keys can be gigabytes.
    pub max_list_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1024 * 1024,
            max_siblings: 64,
            max_batch_ops: 1000,
            max_batch_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            write_queue: 4096,
            max_commit_batch: 512,
            max_frame_bytes: crate::rpc::frame::DEFAULT_MAX_FRAME_BYTES,
            http: HttpLimits::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
        }
    }
}

/// The default of [`Limits::max_list_bytes`]: 8 MiB.
pub const DEFAULT_MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

/// The default of [`Limits::cache_bytes`]: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Bounds of the HTTP API on slow clients and on load (see `http::serve`, `http::overload`).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// A request's head (request line and headers) must arrive within this, counted from
    /// its first byte.
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this once its head has; past it, 408.
    pub body_read_timeout: Duration,
    /// A connection with no request being served that moves no byte for this long is
    /// closed: an idle keep-alive connection, or a client that stopped reading its
    /// response.
    pub idle_timeout: Duration,
    /// Requests being served at once, `/health` and `/ready` aside; past it, 503.
    pub max_in_flight: usize,
    /// Request-body bytes held at once across all requests; past it, 503.
    pub max_body_bytes_in_flight: usize,
    /// Connections accepted beyond `Limits::max_connections` that answer only `/health`
    /// and `/ready` (and 503 to anything else), so probes still get through a full node.
    pub reserved_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_in_flight: 512,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            reserved_connections: 16,
        }
    }
}

/// Cassandra's old default: one read in ten asks every replica, enough for read repair
/// to find hot keys' stale copies well before anti-entropy's next pass, for 10 % more read
/// messages.
pub const DEFAULT_READ_REPAIR_CHANCE: f64 = 0.1;

/// Gossip, ring and replication settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Nodes only gossip with nodes of the same cluster id, so two clusters on one
    /// network never merge.
    pub cluster_id: String,
    /// `host:port` gossip addresses to join through; hostnames are resolved (and
    /// re-resolved) by chitchat.
    pub seeds: Vec<String>,
    pub vnodes: u16,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// How long a dead member keeps its place in the ring before it is removed.
    pub dead_node_grace: Duration,
    pub rpc_timeout: Duration,
    /// How long a read waits, after answering, for slower replicas to repair.
    pub repair_wait: Duration,
    /// The share of reads that ask every replica, not just R, so that read repair sees
    /// the ones ordinary reads skip (`--read-repair-chance`, `0.0..=1.0`).
    pub read_repair_chance: f64,
    /// Bytes of hints kept per target; past it, hints are refused and counted.
    pub max_hint_bytes: u64,
    pub max_hint_age: Duration,
    pub handoff_interval: Duration,
    pub anti_entropy_interval: Duration,
    /// A tombstone every replica holds is removed once this has passed since it was
    /// written. Hints are capped at this age, so none can bring a removed key back.
    pub tombstone_grace: Duration,
    /// Node ids gossip may track (see `cluster::gossip_guard`).
    pub max_gossip_members: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_id: "ringkv".into(),
            seeds: Vec::new(),
            vnodes: 128,
            gossip_interval: Duration::from_millis(500),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
            rpc_timeout: Duration::from_secs(2),
            repair_wait: Duration::from_secs(1),
            read_repair_chance: DEFAULT_READ_REPAIR_CHANCE,
            max_hint_bytes: 256 * 1024 * 1024,
            max_hint_age: Duration::from_secs(3600),
            handoff_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(60),
            tombstone_grace: Duration::from_secs(3600),
            max_gossip_members: crate::cluster::gossip_guard::DEFAULT_MAX_GOSSIP_MEMBERS,
        }
    }
}

/// Where the node listens, and what it tells peers.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub http: SocketAddr,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
    /// The host peers reach this node at, when it listens on a wildcard address.
    pub advertise_host: Option<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub addrs: Addrs,
    pub cluster: ClusterConfig,
    pub data_dir: PathBuf,
    pub storage: StorageKind,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    /// The write-ahead log in front of redb (`--wal`), with its checkpoint bounds; `None`
    /// commits every durable batch in redb itself.
    pub wal: Option<crate::store::WalSettings>,
    pub replication: Replication,
    /// Default time a request may take when it does not say (`timeout_ms`).
    pub request_timeout: Duration,
    pub limits: Limits,
    pub blocking: BlockingMode,
    /// Seeds the node's random choices (its id, on first start). `None` draws from the
    /// OS; the simulation sets it so that a seed replays the same run.
    pub rng_seed: Option<u64>,
    /// Client authentication, TLS, and the cluster secret with the RPC bounds around
    /// it; the first two are off unless the CLI was given their files.
    pub security: SecurityConfig,
}

impl NodeConfig {
    /// A config for tests: in-memory, default limits.
    pub fn for_test() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        NodeConfig {
            addrs: Addrs {
                http: local(0),
                rpc: local(0),
                gossip: local(0),
                advertise_host: None,
            },
            cluster: ClusterConfig::default(),
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Memory,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            wal: None,
            replication: Replication { n: 3, r: 2, w: 2 },
            request_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            blocking: BlockingMode::Threaded,
            rng_seed: None,
            security: SecurityConfig::default(),
        }
    }
}

/// Cluster authentication, and the RPC layer's timeouts and budgets (issue 13).
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// Bearer tokens of the HTTP API (`http::auth`); `None`: the API is open. The CLI
    /// loads the files; the node only checks against them, so the simulation never reads
    /// a file.
    pub auth: Option<std::sync::Arc<crate::http::auth::Auth>>,
    /// TLS of the HTTP API and of internode RPC (`net::tls`).
    pub tls: crate::net::tls::NodeTls,
    /// The secret every member holds. `None` is open mode: no RPC handshake, unsigned
    /// gossip, and a warning at start.
    pub cluster_secret: Option<ClusterSecret>,
    /// An inbound or outbound RPC connection that has not proved the secret by then is
    /// closed.
    pub handshake_timeout: Duration,
    /// A signed gossip datagram stamped further than this from our clock is dropped: it
    /// bounds how long a captured datagram can be replayed.
    pub gossip_max_skew: Duration,
    /// Once a frame's first byte arrived, the rest must arrive within this.
    pub frame_read_timeout: Duration,
    /// An inbound RPC connection with nothing in flight and no partial frame is closed
    /// after this.
    pub rpc_idle_timeout: Duration,
    /// Bytes of frames being read at once, over every RPC connection of the node; a
    /// frame's length is taken from it before its body is buffered.
    pub read_budget_bytes: usize,
    /// Bytes of calls one peer may have in flight from this node; past it, calls wait
    /// (and time out) instead of queueing more.
    pub peer_queue_bytes: usize,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            auth: None,
            tls: crate::net::tls::NodeTls::default(),
            cluster_secret: None,
            handshake_timeout: Duration::from_secs(5),
            gossip_max_skew: Duration::from_secs(30),
            frame_read_timeout: Duration::from_secs(10),
            rpc_idle_timeout: Duration::from_secs(60),
            read_budget_bytes: 256 * 1024 * 1024,
            peer_queue_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The shared cluster secret. Its bytes never reach a log: `Debug` prints its length.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("reading the cluster secret file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret file {path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("the cluster secret must be at least {min} bytes (after trimming); got {len}")]
    TooShort { len: usize, min: usize },
}

impl ClusterSecret {
    /// Fewer bytes than this are guessable.
    pub const MIN_BYTES: usize = 16;
    /// A secret file bigger than this is not a secret file.
    pub const MAX_FILE_BYTES: u64 = 4096;

    /// The secret from raw bytes, trimmed of surrounding whitespace (a trailing newline
    /// from `echo` must not make two nodes disagree).
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < Self::MIN_BYTES {
            return Err(SecretError::TooShort {
                len: trimmed.len(),
                min: Self::MIN_BYTES,
            });
        }
        Ok(ClusterSecret(trimmed.to_vec()))
    }

    /// Reads the secret from `path`, bounded: the file is read through a `take`, so a
    /// huge or endless file (a device, a pipe) cannot fill memory.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SecretError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_err = |source| SecretError::Read {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(Self::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > Self::MAX_FILE_BYTES {
            return Err(SecretError::TooLarge {
                path: shown,
                max: Self::MAX_FILE_BYTES,
            });
        }
        Self::new(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}
