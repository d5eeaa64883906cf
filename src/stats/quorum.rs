//! Client requests that missed their quorum (R or W), by operation and by how: too few
//! replicas answered, or the request ran out of time first. `/debug/replication` shows
//! them as `quorum_failures`, `/metrics` as `ringkv_quorum_failures_total`.

use serde::Serialize;

use super::Counter;

/// One operation's misses.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Missed {
    /// Too few replicas answered (or, for a listing, some ring range had none).
    pub unavailable: Counter,
    /// The request's timeout passed before enough replicas answered.
    pub timeout: Counter,
}

/// Misses of the requests this node coordinated (forwarded writes included: the node they
/// were forwarded to counts them).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct QuorumFailures {
    pub get: Missed,
    pub put: Missed,
    pub delete: Missed,
    pub list: Missed,
}

impl QuorumFailures {
    /// Every counter as (operation, reason, count), for `/metrics`.
    pub fn each(&self) -> [(&'static str, &'static str, u64); 8] {
        let pair = |op, m: &Missed| {
            [
                (op, "unavailable", m.unavailable.get()),
                (op, "timeout", m.timeout.get()),
            ]
        };
        let [a, b] = pair("get", &self.get);
        let [c, d] = pair("put", &self.put);
        let [e, f] = pair("delete", &self.delete);
        let [g, h] = pair("list", &self.list);
        [a, b, c, d, e, f, g, h]
    }
}
