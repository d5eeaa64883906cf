//! What a peer may ask for: every duration, limit and count in a request is clamped or
//! refused here, once, before any handler sees it (`rpc::server` calls [`admit`]).
//!
//! A peer is trusted to be a ringkv node, not to be correct: a bug, a version skew or a
//! corrupted frame must not make this node overflow an `Instant + Duration`, scan
//! without end, or take on a batch larger than any sender builds.

use std::time::Duration;

use super::batch::MAX_BATCH_ITEMS;
use super::message::Request;
use super::remote_error::RemoteError;

/// The longest a forwarded write may take: the HTTP API's own bound on `timeout_ms`
/// (`http::params::MAX_TIMEOUT_MS`), so a forward never gets more time than a client
/// could have asked for.
pub const MAX_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows one `Scan` or `Digests` call may ask for (the reply is also cut by bytes).
pub const MAX_SCAN_ROWS: usize = 10_000;
/// Intervals one `Summaries` call may ask about.
pub const MAX_INTERVALS: usize = 4096;
/// Items in one `Merge`, `ReadMany` or `DropIfDigest`: what a sender's batcher emits at
/// most (`rpc::batch::MAX_BATCH_ITEMS`).
pub const MAX_ITEMS: usize = MAX_BATCH_ITEMS;

/// A peer-sent timeout in milliseconds, as a duration this node can add to any instant.
pub fn peer_timeout(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_PEER_TIMEOUT)
}

fn too_many(what: &str, n: usize, max: usize) -> RemoteError {
    RemoteError::BadRequest(format!("{what}: {n} items, at most {max} per call"))
}

/// Clamps the request's durations and limits into their bounds, and refuses a batch
/// with more items than any sender builds: truncating it silently would read as
/// success for the items dropped.
pub fn admit(request: Request) -> Result<Request, RemoteError> {
    Ok(match request {
        Request::Forward(mut fw) => {
            fw.timeout_ms = peer_timeout(fw.timeout_ms).as_millis() as u64;
            Request::Forward(fw)
        }
        Request::Scan(mut range) => {
            range.limit = range.limit.clamp(1, MAX_SCAN_ROWS);
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
        Request::Summaries { intervals } if intervals.len() > MAX_INTERVALS => {
            return Err(too_many("Summaries", intervals.len(), MAX_INTERVALS))
        }
        Request::Merge { entries } if entries.len() > MAX_ITEMS => {
            return Err(too_many("Merge", entries.len(), MAX_ITEMS))
        }
        Request::ReadMany { keys } if keys.len() > MAX_ITEMS => {
            return Err(too_many("ReadMany", keys.len(), MAX_ITEMS))
        }
        Request::DropIfDigest { entries } if entries.len() > MAX_ITEMS => {
            return Err(too_many("DropIfDigest", entries.len(), MAX_ITEMS))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Interval;
    use crate::rpc::{ForwardedWrite, ScanRange};
    use crate::version::Payload;

    #[test]
    fn a_huge_timeout_is_clamped_and_can_be_added_to_now() {
        let fw = ForwardedWrite {
            key: "k".into(),
            seen: None,
            payload: Payload::Tombstone,
            w: None,
            timeout_ms: u64::MAX,
        };
        let Ok(Request::Forward(fw)) = admit(Request::Forward(fw)) else {
            panic!("a forward is admitted");
        };
        assert_eq!(fw.timeout_ms, MAX_PEER_TIMEOUT.as_millis() as u64);
        // The very thing that used to panic.
        let _ = tokio::time::Instant::now() + Duration::from_millis(fw.timeout_ms);
        assert_eq!(peer_timeout(0), Duration::from_millis(1));
    }

    #[test]
    fn limits_are_clamped_and_oversized_batches_refused() {
        let scan = ScanRange {
            start: None,
            start_exclusive: false,
            end: None,
            limit: usize::MAX,
        };
        assert!(matches!(
            admit(Request::Scan(scan)),
            Ok(Request::Scan(ScanRange {
                limit: MAX_SCAN_ROWS,
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
        assert!(matches!(
            admit(Request::ReadMany { keys }),
            Err(RemoteError::BadRequest(_))
        ));
        let keys = vec!["k".to_string(); MAX_ITEMS];
        assert!(matches!(
            admit(Request::ReadMany { keys }),
            Ok(Request::ReadMany { .. })
        ));
        let intervals = vec![Interval::FULL; MAX_INTERVALS + 1];
        assert!(admit(Request::Summaries { intervals }).is_err());
        let entries = vec![("k".to_string(), 0u64); MAX_ITEMS + 1];
        assert!(admit(Request::DropIfDigest { entries }).is_err());
    }
}
