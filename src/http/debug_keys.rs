//! `GET /debug/keys?after=&limit=`: the keys this node stores, in key order, tombstoned
//! ones included, one page at a time. This is what a placement check (`ringkv verify`)
//! compares with the preference lists; it is not a client API (`GET /kv` is). A page
//! also stops at `--max-list-bytes` of records read.

use std::ops::Bound;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;

use crate::coordinator::CoordError;
use crate::kv::summary::digest;

use super::error::ApiError;
use super::params::Query;
use super::AppState;

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredKeyJson {
    key: String,
    /// The set's digest, as anti-entropy compares it: equal on two nodes when their
    /// copies are equal.
    digest: String,
    /// Whether any version is a value (not a tombstone).
    live: bool,
    versions: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredKeysBody {
    node_id: String,
    keys: Vec<StoredKeyJson>,
    /// Pass as `after` for the next page; null on the last page.
    next_after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/debug/keys",
    operation_id = "debug_keys",
    tag = "debug",
    params(super::openapi::DebugKeysQuery),
    responses(
        (status = 200, description = "One page of the keys this node stores, tombstoned ones included", body = StoredKeysBody),
        (status = 400, description = "`bad_param`: an unknown parameter, a bad `limit`, a value that is not UTF-8 once decoded", body = super::error::ErrorBody),
        (status = 500, description = "`internal`: the storage failed", body = super::error::ErrorBody),
    ),
)]
pub async fn keys(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<StoredKeysBody>, ApiError> {
    let q = Query::parse(query.as_deref(), &["after", "limit"])?;
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_param(format!("limit must be 1..{MAX_LIMIT}, not {raw:?}"))
            })?,
    };
    let start = q
        .get("after")
        .map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_bytes()));
    // Keys only on the page, but the scan reads whole sets: bounded in bytes, like a
    // listing, so a page of large values cannot take the node's memory.
    let page = state
        .local
        .scan(
            start,
            Bound::Unbounded,
            limit,
            state.config.limits.max_list_bytes,
        )
        .map_err(CoordError::from)?;
    let next_after = if page.more {
        page.rows.last().map(|(k, _)| k.as_str().to_owned())
    } else {
        None
    };
    let keys = page
        .rows
        .into_iter()
        .map(|(key, set)| StoredKeyJson {
            key: key.as_str().to_owned(),
            digest: format!("{:016x}", digest(&set)),
            live: set.has_live(),
            versions: set.len(),
        })
        .collect();
    Ok(Json(StoredKeysBody {
        node_id: state.coord.view().self_id.to_string(),
        keys,
        next_after,
    }))
}
