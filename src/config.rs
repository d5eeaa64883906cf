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
        }
    }
}

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
    /// Bytes of hints kept per target; past it, hints are refused and counted.
    pub max_hint_bytes: u64,
    pub max_hint_age: Duration,
    pub handoff_interval: Duration,
    pub anti_entropy_interval: Duration,
    /// A tombstone every replica holds is removed once this has passed since it was
    /// written. Hints are capped at this age, so none can bring a removed key back.
    pub tombstone_grace: Duration,
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
            max_hint_bytes: 256 * 1024 * 1024,
            max_hint_age: Duration::from_secs(3600),
            handoff_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(60),
            tombstone_grace: Duration::from_secs(3600),
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
    pub replication: Replication,
    /// Default time a request may take when it does not say (`timeout_ms`).
    pub request_timeout: Duration,
    pub limits: Limits,
    pub blocking: BlockingMode,
    /// Seeds the node's random choices (its id, on first start). `None` draws from the
    /// OS; the simulation sets it so that a seed replays the same run.
    pub rng_seed: Option<u64>,
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
            replication: Replication { n: 3, r: 2, w: 2 },
            request_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            blocking: BlockingMode::Threaded,
            rng_seed: None,
        }
    }
}
