//! The internode protocol: one request enum, one response enum, carried in frames of
//! `[u32 length][u8 PROTOCOL_VERSION][msgpack Envelope]` (see `rpc::frame`).

use serde::{Deserialize, Serialize};

use super::remote_error::RemoteError;
use crate::merkle::{Interval, Summary};
use crate::quorum::Quorum;
use crate::version::{Dot, Payload, SiblingSet, VersionVector};

/// Bumped on any incompatible change; a peer speaking another version is disconnected.
pub const PROTOCOL_VERSION: u8 = 3;

/// A request or a response, with the id that pairs them on a multiplexed connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
    /// The client request this call works for (`telemetry`), so that the replica logs
    /// its part under the same id. Last, and left out when absent: an envelope without
    /// one is the two-element array every peer of this protocol version reads. A peer that
    /// predates the field cannot read a request that carries one (rmp-serde refuses the
    /// longer array), so in a cluster mid-upgrade traced calls to older nodes fail like
    /// calls to a down node: hints and anti-entropy cover them. Responses never carry it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::telemetry::deserialize_peer_request_id"
    )]
    pub trace: Option<crate::telemetry::RequestId>,
}

impl<T> Envelope<T> {
    /// An envelope that names no client request.
    pub fn new(id: u64, body: T) -> Envelope<T> {
        Envelope {
            id,
            body,
            trace: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and identity check.
    Ping,
    /// This node's stored copy of a key.
    Read { key: String },
    /// Merge these sets into this node's copies (replication, read repair, hint delivery).
    /// Answered once durable under the node's fsync policy.
    Merge { entries: Vec<(String, SiblingSet)> },
    /// Keep a hint for `target`, a replica that is down, until it can be handed back.
    Hint {
        target: u64,
        key: String,
        set: SiblingSet,
    },
    /// Coordinate a write for a node that is not in the key's preference list.
    Forward(ForwardedWrite),
    /// Up to `limit` of this node's stored keys in a range, for listings.
    Scan(ScanRange),
    /// Anti-entropy: this node's summary (hash, count) of each ring-position interval.
    Summaries { intervals: Vec<Interval> },
    /// Anti-entropy: this node's keys in an interval with their digests, in position order,
    /// starting after `after` (a key) when given.
    Digests {
        interval: Interval,
        after: Option<String>,
        limit: usize,
    },
    /// This node's copies of several keys. The reply may cover only the first of them
    /// (it stops at a byte budget): the caller asks again for the rest.
    ReadMany { keys: Vec<String> },
    /// Drop these keys if their stored digest is still the one given: tombstones every
    /// replica holds (GC), or data this node moved to its new owners.
    DropIfDigest { entries: Vec<(String, u64)> },
    /// Whether this node has heard that `node` departed (it left, or was removed): a
    /// leaving node asks its peers before it stops, so no one keeps it as a dead member.
    Departed { node: u64 },
}

/// A key range: from `start` (inclusive, or exclusive when `start_exclusive`) to `end`
/// (exclusive); `None` is unbounded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanRange {
    pub start: Option<String>,
    pub start_exclusive: bool,
    pub end: Option<String>,
    pub limit: usize,
    /// Bytes of sets the reply carries at most (at least one set; clamped by
    /// `rpc::bounds`). Absent from older peers' requests: they get the batch budget.
    #[serde(default = "default_scan_bytes")]
    pub max_bytes: usize,
}

fn default_scan_bytes() -> usize {
    super::bounds::MAX_SCAN_BYTES
}

/// A client write, forwarded to a replica that can coordinate it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub key: String,
    pub seen: Option<VersionVector>,
    /// `Payload::Tombstone` for a delete.
    pub payload: Payload,
    pub w: Option<Quorum>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Pong {
        node_id: u64,
    },
    Read(Option<SiblingSet>),
    Merged,
    HintStored,
    /// The stand-in would not keep the hint (its bound for the target is full); the write
    /// does not count toward W there.
    HintRefused {
        reason: String,
    },
    /// A forwarded write's outcome.
    Written {
        found: bool,
        set: SiblingSet,
        /// The new version's dot (none when a delete found nothing to delete).
        dot: Option<Dot>,
    },
    /// Keys in order; `more` when the range holds keys past the last one (or the reply
    /// stopped at its byte budget).
    Scanned {
        entries: Vec<(String, SiblingSet)>,
        more: bool,
    },
    Summaries(Vec<Summary>),
    /// Keys with digests, and whether the interval holds more after the last.
    Digests {
        entries: Vec<(String, u64)>,
        more: bool,
    },
    /// The copies of the first `entries.len()` keys asked for, in the order asked; `more`
    /// when the reply stopped at its byte budget before the last key.
    ReadMany {
        entries: Vec<(String, Option<SiblingSet>)>,
        more: bool,
    },
    /// How many of the keys were dropped.
    Dropped(usize),
    Departed(bool),
    Error(RemoteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ScanRange` as peers before the byte budget sent it.
    #[derive(Serialize)]
    struct OldScanRange {
        start: Option<String>,
        start_exclusive: bool,
        end: Option<String>,
        limit: usize,
    }

    /// An envelope as peers before the request id sent it.
    #[derive(Serialize)]
    struct OldEnvelope<T> {
        id: u64,
        body: T,
    }

    fn decode(bytes: &[u8]) -> Envelope<Request> {
        rmp_serde::from_slice(bytes).expect("decodes")
    }

    #[test]
    fn envelopes_with_and_without_a_request_id_decode() {
        let old = rmp_serde::to_vec(&OldEnvelope {
            id: 9,
            body: Request::Ping,
        })
        .unwrap();
        let untraced = rmp_serde::to_vec(&Envelope::new(9, Request::Ping)).unwrap();
        // Untraced, the envelope is byte for byte what older peers send.
        assert_eq!(untraced, old);
        assert_eq!(decode(&old).trace, None);
        let id = crate::telemetry::RequestId::parse(b"req-42").unwrap();
        let mut traced = Envelope::new(9, Request::Ping);
        traced.trace = Some(id.clone());
        let back = decode(&rmp_serde::to_vec(&traced).unwrap());
        assert_eq!((back.id, back.trace), (9, Some(id)));
    }

    #[test]
    fn a_peers_bad_request_id_is_dropped_not_kept() {
        #[derive(Serialize)]
        struct Forged<'a> {
            id: u64,
            body: Request,
            trace: &'a str,
        }
        let long = "x".repeat(64 * 1024);
        for bad in [long.as_str(), "", "two words", "line\nbreak"] {
            let bytes = rmp_serde::to_vec(&Forged {
                id: 1,
                body: Request::Ping,
                trace: bad,
            })
            .unwrap();
            assert_eq!(decode(&bytes).trace, None, "{bad:?} kept");
        }
        // Not a string at all: no peer builds that, and the frame is refused.
        #[derive(Serialize)]
        struct Wrong {
            id: u64,
            body: Request,
            trace: u64,
        }
        let bytes = rmp_serde::to_vec(&Wrong {
            id: 1,
            body: Request::Ping,
            trace: 7,
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<Envelope<Request>>(&bytes).is_err());
    }

    #[test]
    fn a_scan_from_an_older_peer_gets_the_default_byte_budget() {
        let old = OldScanRange {
            start: Some("a".into()),
            start_exclusive: true,
            end: None,
            limit: 7,
        };
        let mut bytes = Vec::new();
        rmp_serde::encode::write(&mut bytes, &old).unwrap();
        let range: ScanRange = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(range.limit, 7);
        assert_eq!(range.max_bytes, super::super::bounds::MAX_SCAN_BYTES);
    }
}
