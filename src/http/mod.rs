//! The HTTP API (axum): routes, the shared state, and the error shape.
//! DESIGN.md §2 and README's API section are the contract.

mod batch;
mod cluster;
mod debug_keys;
mod error;
mod kv;
mod list;
mod metrics;
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
    pub admin: Option<Arc<crate::admin::Admin>>,
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
        .route("/debug/keys", strict(get(debug_keys::keys)))
        .route("/debug/preflist/{*key}", strict(get(cluster::preflist)))
        .route("/debug/replication", strict(get(cluster::replication)))
        .route("/cluster", strict(get(cluster::cluster)))
        .route("/metrics", strict(get(metrics::metrics)))
        .route("/admin/leave", strict(post(admin_leave)))
        .route("/admin/remove/{id}", strict(post(admin_remove)))
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

fn admin(state: &AppState) -> Result<&Arc<crate::admin::Admin>, ApiError> {
    state.admin.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "membership changes are not available on this node",
        )
    })
}

/// `POST /admin/leave`: 202 while the node hands its data off; it exits when done.
async fn admin_leave(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if admin(&state)?.start_leave() {
        Ok((StatusCode::ACCEPTED, Json(json!({"status": "leaving"}))).into_response())
    } else {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"status": "already leaving"})),
        )
            .into_response())
    }
}

/// `POST /admin/remove/{id}`: takes a (dead) member out of the ring.
async fn admin_remove(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let id: crate::cluster::NodeId = id
        .parse()
        .map_err(|_| ApiError::bad_param(format!("{id:?} is not a node id (16 hex digits)")))?;
    let view = state.coord.view();
    if id == view.self_id {
        return Err(ApiError::bad_param(
            "a node cannot remove itself: use /admin/leave",
        ));
    }
    if !view.members.contains_key(&id) {
        return Err(ApiError::not_found(format!("{id} is not a member")));
    }
    admin(&state)?.remove(id).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "removed", "id": id.to_string()})),
    )
        .into_response())
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once joined. A node whose storage refuses writes stays 200, since it still serves
/// reads and gossip already routes writes around it; the body then adds `"writable": false`
/// and why (`write_state`, `reason`), so a probe that cares about writes can tell.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        let write_state = state.coord.local().write_state();
        if write_state.takes_writes() {
            return Json(json!({"status": "ready"})).into_response();
        }
        Json(json!({
            "status": "ready",
            "writable": false,
            "write_state": write_state.as_str(),
            "reason": write_state.explain(),
        }))
        .into_response()
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
