//! The HTTP API (axum): routes, the shared state, and the error shape.
//! docs/design.md §2 and README's API section are the contract.

pub mod auth;
mod batch;
mod batch_body;
mod cluster;
mod dashboard;
mod debug_keys;
mod error;
// The parsers, for the fuzz targets only (`fuzz/`).
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod gate;
mod kv;
mod list;
mod metrics;
mod openapi;
pub mod overload;
mod params;
mod render;
pub mod request_id;
pub mod serve;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use crate::config::NodeConfig;
use crate::coordinator::Coordinator;
use crate::kv::LocalKv;
use crate::readiness::NotReady;
use crate::rpc::RpcStats;
use crate::stats::http_requests::Op;
use crate::stats::requests::RequestStats;
use crate::stats::ReplicationStats;

pub use cluster::{
    ClusterJson, DepartedJson, DisagreementJson, DocumentError, Factors, MemberJson, PendingJson,
};
pub use error::ApiError;
pub use kv::TOKEN_HEADER;

/// What the handlers work with: the coordinator for requests that span the cluster, and
/// the node's own parts directly for what is local (its replica, its counters).
pub struct AppState {
    pub coord: Coordinator,
    /// This node's replica: `/debug/local`, `/debug/keys`, whether it takes writes, and
    /// the hints it holds.
    pub local: LocalKv,
    /// What the replication machinery did (`/debug/replication`, `/metrics`).
    pub stats: Arc<ReplicationStats>,
    /// Internode traffic of this node's RPC client and server (`/metrics`).
    pub rpc_stats: Arc<RpcStats>,
    pub admin: Arc<crate::admin::Admin>,
    pub config: NodeConfig,
    pub cluster_id: String,
    /// Joined and knows the ring (see `node`). Shared with the worker that sets it.
    pub ready: Arc<AtomicBool>,
    /// Why the node is not ready beyond `ready` (seeds unreached, removed), and the fence
    /// a removed node answers KV requests with.
    pub readiness: Arc<crate::readiness::Readiness>,
    /// The node's supervised workers (`/debug/workers`).
    pub workers: crate::worker::Registry,
    /// Requests shed 503 `overloaded`, by bound (`/metrics`).
    pub shed: Arc<overload::ShedStats>,
    /// Failed TLS handshakes on the HTTP and RPC listeners (`/metrics`).
    pub tls: Arc<crate::net::tls::TlsStats>,
    /// Every API request's latency by operation and status class (the dashboard's charts).
    pub requests: Arc<RequestStats>,
    /// Requests by operation and status, with their latency (`/metrics`).
    pub http_metrics: Arc<crate::stats::HttpMetrics>,
    /// Fresh `X-Request-Id`s, seeded like the node's other generators.
    pub request_ids: Arc<request_id::RequestIds>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limits = &state.config.limits;
    let overload = overload::Overload::new(&limits.http, state.shed.clone());
    // Each body route reads its body under the node's budget, within its own limit.
    let body = |limit| middleware::from_fn_with_state(overload.body(limit), overload::read_body);
    Router::new()
        .route("/", strict(get(dashboard::page)))
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
            .layer(DefaultBodyLimit::max(limits.max_value_bytes))
            .layer(body(limits.max_value_bytes)),
        )
        .route(
            "/batch",
            strict(post(batch::batch))
                .layer(DefaultBodyLimit::max(limits.max_batch_bytes))
                .layer(body(limits.max_batch_bytes)),
        )
        .route("/health", strict(get(health)))
        .route("/ready", strict(get(ready)))
        .route("/debug/local/{*key}", strict(get(debug_local)))
        .route("/debug/keys", strict(get(debug_keys::keys)))
        .route("/debug/preflist/{*key}", strict(get(cluster::preflist)))
        .route("/debug/replication", strict(get(cluster::replication)))
        .route("/debug/workers", strict(get(workers::workers)))
        .route("/debug/dashboard", strict(get(dashboard::data)))
        .route("/cluster", strict(get(cluster::cluster)))
        .route("/metrics", strict(get(metrics::metrics)))
        .route("/admin/leave", strict(post(admin_leave)))
        .route("/admin/remove/{id}", strict(post(admin_remove)))
        .route("/openapi.json", strict(get(openapi::serve)))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), fence_removed))
        .layer(middleware::from_fn_with_state(overload, overload::admit))
        .layer(middleware::from_fn_with_state(
            state.config.security.auth.clone(),
            auth::require_token,
        ))
        // Outside auth and load shedding: requests refused or shed count too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(middleware::from_fn_with_state(
            state.request_ids.clone(),
            request_id::tag,
        ))
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

#[utoipa::path(
    post,
    path = "/admin/leave",
    tag = "admin",
    responses(
        (status = 202, description = "The node hands its data to its new owners, and exits when done", body = openapi::LeaveBody),
        (status = 503, description = "`removed`: the cluster removed this node", body = error::ErrorBody),
    ),
)]
/// `POST /admin/leave`: 202 while the node moves its data to its new owners; it exits when
/// done.
async fn admin_leave(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if state.admin.start_leave() {
        Ok((StatusCode::ACCEPTED, Json(json!({"status": "leaving"}))).into_response())
    } else {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"status": "already leaving"})),
        )
            .into_response())
    }
}

