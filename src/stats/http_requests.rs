//! Client requests by operation and status, with their latency: what `/metrics` exports
//! as `ringkv_http_requests_total` and `ringkv_http_request_duration_seconds`.
//!
//! Every label comes from a fixed set, so the series are bounded whatever clients send:
//! the operation is one of [`Op`] (never a key, never a path), the status one of the codes
//! this API answers, or its class past them. Recording is an array index and an atomic
//! add, plus the histogram's short lock; nothing is allocated per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use prometheus_client::metrics::histogram::Histogram;

use super::histogram::LazyLatency;

/// What a request asked for, by route and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
    Head,
    /// `GET /kv`.
    List,
    /// `POST /batch`.
    Batch,
    /// `/admin/…`.
    Admin,
    /// `/debug/…`, `/cluster`, `/metrics`, `/openapi.json`.
    Debug,
    /// Probes, the dashboard, unknown routes, and a wrong method on a known one.
    Other,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::Head,
        Op::List,
        Op::Batch,
        Op::Admin,
        Op::Debug,
        Op::Other,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Head => "head",
            Op::List => "list",
            Op::Batch => "batch",
            Op::Admin => "admin",
            Op::Debug => "debug",
            Op::Other => "other",
        }
    }

    /// The operation of a request to `path` (the raw path, before any decoding).
    pub fn of(method: &Method, path: &str) -> Op {
        if let Some(key) = path.strip_prefix("/kv/") {
            if key.is_empty() {
                return Op::Other;
            }
            return match *method {
                Method::GET => Op::Get,
                Method::PUT => Op::Put,
                Method::DELETE => Op::Delete,
                Method::HEAD => Op::Head,
                _ => Op::Other,
            };
        }
        match path {
            "/kv" if method == Method::GET => Op::List,
            "/batch" if method == Method::POST => Op::Batch,
            "/cluster" | "/metrics" | "/openapi.json" => Op::Debug,
            _ if path.starts_with("/admin/") => Op::Admin,
            _ if path.starts_with("/debug/") => Op::Debug,
            _ => Op::Other,
        }
    }

    /// A KV API operation: what the dashboard's window counts, so that its own polling
    /// (`/cluster`, `/debug/…`) does not show as load.
    pub fn is_kv(self) -> bool {
        matches!(
            self,
            Op::Get | Op::Put | Op::Delete | Op::Head | Op::List | Op::Batch
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The statuses this API answers (`src/http`, hyper's own, the overload and auth
/// layers), each its own series; any other falls into its class's.
const CODES: [(u16, &str); 26] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (300, "300"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (409, "409"),
    (411, "411"),
    (412, "412"),
    (413, "413"),
    (414, "414"),
    (415, "415"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (503, "503"),
    (504, "504"),
    (507, "507"),
];

/// Status classes: `1xx` to `5xx`, then anything outside 100–599.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Counter slots per operation: the listed codes, then one per class.
const SLOTS: usize = CODES.len() + CLASSES.len();

fn class_of(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => CLASSES.len() - 1,
    }
}

fn slot_of(status: u16) -> usize {
    // 26 entries: a linear scan is as fast as anything cleverer.
    match CODES.iter().position(|(c, _)| *c == status) {
        Some(i) => i,
        None => CODES.len() + class_of(status),
    }
}

fn slot_label(slot: usize) -> &'static str {
    match CODES.get(slot) {
        Some((_, name)) => name,
        None => CLASSES[(slot - CODES.len()).min(CLASSES.len() - 1)],
    }
}

/// The node's request counts and latencies.
#[derive(Debug)]
pub struct HttpMetrics {
    counts: [[AtomicU64; SLOTS]; Op::ALL.len()],
    durations: [[LazyLatency; CLASSES.len()]; Op::ALL.len()],
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            durations: std::array::from_fn(|_| std::array::from_fn(|_| LazyLatency::default())),
        }
    }
}

impl HttpMetrics {
    /// One answered request: its operation, status, and the time from its arrival at the
    /// router to its response head.
    pub fn record(&self, op: Op, status: u16, elapsed: Duration) {
        // Relaxed: each counter is independent, read only for reporting.
        self.counts[op.index()][slot_of(status)].fetch_add(1, Ordering::Relaxed);
        self.durations[op.index()][class_of(status)].observe(elapsed);
    }

    /// Requests so far as (operation, status label, count), for the series that moved.
    pub fn counts(&self) -> impl Iterator<Item = (Op, &'static str, u64)> + '_ {
        Op::ALL.into_iter().flat_map(move |op| {
            self.counts[op.index()]
                .iter()
                .enumerate()
                .filter_map(move |(slot, n)| {
                    let n = n.load(Ordering::Relaxed);
                    (n > 0).then(|| (op, slot_label(slot), n))
                })
        })
    }

    /// Latency histograms as (operation, status class, histogram), for those that moved.
    pub fn durations(&self) -> impl Iterator<Item = (Op, &'static str, &Histogram)> + '_ {
        Op::ALL.into_iter().flat_map(move |op| {
            self.durations[op.index()]
                .iter()
                .enumerate()
                .filter_map(move |(class, h)| Some((op, CLASSES[class], h.get()?)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_the_route_and_method_never_the_key() {
        let cases = [
            (Method::GET, "/kv/a%2Fb", Op::Get),
            (Method::PUT, "/kv/k", Op::Put),
            (Method::DELETE, "/kv/k", Op::Delete),
            (Method::HEAD, "/kv/k", Op::Head),
            (Method::POST, "/kv/k", Op::Other),
            (Method::GET, "/kv/", Op::Other),
            (Method::GET, "/kv", Op::List),
            (Method::PUT, "/kv", Op::Other),
            (Method::POST, "/batch", Op::Batch),
            (Method::GET, "/batch", Op::Other),
            (Method::POST, "/admin/leave", Op::Admin),
            (Method::GET, "/debug/replication", Op::Debug),
            (Method::GET, "/metrics", Op::Debug),
            (Method::GET, "/cluster", Op::Debug),
            (Method::GET, "/health", Op::Other),
            (Method::GET, "/", Op::Other),
            (Method::GET, "/kvx", Op::Other),
        ];
        for (method, path, op) in cases {
            assert_eq!(Op::of(&method, path), op, "{method} {path}");
        }
    }

    #[test]
    fn statuses_are_bounded_to_known_codes_and_classes() {
        let m = HttpMetrics::default();
        for status in [200, 200, 404, 299, 599, 600, 0, 999] {
            m.record(Op::Get, status, Duration::from_millis(1));
        }
        let counts: Vec<_> = m.counts().collect();
        assert_eq!(
            counts,
            vec![
                (Op::Get, "200", 2),
                (Op::Get, "404", 1),
                (Op::Get, "2xx", 1),
                (Op::Get, "5xx", 1),
                (Op::Get, "other", 3),
            ]
        );
        let classes: Vec<_> = m.durations().map(|(op, c, _)| (op, c)).collect();
        assert_eq!(
            classes,
            vec![
                (Op::Get, "2xx"),
                (Op::Get, "4xx"),
                (Op::Get, "5xx"),
                (Op::Get, "other")
            ]
        );
    }
}
