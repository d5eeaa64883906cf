//! The API's one error shape: `{"error": code, "message": text}` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::coordinator::CoordError;
use crate::key::KeyError;
use crate::kv::KvError;
use crate::rpc::RemoteError;
use crate::version::TokenError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Every error answer: a code to match on, and a message for people.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// `bad_key`, `bad_token`, `bad_param`, `bad_content_type`, `bad_request`, `not_found`,
    /// `method_not_allowed`, `sibling_limit`, `precondition_failed`, `too_large`,
    /// `unavailable`, `insufficient_storage`, `internal`, …
    #[schema(example = "bad_param")]
    pub error: &'a str,
    #[schema(example = "unknown query parameter \"x\"; this route takes r, timeout_ms")]
    pub message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_param", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A `Content-Type` that is too long or not a media type.
    pub fn bad_content_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_content_type", message)
    }

    /// A write's precondition (`If-None-Match: *`) does not hold.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            message,
        )
    }

    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: self.code,
            message: &self.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_key", e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_token", e.to_string())
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        let message = e.to_string();
        match e {
            CoordError::Kv(KvError::SiblingLimit { .. }) => {
                Self::new(StatusCode::CONFLICT, "sibling_limit", message)
            }
            CoordError::Remote(RemoteError::SiblingLimit { .. }) => {
                Self::new(StatusCode::CONFLICT, "sibling_limit", message)
            }
            CoordError::Remote(RemoteError::BadRequest(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            // The storage is full: the client may retry once space returns (the node
            // probes for it), or through another node.
            CoordError::Kv(KvError::NoSpace(_)) | CoordError::Remote(RemoteError::NoSpace(_)) => {
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    message,
                )
            }
            CoordError::Kv(KvError::ShuttingDown)
            | CoordError::Timeout { .. }
            | CoordError::QuorumFailed { .. }
            | CoordError::NotJoined
            | CoordError::ListingIncomplete { .. }
            | CoordError::Remote(RemoteError::Unavailable(_)) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            CoordError::Kv(_) | CoordError::Remote(_) | CoordError::Internal(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::StoreError;

    fn status(e: KvError) -> StatusCode {
        ApiError::from(CoordError::Kv(e)).status
    }

    /// The storage errors keep their type up to here, and their status: 507 for a full
    /// disk, 500 for anything else the storage did.
    #[test]
    fn storage_errors_map_to_507_for_no_space_and_500_otherwise() {
        let full = StoreError::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(
            status(KvError::from(full)),
            StatusCode::INSUFFICIENT_STORAGE
        );
        let corrupt = KvError::from(StoreError::Corrupt("bad page".into()));
        assert!(matches!(&corrupt, KvError::Store(e) if e.is_corruption()));
        assert_eq!(status(corrupt), StatusCode::INTERNAL_SERVER_ERROR);
        let sync = KvError::SyncFailed {
            when: "commit",
            source: Arc::new(StoreError::SyncFailed(std::io::Error::other("EIO"))),
        };
        assert!(std::error::Error::source(&sync).is_some());
        assert_eq!(status(sync), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            ApiError::from(CoordError::Internal("x")).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
