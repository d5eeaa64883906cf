//! Counters of what the replication machinery did, shown in `/debug/replication`, and
//! the request, RPC and storage histograms `/metrics` exports, and the rolling window
//! of request latencies the dashboard shows ([`requests`]).

pub mod histogram;
pub mod http_requests;
pub mod quorum;
pub mod requests;
pub mod rpc_latency;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

pub use histogram::{LatencyHistogram, SizeHistogram};
pub use http_requests::HttpMetrics;
pub use quorum::QuorumFailures;
pub use rpc_latency::RpcLatency;

/// A monotonically increasing count.
#[derive(Debug, Default, utoipa::ToSchema)]
#[schema(value_type = u64)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        // Relaxed: each counter is independent, read only for reporting.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ReplicationStats {
    /// Hints this node stored as a stand-in.
    pub hints_stored: Counter,
    /// Hints refused because the target's bound (`--max-hint-bytes`) was full.
    pub hints_refused: Counter,
    /// Hints handed back to their target and deleted here.
    pub hints_delivered: Counter,
    /// Hints dropped for being older than `--max-hint-age`.
    pub hints_expired: Counter,
    /// Replicas brought up to date after a read.
    pub read_repairs: Counter,
    /// Writes this node forwarded to a replica.
    pub forwarded: Counter,
    /// Replica writes that failed and fell back to a hint.
    pub replica_write_failures: Counter,
    /// Anti-entropy timer rounds.
    pub ae_rounds: Counter,
    /// Range exchanges completed with a fellow replica.
    pub ae_exchanges: Counter,
    /// Keys this node took from, and sent to, its fellow replicas in exchanges.
    pub ae_keys_pulled: Counter,
    pub ae_keys_pushed: Counter,
    /// Keys this node no longer owns that it moved to their owners. Named
    /// `keys_handed_off` in `/debug/replication`, as it always was: scripts read it.
    #[serde(rename = "keys_handed_off")]
    pub keys_moved: Counter,
    /// Tombstones removed after every replica held them past the grace period.
    pub tombstones_collected: Counter,
    /// Client writes (puts and deletes) this node answered as stored at W, forwarded
    /// ones included: the denominator of fsyncs and internode bytes per write.
    pub writes_acknowledged: Counter,
    /// Client reads this node answered.
    pub reads_served: Counter,
    /// Read requests this node sent to peers, for its own reads (client GETs, the read
    /// before a delete, catch-up reads): over `reads_served`, messages per read.
    pub read_rpcs_sent: Counter,
    /// Reads that asked one more replica because those asked were slower than the
    /// speculative-retry delay.
    pub read_speculative_retries: Counter,
    /// Reads that asked every replica: R = N, or drawn by `--read-repair-chance`.
    pub reads_asking_all: Counter,
    /// Requests from peers refused by `rpc::bounds::check` (a value over the size limit,
    /// a malformed set, a parameter out of range): none stored anything.
    pub peer_requests_refused: Counter,
    /// Client requests this node coordinated that missed their quorum, by operation.
    pub quorum_failures: QuorumFailures,
}

/// What the group-commit writer did. Commits that fsynced, over acknowledged writes, is
/// the figure group commit exists to bring down.
#[derive(Debug, Default, Serialize)]
pub struct StorageStats {
    /// Transactions committed.
    pub commits: Counter,
    /// Commits that were fsynced before their writes were answered (`--fsync always`),
    /// plus the timer's syncs (`--fsync periodic`) and the final one.
    pub fsyncs: Counter,
    /// Mutations committed, over every batch.
    pub mutations: Counter,
    /// Merges from peers that left a key over the sibling cap (stored anyway: they were
    /// acknowledged elsewhere).
    pub merges_over_sibling_cap: Counter,
    /// Stored records found corrupt (a failed checksum or decode, or a storage engine
    /// error or panic while reading one): each was treated as missing here.
    pub corrupt_records: Counter,
    /// Mutations per committed batch: how much group commit groups.
    #[serde(skip)]
    pub batch_sizes: SizeHistogram,
    /// Time to commit one batch, its fsync included when the commit is durable by itself
    /// (`--fsync always` without a write-ahead log and without a staged write).
    #[serde(skip)]
    pub commit_latency: LatencyHistogram,
    /// Time of the fsyncs made apart from a commit: the periodic timer's, the log's, the
    /// one after a staged commit, the final one.
    #[serde(skip)]
    pub sync_latency: LatencyHistogram,
}

impl StorageStats {
    /// A batch of `mutations` committed; its commit started at `started`.
    pub fn committed(&self, mutations: u64, started: std::time::Instant) {
        self.commits.inc();
        self.mutations.add(mutations);
        self.batch_sizes.observe(mutations);
        self.commit_latency.observe(started.elapsed());
    }

    /// An fsync apart from a commit succeeded; it started at `started`.
    pub fn synced(&self, started: std::time::Instant) {
        self.fsyncs.inc();
        self.sync_latency.observe(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/debug/replication` keeps the names scripts and tests read, whatever the fields
    /// are called in Rust.
    #[test]
    fn moved_keys_keep_their_json_name() {
        let stats = ReplicationStats::default();
        stats.keys_moved.add(3);
        let json = serde_json::to_value(&stats).expect("counters serialize");
        assert_eq!(json["keys_handed_off"], 3);
        assert!(json.get("keys_moved").is_none());
    }
}