#[utoipa::path(
    post,
    path = "/admin/remove/{id}",
    tag = "admin",
    params(
        ("id" = String, Path, pattern = "^[0-9a-fA-F]{16}$", description = "The member's node id: 16 hex digits"),
        openapi::RemoveQuery,
    ),
    responses(
        (status = 202, description = "The member is out of the ring", body = openapi::RemoveBody),
        (status = 400, description = "`bad_param`: not a node id, this node's own id, an unknown parameter, a bad `force`", body = error::ErrorBody),
        (status = 404, description = "`not_found`: not a member", body = error::ErrorBody),
        (status = 409, description = "`member_live`: the failure detector holds the member live (use `force`, or make it leave)", body = error::ErrorBody),
        (status = 500, description = "`internal`: the removal could not be recorded", body = error::ErrorBody),
        (status = 503, description = "`removed`: the cluster removed this node", body = error::ErrorBody),
    ),
)]
/// `POST /admin/remove/{id}[?force=true]`: takes a dead member out of the ring. A member
/// the failure detector holds live is refused (409 `member_live`) unless forced: it would
/// keep serving a ring of its own. Forced, it hears of the removal and stops serving.
async fn admin_remove(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let force = params::Query::parse(query.as_deref(), &["force"])?.bool("force")?;
    let id: crate::cluster::NodeId = id
        .parse()
        .map_err(|_| ApiError::bad_param(format!("{id:?} is not a node id (16 hex digits)")))?;
    let view = state.coord.view();
    if id == view.self_id {
        return Err(ApiError::bad_param(
            "a node cannot remove itself: use /admin/leave",
        ));
    }
    let Some(member) = view.members.get(&id) else {
        return Err(ApiError::not_found(format!("{id} is not a member")));
    };
    if member.live && !force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "member_live",
            format!(
                "{id} is live: stop it first and remove it once it shows DOWN, or make it \
                 leave (`ringkv leave --node http://{}`), which hands its data off; \
                 --force removes it anyway, and it then stops serving",
                member.http_addr
            ),
        ));
    }
    state.admin.remove(id, force).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("could not record the removal: {e}"),
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "removed", "id": id.to_string(), "forced": force})),
    )
        .into_response())
}

/// A node the cluster removed answers every KV request with 503 `removed`: its ring is its
/// own by now, and what it acknowledged would live on it alone. Nor does it change the
/// membership of a cluster it is no longer in (`/admin/…`).
async fn fence_removed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let fenced = path == "/kv"
        || path.starts_with("/kv/")
        || path == "/batch"
        || path.starts_with("/admin/");
    if fenced && state.readiness.is_removed() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "removed",
            crate::readiness::REMOVED_MESSAGE,
        )
        .into_response();
    }
    next.run(req).await
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "probes",
    responses((status = 200, description = "The process runs", body = openapi::HealthBody)),
)]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Whether the node is ready, and why not: the readiness flags, and the rejoin gate (a
/// rejoining node is not ready for the same reason it takes no KV request). Removal comes
/// first: a removed node must never look merely rejoining.
pub(crate) fn ready_check(state: &AppState) -> Result<(), NotReady> {
    match state.readiness.check(state.ready.load(Ordering::Acquire)) {
        Err(NotReady::Removed) => Err(NotReady::Removed),
        _ if gate::rejoin_reason(&state.coord.view()).is_some() => Err(NotReady::Rejoining),
        other => other,
    }
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    responses(
        (status = 200, description = "The node serves requests (`writable: false` when its storage refuses writes)", body = openapi::ReadyBody),
        (status = 503, description = "Not ready: joining, seeds unreached, rejoining, or removed", body = openapi::NotReadyBody),
    ),
)]
/// `GET /ready`: 200, or 503 with the error shape plus `status` and `reason` (the one
/// list of reasons is `readiness::NotReady`).
///
/// A node whose storage refuses writes stays 200, since it still serves reads and gossip
/// already routes writes around it; the body then adds `"writable": false` and why
/// (`write_state`, `reason`), so a probe that cares about writes can tell.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match ready_check(&state) {
        Ok(()) => {
            let write_state = state.local.write_state();
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
        }
        Err(why) => {
            let reason = why.reason();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": why.code(),
                    "message": reason,
                    "status": "not_ready",
                    "reason": reason,
                })),
            )
                .into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/debug/local/{key}",
    tag = "debug",
    params(openapi::KeyPath),
    responses(
        (status = 200, description = "Everything this node stores for the key: versions, tombstones, context", body = render::StoredSetJson),
        (status = 400, description = "`bad_key`", body = error::ErrorBody),
        (status = 404, description = "`not_found`: not stored on this node", body = error::ErrorBody),
        (status = 500, description = "`internal`: the storage failed", body = error::ErrorBody),
    ),
)]
async fn debug_local(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let key = kv::key_from_uri(&uri, "/debug/local/")?;
    match state
        .local
        .read(&key)
        .map_err(crate::coordinator::CoordError::from)?
    {
        Some(set) => Ok(Json(render::stored_set(key.as_str(), &set)).into_response()),
        None => Err(ApiError::not_found(format!(
            "key {key:?} is not stored on this node"
        ))),
    }
}

/// Records each request once, under its operation (from the method and route alone,
/// never the key): in `/metrics`' counters and histograms, and in the dashboard's window.
async fn record_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let op = Op::of(req.method(), req.uri().path());
    let started = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let (status, elapsed) = (resp.status().as_u16(), started.elapsed());
    state.http_metrics.record(op, status, elapsed);
    state.requests.record(op, status, elapsed);
    resp
}
