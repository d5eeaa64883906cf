//! What a peer may ask for: every duration, limit and count in a request is clamped or
//! refused here, before any handler acts on it. `rpc::server` calls [`admit`], which
//! clamps what can be clamped without harm; the replica (`peer_service`) calls [`check`],
//! which refuses what no correct sender builds, and counts each refusal.
//!
//! A peer is trusted to be a ringkv node, not to be correct: a bug, a version skew or a
//! corrupted frame must not make this node overflow an `Instant + Duration`, scan
//! without end, take on a batch larger than any sender builds, store a value over
//! `--max-value-bytes`, or merge a set that breaks the sibling set's invariants. This
//! holds with or without a cluster secret: authentication says who sent a frame, not that
//! it is right.

use std::time::Duration;

use super::batch::MAX_BATCH_ITEMS;
use super::message::{ForwardedWrite, Request, ScanRange};
use super::remote_error::RemoteError;
use crate::key::{Key, MAX_KEY_BYTES};
use crate::merkle::Interval;
use crate::quorum::Quorum;
use crate::version::{check_vector, Payload, SiblingSet};

/// The longest a forwarded write may take: the HTTP API's own bound on `timeout_ms`
/// (`http::params::MAX_TIMEOUT_MS`), so a forward never gets more time than a client
/// could have asked for.
pub const MAX_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// A forward's `timeout_ms` above this is refused rather than clamped. A sender forwards
/// its client's timeout (at most [`MAX_PEER_TIMEOUT`]) or its `--request-timeout`, which
/// an operator may set above a minute: that is clamped. An hour and more is no timeout any
/// node was configured with, but a bug (u64::MAX, a unit mix-up).
pub const MAX_FORWARD_TIMEOUT_MS: u64 = 3_600_000;
/// Rows one `Scan` or `Digests` call may ask for (the reply is also cut by bytes).
pub const MAX_SCAN_ROWS: usize = 10_000;
/// Bytes of sets one `Scan` reply may carry: a bulk call's budget, which stays well under
/// any frame a node accepts (`rpc::batch`).
pub const MAX_SCAN_BYTES: usize = super::batch::TARGET_BATCH_BYTES;
/// Intervals one `Summaries` call may ask about.
pub const MAX_INTERVALS: usize = 4096;
/// Items in one `Merge`, `ReadMany` or `DropIfDigest`: what a sender's batcher emits at
/// most (`rpc::batch::MAX_BATCH_ITEMS`).
pub const MAX_ITEMS: usize = MAX_BATCH_ITEMS;
/// A replication factor (`--n`) is at most 16 (the flag's range), so no write quorum
/// counts more replicas.
pub const MAX_QUORUM_COUNT: usize = 16;
/// Actors one set's context (or a forward's `seen`) may name. The context is not pruned
/// (see `SiblingSet`): it names every node incarnation that wrote the key, which for 16
/// nodes is 256 unclean restarts each. A set past this is invented, not old.
pub const MAX_SET_ACTORS: usize = 4096;
/// A `Content-Type` a peer sends: the HTTP API's own bound (`http::kv::MAX_CONTENT_TYPE_LEN`).
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;
/// A set a peer sends may hold this many times this node's `--max-siblings` versions.
/// A replica holds more than its cap when merges from differently capped coordinators
/// meet (stored and counted, see `kv::writer`), and it sends what it holds; a set far
/// past that is no set any node built.
pub const SET_VERSIONS_OVER_CAP: usize = 4;
/// ...and never fewer than this, so a node with a small cap still takes what a peer
/// with the default cap (64) holds.
pub const MIN_SET_VERSIONS: usize = 256;

/// The limits of this node that a peer's request is held to (from `config::Limits`).
#[derive(Clone, Copy, Debug)]
pub struct PeerLimits {
    pub max_value_bytes: usize,
    pub max_siblings: usize,
}

