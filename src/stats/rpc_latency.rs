//! Internode call latency by peer and by message: `ringkv_rpc_call_duration_seconds`.
//!
//! The peer label is the address the call went to (what the RPC client knows). The
//! cluster's membership bounds the peers a node calls, and [`MAX_PEER_SERIES`] bounds
//! them here again: past it, calls to further peers share the `peer="other"` series, so
//! addresses that come and go (nodes replaced over months) cannot grow the export. The
//! message label is one of [`KINDS`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use super::histogram::LazyLatency;
use crate::rpc::Request;

/// Peers with series of their own; the rest are `other`.
pub const MAX_PEER_SERIES: usize = 64;

/// The `message` label values, in `Request`'s order.
pub const KINDS: [&str; 11] = [
    "ping",
    "read",
    "merge",
    "hint",
    "forward",
    "scan",
    "summaries",
    "digests",
    "read_many",
    "drop_if_digest",
    "departed",
];

fn kind(request: &Request) -> usize {
    match request {
        Request::Ping => 0,
        Request::Read { .. } => 1,
        Request::Merge { .. } => 2,
        Request::Hint { .. } => 3,
        Request::Forward(_) => 4,
        Request::Scan(_) => 5,
        Request::Summaries { .. } => 6,
        Request::Digests { .. } => 7,
        Request::ReadMany { .. } => 8,
        Request::DropIfDigest { .. } => 9,
        Request::Departed { .. } => 10,
    }
}

/// One peer's histograms, one per message kind, made on first use.
#[derive(Debug, Default)]
struct PeerSeries([LazyLatency; KINDS.len()]);

/// The latencies of every call this node made that got a reply. Failed calls are not
/// observed (a refused dial would look fast); `ringkv_rpc_call_failures_total` and
/// `ringkv_rpc_call_timeouts_total` count them.
#[derive(Debug, Default)]
pub struct RpcLatency {
    // A std lock: held for a lookup or an insert, never across an await. Writers only
    // take it the first time a peer is called.
    peers: RwLock<HashMap<SocketAddr, Arc<PeerSeries>>>,
    other: PeerSeries,
}

impl RpcLatency {
    /// One call to `peer` that got its reply after `elapsed`.
    pub fn observe(&self, peer: SocketAddr, request: &Request, elapsed: Duration) {
        let kind = kind(request);
        let known = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned();
        let series = match known {
            Some(s) => s,
            None => {
                let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
                if peers.len() >= MAX_PEER_SERIES && !peers.contains_key(&peer) {
                    drop(peers);
                    self.other.0[kind].observe(elapsed);
                    return;
                }
                peers.entry(peer).or_default().clone()
            }
        };
        series.0[kind].observe(elapsed);
    }

    /// Every histogram that moved, as (peer label, message label, histogram), peers in
    /// address order and `other` last.
    pub fn each(
        &self,
        mut f: impl FnMut(&str, &'static str, &Histogram) -> std::fmt::Result,
    ) -> std::fmt::Result {
        let mut peers: Vec<(SocketAddr, Arc<PeerSeries>)> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, s)| (*a, s.clone()))
            .collect();
        peers.sort_by_key(|(a, _)| *a);
        let all = peers
            .iter()
            .map(|(a, s)| (a.to_string(), &s.0))
            .chain(std::iter::once(("other".to_owned(), &self.other.0)));
        for (peer, series) in all {
            for (kind, h) in series.iter().enumerate() {
                if let Some(h) = h.get() {
                    f(&peer, KINDS[kind], h)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &RpcLatency) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        l.each(|p, k, _| {
            out.push((p.to_owned(), k));
            Ok(())
        })
        .expect("no error");
        out
    }

    #[test]
    fn peers_past_the_bound_share_one_series() {
        let l = RpcLatency::default();
        let ms = Duration::from_millis(1);
        for i in 0..(MAX_PEER_SERIES as u16 + 10) {
            let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i));
            l.observe(addr, &Request::Ping, ms);
        }
        let first = SocketAddr::from(([127, 0, 0, 1], 10_000));
        l.observe(first, &Request::Read { key: "k".into() }, ms);
        let got = labels(&l);
        assert_eq!(got.len(), MAX_PEER_SERIES + 2, "{got:?}");
        assert_eq!(got[0], ("127.0.0.1:10000".to_owned(), "ping"));
        assert_eq!(got[1], ("127.0.0.1:10000".to_owned(), "read"));
        assert_eq!(got.last(), Some(&("other".to_owned(), "ping")));
    }
}
