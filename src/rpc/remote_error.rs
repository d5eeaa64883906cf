//! The error a peer answers with ([`RemoteError`]), and how this node's own errors become
//! one: the wire carries an error's kind and text, and its source type ends at this
//! boundary.

use serde::{Deserialize, Serialize};

use crate::coordinator::CoordError;
use crate::kv::KvError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("the write would leave more than {limit} siblings")]
    SiblingLimit { limit: usize },
    #[error("{0}")]
    Unavailable(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The replica's storage is out of space (HTTP 507 where it is answered).
    #[error("no space: {0}")]
    NoSpace(String),
}

/// A local storage request that failed (a read, merge, hint or scan a peer asked for).
impl From<KvError> for RemoteError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::SiblingLimit { limit } => RemoteError::SiblingLimit { limit },
            KvError::ShuttingDown => RemoteError::Unavailable(e.to_string()),
            KvError::NoSpace(e) => RemoteError::NoSpace(e.to_string()),
            other => RemoteError::Internal(other.to_string()),
        }
    }
}

/// A write coordinated here for a peer that forwarded it.
///
/// Not the same table as `From<KvError>`: a store error goes without the "storage
/// failed" prefix, and a storage error not named here (a counter overflow, a forged set)
/// answers `Unavailable`, where a local request answers `Internal`. Kept apart: making
/// them one would change what a forwarded write answers.
impl From<CoordError> for RemoteError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Kv(KvError::SiblingLimit { limit }) => RemoteError::SiblingLimit { limit },
            CoordError::Remote(r) => r,
            CoordError::Kv(KvError::Store(e)) => RemoteError::Internal(e.to_string()),
            // A failed fsync is this node's storage failing, as `Store` is: a 500.
            CoordError::Kv(e @ KvError::SyncFailed { .. }) => RemoteError::Internal(e.to_string()),
            CoordError::Kv(KvError::NoSpace(e)) => RemoteError::NoSpace(e.to_string()),
            e @ CoordError::Internal(_) => RemoteError::Internal(e.to_string()),
            other => RemoteError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::StoreError;

    fn store_error() -> Arc<StoreError> {
        Arc::new(StoreError::from(std::io::Error::other("disk on fire")))
    }

    #[test]
    fn a_local_failure_keeps_its_kind_on_the_wire() {
        assert_eq!(
            RemoteError::from(KvError::SiblingLimit { limit: 8 }),
            RemoteError::SiblingLimit { limit: 8 }
        );
        assert!(matches!(
            RemoteError::from(KvError::ShuttingDown),
            RemoteError::Unavailable(_)
        ));
        assert!(matches!(
            RemoteError::from(KvError::NoSpace(store_error())),
            RemoteError::NoSpace(m) if m.contains("disk on fire")
        ));
        assert!(matches!(
            RemoteError::from(KvError::Store(store_error())),
            RemoteError::Internal(m) if m.starts_with("storage failed: ")
        ));
    }

    #[test]
    fn a_forwarded_write_keeps_its_kind_on_the_wire() {
        let remote = RemoteError::BadRequest("bad key".into());
        assert_eq!(
            RemoteError::from(CoordError::Remote(remote.clone())),
            remote
        );
        assert!(matches!(
            RemoteError::from(CoordError::Kv(KvError::Store(store_error()))),
            RemoteError::Internal(m) if m.contains("disk on fire") && !m.contains("storage failed")
        ));
        assert!(matches!(
            RemoteError::from(CoordError::NotJoined),
            RemoteError::Unavailable(_)
        ));
        assert!(matches!(
            RemoteError::from(CoordError::Internal("broken")),
            RemoteError::Internal(_)
        ));
    }
}