impl PeerLimits {
    pub fn of(limits: &crate::config::Limits) -> Self {
        PeerLimits {
            max_value_bytes: limits.max_value_bytes,
            max_siblings: limits.max_siblings,
        }
    }

    /// The most versions one set from a peer may carry (see [`SET_VERSIONS_OVER_CAP`]).
    pub fn max_set_versions(&self) -> usize {
        self.max_siblings
            .saturating_mul(SET_VERSIONS_OVER_CAP)
            .max(MIN_SET_VERSIONS)
    }
}

/// A peer-sent timeout in milliseconds, as a duration this node can add to any instant.
pub fn peer_timeout(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_PEER_TIMEOUT)
}

fn bad(message: String) -> RemoteError {
    RemoteError::BadRequest(message)
}

fn too_many(what: &str, n: usize, max: usize) -> RemoteError {
    bad(format!("{what}: {n} items, at most {max} per call"))
}

/// Clamps the limits of `Scan` and `Digests` into their bounds: a reply says `more` when
/// it stops short, so asking for fewer rows than a peer wanted loses nothing. Everything
/// that cannot be clamped without changing what the request means is [`check`]'s.
pub fn admit(request: Request) -> Result<Request, RemoteError> {
    Ok(match request {
        Request::Scan(mut range) => {
            range.limit = range.limit.clamp(1, MAX_SCAN_ROWS);
            range.max_bytes = range.max_bytes.clamp(1, MAX_SCAN_BYTES);
            Request::Scan(range)
        }
        Request::Digests {
            interval,
            after,
            limit,
        } => Request::Digests {
            interval,
            after,
            limit: limit.clamp(1, MAX_SCAN_ROWS),
        },
        other => other,
    })
}

/// Refuses a request no correct sender builds, field by field (every variant is listed,
/// so that a new one cannot skip this), and clamps a forward's timeout into
/// [`MAX_PEER_TIMEOUT`]. A batch with one bad item is refused whole: storing the rest
/// would answer a partial success as an error, or a partial failure as success.
pub fn check(request: Request, limits: &PeerLimits) -> Result<Request, RemoteError> {
    match &request {
        Request::Ping => {}
        // Any id: the answer is only whether this node heard it departed.
        Request::Departed { node: _ } => {}
        Request::Read { key } => check_key(key)?,
        Request::Merge { entries } => {
            if entries.len() > MAX_ITEMS {
                return Err(too_many("Merge", entries.len(), MAX_ITEMS));
            }
            for (key, set) in entries {
                check_key(key)?;
                check_set(key, set, limits)?;
            }
        }
        // Any target: a hint for an id this node does not know is kept until it expires,
        // as one for a member that was removed is.
        Request::Hint {
            target: _,
            key,
            set,
        } => {
            check_key(key)?;
            check_set(key, set, limits)?;
        }
        Request::Forward(fw) => check_forward(fw, limits)?,
        Request::Scan(range) => check_scan(range)?,
        Request::Summaries { intervals } => {
            if intervals.len() > MAX_INTERVALS {
                return Err(too_many("Summaries", intervals.len(), MAX_INTERVALS));
            }
            intervals.iter().try_for_each(check_interval)?;
        }
        Request::Digests {
            interval,
            after,
            limit: _,
        } => {
            check_interval(interval)?;
            if let Some(after) = after {
                check_key(after)?;
            }
        }
        Request::ReadMany { keys } => {
            if keys.len() > MAX_ITEMS {
                return Err(too_many("ReadMany", keys.len(), MAX_ITEMS));
            }
            keys.iter().try_for_each(|k| check_key(k))?;
        }
        // Any digest: a wrong one only leaves the key where it is.
        Request::DropIfDigest { entries } => {
            if entries.len() > MAX_ITEMS {
                return Err(too_many("DropIfDigest", entries.len(), MAX_ITEMS));
            }
            entries.iter().try_for_each(|(k, _)| check_key(k))?;
        }
    }
    Ok(match request {
        Request::Forward(mut fw) => {
            fw.timeout_ms = peer_timeout(fw.timeout_ms).as_millis() as u64;
            Request::Forward(fw)
        }
        other => other,
    })
}

