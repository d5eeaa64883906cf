//! `GET /metrics`: this node's counters, gauges and histograms, in OpenMetrics or, when
//! the scraper asks for it, the Prometheus text format 0.0.4 ([`format`]).
//!
//! The figures live where they are counted (`RpcStats`, `StorageStats`,
//! `ReplicationStats`, `HttpMetrics`, the RPC client's `RpcLatency`); a scrape reads them
//! through collectors, so nothing is counted twice and the hot paths only bump atomics
//! or a histogram. Every label value comes from a bounded set: operations, status codes,
//! message kinds, peer addresses (capped), never a key.
//!
//! Families under `ringkv_`, plus the standard `process_*` ones ([`process`]).

mod format;
mod process;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::error::ApiError;
use super::AppState;
use crate::config::{BlockingMode, StorageKind};
use crate::stats::HttpMetrics;
pub use format::Format;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "debug",
    responses(
        (status = 200, description = "This node's counters, gauges and histograms: OpenMetrics, or the Prometheus text format 0.0.4 when `Accept` prefers `text/plain`",
            content(
                (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                (String = "text/plain; version=0.0.4; charset=utf-8"),
            )),
        (status = 500, description = "`internal`: the metrics could not be encoded", body = super::error::ErrorBody),
    ),
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let outside = gather(&state).await;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector(outside.process)));
    registry
        .sub_registry_with_prefix("ringkv")
        .register_collector(Box::new(NodeCollector {
            state,
            storage_bytes: outside.storage_bytes,
        }));
    let mut body = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut body, &registry).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics could not be encoded",
        )
    })?;
    if format == Format::Text {
        body = format::to_text(&body);
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        body,
    )
        .into_response())
}

/// What a scrape reads from the filesystem rather than from memory.
struct Outside {
    process: process::Process,
    storage_bytes: Option<u64>,
}

/// Reads `/proc/self` and sizes the data dir, on the blocking pool when the node runs
/// its storage work there (a few dozen small reads, but reads of files all the same).
async fn gather(state: &AppState) -> Outside {
    let dir = (state.config.storage == StorageKind::Redb).then(|| state.config.data_dir.clone());
    let read = move || Outside {
        process: process::read(),
        storage_bytes: dir.as_deref().map(dir_bytes),
    };
    match state.config.blocking {
        BlockingMode::Threaded => match tokio::task::spawn_blocking(read).await {
            Ok(outside) => outside,
            Err(_) => Outside {
                process: process::Process::default(),
                storage_bytes: None,
            },
        },
        BlockingMode::Inline => read(),
    }
}

/// Entries of the data dir looked at most, and how deep: redb's file, the write-ahead
/// log's segments and the identity files are a handful, a stray tree must not be walked.
const MAX_DIR_ENTRIES: usize = 4096;
const MAX_DIR_DEPTH: usize = 2;

/// The bytes of the regular files under `dir` (their sizes, as `ls -l` shows them).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((path, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                total = total.saturating_add(meta.len());
            } else if meta.is_dir() && depth < MAX_DIR_DEPTH {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    total
}

