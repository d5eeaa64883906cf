//! The node's configuration, independent of how it was given (CLI flags, env, tests).

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
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub storage: StorageKind,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub replication: Replication,
    /// Default time a request may take when it does not say (`timeout_ms`).
    pub request_timeout: Duration,
    pub limits: Limits,
    pub blocking: BlockingMode,
}

impl NodeConfig {
    /// A config for tests: in-memory, default limits.
    pub fn for_test() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Memory,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            replication: Replication { n: 3, r: 2, w: 2 },
            request_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            blocking: BlockingMode::Threaded,
        }
    }
}
