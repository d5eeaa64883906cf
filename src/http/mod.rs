//! The HTTP API (axum): routes, the shared state, and the error shape.
//! DESIGN.md §2 and README's API section are the contract.

mod batch;
mod cluster;
mod error;
mod kv;
mod list;
mod params;
mod render;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use crate::config::NodeConfig;
use crate::coordinator::Coordinator;

pub use error::ApiError;
pub use kv::TOKEN_HEADER;

pub struct AppState {
    pub coord: Coordinator,
    pub config: NodeConfig,
    pub cluster_id: String,
    /// Joined and knows the ring (see `node`).
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limits = &state.config.limits;
    Router::new()
        .route("/kv", strict(get(list::list)))
        .route("/kv/", any(kv::empty_key))
        .route(
            "/kv/{*key}",
            strict(
                get(kv::get_key)
                    .head(kv::head_key)
                    .put(kv::put_key)
                    .delete(kv::delete_key),
            )
            .layer(DefaultBodyLimit::max(limits.max_value_bytes)),
        )
        .route(
            "/batch",
            strict(post(batch::batch)).layer(DefaultBodyLimit::max(limits.max_batch_bytes)),
        )
        .route("/health", strict(get(health)))
        .route("/ready", strict(get(ready)))
        .route("/debug/local/{*key}", strict(get(debug_local)))
        .route("/debug/preflist/{*key}", strict(get(cluster::preflist)))
        .route("/debug/replication", strict(get(cluster::replication)))
        .route("/cluster", strict(get(cluster::cluster)))
        .fallback(no_route)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// A wrong method gets our JSON error too, not an empty 405.
fn strict(route: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    route.fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    })
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the node is starting",
        )
        .into_response()
    }
}

async fn debug_local(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let key = kv::key_from_uri(&uri, "/debug/local/")?;
    match state
        .coord
        .local()
        .read(&key)
        .map_err(crate::coordinator::CoordError::from)?
    {
        Some(set) => Ok(Json(render::stored_set(key.as_str(), &set)).into_response()),
        None => Err(ApiError::not_found(format!(
            "key {key:?} is not stored on this node"
        ))),
    }
}

/// One line per request, at debug level.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}
