//! `GET /debug/workers`: the node's workers, their phase, whether each runs, and what it
//! is doing (see `worker`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::AppState;
use crate::worker::WorkerInfo;

#[utoipa::path(
    get,
    path = "/debug/workers",
    tag = "debug",
    responses((status = 200, description = "The node's supervised workers, in the order they started", body = Vec<WorkerInfo>)),
)]
/// A JSON list, in the order the workers started.
pub(super) async fn workers(State(state): State<Arc<AppState>>) -> Json<Vec<WorkerInfo>> {
    Json(state.workers.list())
}