/// By `Key`'s own rules (the handler then builds the key it acts on).
fn check_key(key: &str) -> Result<(), RemoteError> {
    // Not for long keys only: `Key::new` takes an owned string, so this copies at most
    // `MAX_KEY_BYTES` after the length check.
    if key.len() > MAX_KEY_BYTES {
        return Err(bad(format!(
            "bad key: key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Key::new(key)
        .map(drop)
        .map_err(|e| bad(format!("bad key: {e}")))
}

fn check_interval(interval: &Interval) -> Result<(), RemoteError> {
    if interval.lo > interval.hi {
        return Err(bad(format!(
            "interval {:#x}..={:#x} is empty (lo > hi); a wrapping range is sent as two intervals",
            interval.lo, interval.hi
        )));
    }
    Ok(())
}

/// A scan's bounds are keys or a key's prefix, so no longer than a key.
fn check_scan(range: &ScanRange) -> Result<(), RemoteError> {
    for bound in [&range.start, &range.end].into_iter().flatten() {
        if bound.len() > MAX_KEY_BYTES {
            return Err(bad(format!(
                "scan bound is {} bytes; a key is at most {MAX_KEY_BYTES}",
                bound.len()
            )));
        }
    }
    Ok(())
}

fn check_payload(what: &str, payload: &Payload, limits: &PeerLimits) -> Result<(), RemoteError> {
    let Payload::Value { data, content_type } = payload else {
        return Ok(());
    };
    if data.len() > limits.max_value_bytes {
        return Err(bad(format!(
            "{what}: a value of {} bytes; this node's --max-value-bytes is {}",
            data.len(),
            limits.max_value_bytes
        )));
    }
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(bad(format!(
            "{what}: a content type of {} bytes; at most {MAX_CONTENT_TYPE_BYTES}",
            content_type.len()
        )));
    }
    Ok(())
}

/// A set for `key` from a peer: well formed (see `version::wellformed`), within the
/// version and actor bounds, and every value within `--max-value-bytes`. Over the sibling
/// cap but within [`PeerLimits::max_set_versions`] passes: the writer stores and counts it.
fn check_set(key: &str, set: &SiblingSet, limits: &PeerLimits) -> Result<(), RemoteError> {
    set.check_well_formed(limits.max_set_versions(), MAX_SET_ACTORS)
        .map_err(|e| bad(format!("sibling set for key {key:?}: {e}")))?;
    let what = format!("sibling set for key {key:?}");
    set.versions()
        .iter()
        .try_for_each(|v| check_payload(&what, &v.payload, limits))
}

fn check_forward(fw: &ForwardedWrite, limits: &PeerLimits) -> Result<(), RemoteError> {
    check_key(&fw.key)?;
    if let Some(seen) = &fw.seen {
        check_vector(seen, MAX_SET_ACTORS).map_err(|e| bad(format!("forward's token: {e}")))?;
    }
    check_payload("forward", &fw.payload, limits)?;
    if let Some(Quorum::Count(c)) = fw.w {
        if !(1..=MAX_QUORUM_COUNT).contains(&c) {
            return Err(bad(format!(
                "forward's w = {c}; a count is 1..={MAX_QUORUM_COUNT}"
            )));
        }
    }
    if !(1..=MAX_FORWARD_TIMEOUT_MS).contains(&fw.timeout_ms) {
        return Err(bad(format!(
            "forward's timeout_ms = {}; it is 1..={MAX_FORWARD_TIMEOUT_MS}",
            fw.timeout_ms
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::version::{Actor, VersionVector};

    const LIMITS: PeerLimits = PeerLimits {
        max_value_bytes: 1024,
        max_siblings: 4,
    };

    fn forward(timeout_ms: u64) -> ForwardedWrite {
        ForwardedWrite {
            key: "k".into(),
            seen: None,
            payload: Payload::Tombstone,
            w: None,
            timeout_ms,
        }
    }

    fn value(len: usize) -> Payload {
        Payload::Value {
            data: Bytes::from(vec![b'x'; len]),
            content_type: "text/plain".into(),
        }
    }

    fn set_with(payload: Payload) -> SiblingSet {
        let actor = Actor { node: 1, epoch: 0 };
        SiblingSet::new()
            .update(None, actor, payload, 0)
            .expect("a first write")
            .0
    }

    fn refused(request: Request) -> String {
        match check(request, &LIMITS) {
            Err(RemoteError::BadRequest(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_timeout_in_range_is_clamped_and_one_out_of_range_refused() {
        let Ok(Request::Forward(fw)) = check(Request::Forward(forward(120_000)), &LIMITS) else {
            panic!("a forward of two minutes is admitted");
        };
        assert_eq!(fw.timeout_ms, MAX_PEER_TIMEOUT.as_millis() as u64);
        // The very thing that used to panic.
        let _ = tokio::time::Instant::now() + Duration::from_millis(fw.timeout_ms);
        assert!(refused(Request::Forward(forward(u64::MAX))).contains("timeout_ms"));
        assert!(refused(Request::Forward(forward(0))).contains("timeout_ms"));
        assert_eq!(peer_timeout(0), Duration::from_millis(1));
    }

    #[test]
    fn a_forward_is_checked_field_by_field() {
        let mut fw = forward(1000);
        fw.w = Some(Quorum::Count(0));
        assert!(refused(Request::Forward(fw.clone())).contains("w = 0"));
        fw.w = Some(Quorum::Count(MAX_QUORUM_COUNT + 1));
        assert!(refused(Request::Forward(fw.clone())).contains("w = 17"));
        fw.w = Some(Quorum::Count(3));
        assert!(check(Request::Forward(fw.clone()), &LIMITS).is_ok());
        fw.payload = value(LIMITS.max_value_bytes + 1);
        assert!(refused(Request::Forward(fw.clone())).contains("--max-value-bytes"));
        fw.payload = value(LIMITS.max_value_bytes);
        assert!(check(Request::Forward(fw.clone()), &LIMITS).is_ok());
        fw.seen = Some(
            (0..=MAX_SET_ACTORS as u64)
                .map(|n| (Actor { node: n, epoch: 0 }, 1))
                .collect::<VersionVector>(),
        );
        assert!(refused(Request::Forward(fw.clone())).contains("actors"));
        fw.seen = Some(
            [(Actor { node: 1, epoch: 0 }, u64::MAX)]
                .into_iter()
                .collect(),
        );
        assert!(refused(Request::Forward(fw.clone())).contains("u64::MAX"));
        fw.seen = None;
        fw.key = String::new();
        assert!(refused(Request::Forward(fw)).contains("bad key"));
    }

    #[test]
    fn sets_are_checked_wherever_they_travel() {
        let big = set_with(value(LIMITS.max_value_bytes + 1));
        let entries = vec![("k".to_string(), big.clone())];
        assert!(refused(Request::Merge { entries }).contains("--max-value-bytes"));
        let hint = Request::Hint {
            target: 7,
            key: "k".into(),
            set: big,
        };
        assert!(refused(hint).contains("--max-value-bytes"));
        let content_type = Payload::Value {
            data: Bytes::from_static(b"v"),
            content_type: "t".repeat(MAX_CONTENT_TYPE_BYTES + 1),
        };
        let entries = vec![("k".to_string(), set_with(content_type))];
        assert!(refused(Request::Merge { entries }).contains("content type"));
        let fine = vec![("k".to_string(), set_with(value(10)))];
        assert!(check(Request::Merge { entries: fine }, &LIMITS).is_ok());
    }

    /// Over the cap a set passes (the writer stores and counts it); far over, it is
    /// refused.
    #[test]
    fn a_set_over_the_cap_passes_and_one_far_over_is_refused() {
        assert_eq!(LIMITS.max_set_versions(), MIN_SET_VERSIONS);
        let wide = PeerLimits {
            max_value_bytes: 1024,
            max_siblings: 100,
        };
        assert_eq!(wide.max_set_versions(), 400);
        let overflowing = PeerLimits {
            max_value_bytes: 1,
            max_siblings: usize::MAX,
        };
        assert_eq!(overflowing.max_set_versions(), usize::MAX);
        let mut set = SiblingSet::new();
        for n in 1..=(MIN_SET_VERSIONS as u64 + 1) {
            let (one, _) = SiblingSet::new()
                .update(None, Actor { node: n, epoch: 0 }, value(1), 0)
                .expect("a first write");
            set = set.sync(&one);
            if n == LIMITS.max_siblings as u64 + 1 {
                let entries = vec![("k".to_string(), set.clone())];
                assert!(check(Request::Merge { entries }, &LIMITS).is_ok());
            }
        }
        let entries = vec![("k".to_string(), set)];
        assert!(refused(Request::Merge { entries }).contains("versions in one set"));
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        let reversed = Interval { lo: 10, hi: 9 };
        assert!(refused(Request::Summaries {
            intervals: vec![Interval::FULL, reversed]
        })
        .contains("lo > hi"));
        assert!(refused(Request::Digests {
            interval: reversed,
            after: None,
            limit: 10
        })
        .contains("lo > hi"));
        let point = Interval { lo: 9, hi: 9 };
        assert!(check(
            Request::Summaries {
                intervals: vec![point]
            },
            &LIMITS
        )
        .is_ok());
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(refused(Request::Read { key: long.clone() }).contains("bad key"));
        assert!(refused(Request::Digests {
            interval: Interval::FULL,
            after: Some(long.clone()),
            limit: 1
        })
        .contains("bad key"));
        let scan = ScanRange {
            start: Some(long),
            start_exclusive: false,
            end: None,
            limit: 1,
            max_bytes: 1,
        };
        assert!(refused(Request::Scan(scan)).contains("scan bound"));
    }

    #[test]
    fn limits_are_clamped_and_oversized_batches_refused() {
        let scan = ScanRange {
            start: None,
            start_exclusive: false,
            end: None,
            limit: usize::MAX,
            max_bytes: usize::MAX,
        };
        assert!(matches!(
            admit(Request::Scan(scan)),
            Ok(Request::Scan(ScanRange {
                limit: MAX_SCAN_ROWS,
                max_bytes: MAX_SCAN_BYTES,
                ..
            }))
        ));
        let zero = ScanRange {
            start: None,
            start_exclusive: false,
            end: None,
            limit: 0,
            max_bytes: 0,
        };
        assert!(matches!(
            admit(Request::Scan(zero)),
            Ok(Request::Scan(ScanRange {
                limit: 1,
                max_bytes: 1,
                ..
            }))
        ));
        assert!(matches!(
            admit(Request::Digests {
                interval: Interval::FULL,
                after: None,
                limit: 0
            }),
            Ok(Request::Digests { limit: 1, .. })
        ));
        let keys = vec!["k".to_string(); MAX_ITEMS + 1];
        assert!(refused(Request::ReadMany { keys }).contains("ReadMany"));
        let keys = vec!["k".to_string(); MAX_ITEMS];
        assert!(matches!(
            check(Request::ReadMany { keys }, &LIMITS),
            Ok(Request::ReadMany { .. })
        ));
        let intervals = vec![Interval::FULL; MAX_INTERVALS + 1];
        assert!(refused(Request::Summaries { intervals }).contains("Summaries"));
        let entries = vec![("k".to_string(), 0u64); MAX_ITEMS + 1];
        assert!(refused(Request::DropIfDigest { entries }).contains("DropIfDigest"));
        let entries = vec![("k".to_string(), SiblingSet::new()); MAX_ITEMS + 1];
        assert!(refused(Request::Merge { entries }).contains("Merge"));
    }
}