/// The standard process families, unprefixed as every exporter names them.
#[derive(Debug)]
struct ProcessCollector(process::Process);

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let p = &self.0;
        let e = &mut enc;
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(
                "process_cpu",
                "User and system CPU time this process spent, in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 6] = [
            (
                "process_resident_memory",
                "Resident set size (VmRSS), in bytes",
                Some(Unit::Bytes),
                p.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size (VmSize), in bytes",
                Some(Unit::Bytes),
                p.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                p.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors",
                None,
                p.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "Threads of this process",
                None,
                p.threads.map(|v| v as f64),
            ),
            (
                "process_start_time",
                "When the process started, in seconds since the Unix epoch",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(e.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

struct NodeCollector {
    state: Arc<AppState>,
    storage_bytes: Option<u64>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let state = &self.state;
        let rpc = state.rpc_stats.snapshot();
        let e = &mut enc;
        counter(
            e,
            "rpc_sent_bytes",
            "Internode bytes written, frame prefix included",
            rpc.bytes_sent,
        )?;
        counter(
            e,
            "rpc_received_bytes",
            "Internode bytes read, frame prefix included",
            rpc.bytes_received,
        )?;
        counter(e, "rpc_calls", "Internode calls this node made", rpc.calls)?;
        counter(
            e,
            "rpc_call_failures",
            "Internode calls that failed",
            rpc.failures,
        )?;
        counter(
            e,
            "rpc_call_timeouts",
            "Internode calls that timed out",
            rpc.timeouts,
        )?;
        counter(
            e,
            "rpc_dials",
            "Outbound internode connections opened",
            rpc.dials,
        )?;
        counter(
            e,
            "rpc_requests_served",
            "Internode requests this node answered",
            rpc.requests_served,
        )?;
        counter(
            e,
            "rpc_protocol_errors",
            "Connections closed for an invalid frame",
            rpc.protocol_errors,
        )?;
        counter(
            e,
            "rpc_idle_closed",
            "Inbound internode connections closed for idleness",
            rpc.idle_closed,
        )?;
        rpc_security(e, &rpc)?;
        shed_and_tls(e, state)?;

        let storage = state.local.storage_stats();
        counter(
            e,
            "storage_commits",
            "Write transactions committed",
            storage.commits.get(),
        )?;
        counter(
            e,
            "storage_fsyncs",
            "Commits made durable with an fsync",
            storage.fsyncs.get(),
        )?;
        counter(
            e,
            "storage_mutations",
            "Mutations committed, over every batch",
            storage.mutations.get(),
        )?;
        counter(
            e,
            "merges_over_sibling_cap",
            "Merges from peers stored although they left a key over the sibling cap",
            storage.merges_over_sibling_cap.get(),
        )?;
        counter(
            e,
            "corrupt_records",
            "Stored records found corrupt and treated as missing here",
            storage.corrupt_records.get(),
        )?;

        let rep = &state.stats;
        counter(
            e,
            "writes_acknowledged",
            "Client writes answered as stored at W",
            rep.writes_acknowledged.get(),
        )?;
        counter(
            e,
            "reads_served",
            "Client reads answered",
            rep.reads_served.get(),
        )?;
        counter(
            e,
            "read_rpcs_sent",
            "Internode read requests this node sent for the reads it coordinated",
            rep.read_rpcs_sent.get(),
        )?;
        counter(
            e,
            "read_speculative_retries",
            "Reads that asked one more replica after the speculative-retry delay",
            rep.read_speculative_retries.get(),
        )?;
        counter(
            e,
            "reads_asking_all",
            "Reads that asked every replica (R = N, or --read-repair-chance)",
            rep.reads_asking_all.get(),
        )?;
        if let Some(gossip) = state.readiness.gossip() {
            counter(
                e,
                "gossip_restarts",
                "Times gossip's task ended and was started again",
                gossip.restarts.get(),
            )?;
            let guard = &gossip.guard;
            gauge(
                e,
                "gossip_tracked_ids",
                "Node ids gossip tracks, as of the last round",
                i64::try_from(guard.tracked()).unwrap_or(i64::MAX),
            )?;
            counter(
                e,
                "gossip_dropped_too_many_ids",
                "Gossip datagrams dropped for naming more node ids than --max-gossip-members",
                guard.dropped_too_many_ids.get(),
            )?;
            counter(
                e,
                "gossip_dropped_not_member",
                "Gossip datagrams from non-members dropped while the id bound was restricted",
                guard.dropped_not_member.get(),
            )?;
            counter(
                e,
                "gossip_over_id_bound",
                "Times the ids gossip tracked passed --max-gossip-members",
                guard.over_bound.get(),
            )?;
            gauge(
                e,
                "gossip_tracked_bytes",
                "Key and value bytes gossip holds, as of the last round",
                i64::try_from(guard.tracked_bytes()).unwrap_or(i64::MAX),
            )?;
            counter(
                e,
                "gossip_over_byte_bound",
                "Times the key and value bytes gossip held passed their bound (16 KiB per --max-gossip-members id)",
                guard.over_byte_bound.get(),
            )?;
        }
        counter(
            e,
            "peer_requests_refused",
            "Requests from peers refused for breaking a bound or an invariant",
            rep.peer_requests_refused.get(),
        )?;
        counter(
            e,
            "writes_forwarded",
            "Writes forwarded to a replica",
            rep.forwarded.get(),
        )?;
        counter(
            e,
            "read_repairs",
            "Replicas brought up to date after a read",
            rep.read_repairs.get(),
        )?;
        counter(
            e,
            "hints_stored",
            "Hints stored as a stand-in",
            rep.hints_stored.get(),
        )?;
        counter(
            e,
            "hints_delivered",
            "Hints handed back to their target",
            rep.hints_delivered.get(),
        )?;
        counter(
            e,
            "replica_write_failures",
            "Replica writes that fell back to a hint",
            rep.replica_write_failures.get(),
        )?;
        counter(
            e,
            "ae_keys_pulled",
            "Keys taken from fellow replicas by anti-entropy",
            rep.ae_keys_pulled.get(),
        )?;
        counter(
            e,
            "ae_keys_pushed",
            "Keys sent to fellow replicas by anti-entropy",
            rep.ae_keys_pushed.get(),
        )?;

        let pending: u64 = state
            .local
            .hint_ledger()
            .all()
            .values()
            .map(|p| p.count)
            .sum();
        gauge(
            e,
            "hints_pending",
            "Hints held here for other nodes",
            pending as i64,
        )?;
        let view = state.coord.view();
        gauge(
            e,
            "ring_disagreements",
            "Live members whose gossiped ring has differed from this node's for more than a few gossip rounds",
            i64::try_from(view.disagreements.len()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "writable",
            "1 while this node's storage takes writes (0: disk full, or an fsync failed)",
            i64::from(state.local.write_state().takes_writes()),
        )?;
        let ready = i64::from(super::ready_check(state).is_ok());
        gauge(
            e,
            "ready",
            "1 once the node has joined and knows the ring",
            ready,
        )?;
        replication(e, rep)?;
        members(e, &view)?;
        requests(e, &state.http_metrics)?;
        rpc_latency(e, state)?;
        storage_families(e, state, self.storage_bytes)
    }
}

/// Labelled families: a descriptor, then one sample set per label set.
fn histogram_family<'h, L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in rows {
        h.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in rows {
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// What `/debug/replication` counts that the families above do not, and quorum misses.
fn replication(
    e: &mut DescriptorEncoder,
    rep: &crate::stats::ReplicationStats,
) -> std::fmt::Result {
    counter(
        e,
        "hints_refused",
        "Hints refused because their target's bound (--max-hint-bytes) was full",
        rep.hints_refused.get(),
    )?;
    counter(
        e,
        "hints_expired",
        "Hints dropped for being older than --max-hint-age",
        rep.hints_expired.get(),
    )?;
    counter(
        e,
        "ae_rounds",
        "Anti-entropy timer rounds",
        rep.ae_rounds.get(),
    )?;
    counter(
        e,
        "ae_exchanges",
        "Anti-entropy range exchanges completed with a fellow replica",
        rep.ae_exchanges.get(),
    )?;
    counter(
        e,
        "keys_handed_off",
        "Keys this node no longer owns that it moved to their owners",
        rep.keys_moved.get(),
    )?;
    counter(
        e,
        "tombstones_collected",
        "Tombstones removed after every replica held them past the grace period",
        rep.tombstones_collected.get(),
    )?;
    counter_family(
        e,
        "quorum_failures",
        "Client requests this node coordinated that missed their quorum (R or W), by operation and reason (unavailable: too few replicas answered; timeout)",
        rep.quorum_failures
            .each()
            .map(|(op, reason, n)| ([("op", op), ("reason", reason)], n)),
    )
}

/// Members by the failure detector's verdict; this node counts as live.
fn members(
    e: &mut DescriptorEncoder,
    view: &crate::cluster::membership::ClusterView,
) -> std::fmt::Result {
    let live = view
        .members
        .iter()
        .filter(|(id, m)| **id == view.self_id || m.live)
        .count();
    let dead = view.members.len().saturating_sub(live);
    let mut family = e.encode_descriptor(
        "members",
        "Ring members by state: live or dead as this node's failure detector sees them",
        None,
        MetricType::Gauge,
    )?;
    for (state, n) in [("live", live), ("dead", dead)] {
        ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
            .encode(family.encode_family(&[("state", state)])?)?;
    }
    Ok(())
}

fn requests(e: &mut DescriptorEncoder, requests: &HttpMetrics) -> std::fmt::Result {
    counter_family(
        e,
        "http_requests",
        "HTTP requests answered, by operation (get, put, delete, head, list, batch, admin, debug, other) and status code",
        requests
            .counts()
            .map(|(op, code, n)| ([("op", op.name()), ("code", code)], n)),
    )?;
    histogram_family(
        e,
        "http_request_duration",
        "HTTP request latency from arrival at the router to the response head, by operation and status class",
        Some(&Unit::Seconds),
        requests
            .durations()
            .map(|(op, class, h)| ([("op", op.name()), ("class", class)], h)),
    )
}

fn rpc_latency(e: &mut DescriptorEncoder, state: &AppState) -> std::fmt::Result {
    let mut family = e.encode_descriptor(
        "rpc_call_duration",
        "Internode calls that got a reply, by peer (its RPC address; past 64 peers, other) and message, from the call to its reply",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    state.coord.peers().rpc.latency().each(|peer, message, h| {
        h.encode(family.encode_family(&[("peer", peer), ("message", message)])?)
    })
}

fn storage_families(
    e: &mut DescriptorEncoder,
    state: &AppState,
    bytes: Option<u64>,
) -> std::fmt::Result {
    let keys = state
        .local
        .tree()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .root()
        .count;
    gauge(
        e,
        "storage_keys",
        "Keys stored on this replica, tombstones included: the count the anti-entropy tree maintains with every commit (exact, not a scan)",
        i64::try_from(keys).unwrap_or(i64::MAX),
    )?;
    if let Some(bytes) = bytes {
        let g = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        g.encode(e.encode_descriptor(
            "storage",
            "Bytes of the files in the data dir (the redb file, the write-ahead log, the identity), by their sizes",
            Some(&Unit::Bytes),
            g.metric_type(),
        )?)?;
    }
    let storage = state.local.storage_stats();
    storage.batch_sizes.histogram().encode(e.encode_descriptor(
        "storage_batch_mutations",
        "Mutations per committed batch: what group commit gathers into one transaction",
        None,
        MetricType::Histogram,
    )?)?;
    storage
        .commit_latency
        .histogram()
        .encode(e.encode_descriptor(
        "storage_commit_duration",
        "Time to commit one batch; with --fsync always and no write-ahead log, its fsync is in it",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?)?;
    storage.sync_latency.histogram().encode(e.encode_descriptor(
        "storage_fsync_duration",
        "Time of the fsyncs made apart from a commit: periodic, the write-ahead log's, after a staged write, the last one",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?)
}

/// Cluster authentication and the RPC read bounds (issue 13).
fn rpc_security(e: &mut DescriptorEncoder, rpc: &crate::rpc::RpcStatsSnapshot) -> std::fmt::Result {
    counter(
        e,
        "rpc_auth_refused",
        "Inbound internode connections refused by the cluster handshake",
        rpc.auth_refused,
    )?;
    counter(
        e,
        "rpc_auth_failed_dials",
        "Outbound internode connections whose peer failed the cluster handshake",
        rpc.auth_failed_dials,
    )?;
    counter(
        e,
        "rpc_frame_timeouts",
        "Internode connections closed because a frame did not finish arriving in time",
        rpc.frame_timeouts,
    )?;
    counter(
        e,
        "gossip_dropped_short",
        "Gossip datagrams dropped: too short to carry a signature",
        rpc.gossip_short,
    )?;
    counter(
        e,
        "gossip_dropped_bad_tag",
        "Gossip datagrams dropped: the signature does not verify",
        rpc.gossip_bad_tag,
    )?;
    counter(
        e,
        "gossip_dropped_stale",
        "Gossip datagrams dropped: signed, but stamped outside the allowed clock skew",
        rpc.gossip_stale,
    )?;
    counter(
        e,
        "gossip_unsent_oversize",
        "Gossip datagrams not sent: too large for one UDP datagram once signed",
        rpc.gossip_oversize,
    )
}

/// Requests shed 503 `overloaded`, one series per bound; failed TLS handshakes.
fn shed_and_tls(e: &mut DescriptorEncoder, state: &AppState) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let c = ConstCounter::new(0u64);
    let mut family = e.encode_descriptor(
        "http_shed",
        "Requests answered 503 overloaded, by the bound that was full",
        None,
        c.metric_type(),
    )?;
    for (reason, n) in [
        ("in_flight", state.shed.in_flight.load(Relaxed)),
        ("body_bytes", state.shed.body_bytes.load(Relaxed)),
    ] {
        ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    counter(
        e,
        "tls_handshake_failures",
        "Accepted connections (HTTP or RPC) whose TLS handshake failed or timed out",
        state.tls.handshake_failures.load(Relaxed),
    )
}
