//! The rejoin gate of the HTTP API: a node restarted on a persisted membership answers
//! KV requests with 503 `unavailable` until its peers confirm its ring (see
//! `cluster::agreement`), so it never answers 404 for keys it holds but cannot yet route.

use axum::http::StatusCode;

use crate::cluster::membership::ClusterView;

use super::error::ApiError;
use super::AppState;

/// What a rejoining node answers to KV requests, and `/ready`'s reason.
pub const REJOINING_MESSAGE: &str =
    "node is rejoining: its peers have not confirmed the ring it was part of yet";

/// Why the node takes no KV request now, if it does not. `/ready` gives the same reason.
pub fn rejoin_reason(view: &ClusterView) -> Option<&'static str> {
    view.rejoining.then_some(REJOINING_MESSAGE)
}

/// `Ok` when the node takes KV requests; the 503 to answer otherwise.
pub fn kv_gate(state: &AppState) -> Result<(), ApiError> {
    match rejoin_reason(&state.coord.view()) {
        None => Ok(()),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            reason,
        )),
    }
}
