//! `GET /metrics`: this node's counters in the Prometheus text format.
//!
//! The counters live where they are counted (`RpcStats`, `StorageStats`,
//! `ReplicationStats`); a scrape reads them through one collector, so nothing is counted
//! twice and the hot paths only bump atomics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::AppState;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "debug",
    responses(
        (status = 200, description = "This node's counters and gauges, OpenMetrics text", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 500, description = "`internal`: the metrics could not be encoded", body = super::error::ErrorBody),
    ),
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut registry = Registry::with_prefix("ringkv");
    registry.register_collector(Box::new(NodeCollector(state)));
    let mut body = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut body, &registry).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics could not be encoded",
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response())
}

struct NodeCollector(Arc<AppState>);

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
        let state = &self.0;
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
        )
    }
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
