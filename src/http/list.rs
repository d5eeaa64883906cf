//! `GET /kv`: keys in byte order, filtered by prefix and range, one page at a time.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::kv::ListRange;

use super::error::ApiError;
use super::params::Query;
use super::render::{self, SiblingJson};
use super::AppState;

pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;
/// Stored keys looked at per page, per item asked for: bounds the work a page of mostly
/// tombstones can cost.
const SCAN_PER_ITEM: usize = 8;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ListItem {
    key: String,
    siblings: Vec<SiblingJson>,
    causality_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ListBody {
    items: Vec<ListItem>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The lower bound that is furthest along, and the upper bound that comes first.
struct Range {
    lower: Option<(Vec<u8>, bool)>, // (key, exclusive)
    upper: Option<Vec<u8>>,         // always exclusive
}

impl Range {
    fn raise(&mut self, key: Vec<u8>, exclusive: bool) {
        let replace = match &self.lower {
            None => true,
            Some((k, ex)) => key > *k || (key == *k && exclusive && !ex),
        };
        if replace {
            self.lower = Some((key, exclusive));
        }
    }

    fn cap(&mut self, key: Vec<u8>) {
        if self.upper.as_ref().is_none_or(|u| key < *u) {
            self.upper = Some(key);
        }
    }
}

/// The first key after every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[utoipa::path(
    get,
    path = "/kv",
    operation_id = "list_keys",
    tag = "kv",
    params(super::openapi::ListQuery),
    responses(
        (status = 200, description = "One page of live keys in byte order, merged from every healthy member's scan", body = ListBody),
        (status = 400, description = "`bad_param`: an unknown parameter, a bad `limit`, `r` or `timeout_ms`, a `cursor` this API did not return, a bad `prefix`, a value that is not UTF-8 once decoded", body = super::error::ErrorBody),
        (status = 500, description = "`internal`: the storage failed", body = super::error::ErrorBody),
        (status = 503, description = "`unavailable`: a ring range had no replica that answered (a listing is never silently partial), or the node is rejoining; `removed`: the cluster removed this node", body = super::error::ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListBody>, ApiError> {
    super::gate::kv_gate(&state)?;
    let q = Query::parse(
        query.as_deref(),
        &[
            "prefix",
            "start",
            "end",
            "limit",
            "cursor",
            "r",
            "timeout_ms",
        ],
    )?;
    let opts = q.request_opts(state.config.replication.n, state.config.request_timeout)?;
    let limit = q.number("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let mut range = Range {
        lower: None,
        upper: None,
    };
    if let Some(start) = q.get("start") {
        range.raise(start.as_bytes().to_vec(), false);
    }
    if let Some(prefix) = q.get("prefix").filter(|p| !p.is_empty()) {
        range.raise(prefix.as_bytes().to_vec(), false);
        if let Some(end) = prefix_end(prefix.as_bytes()) {
            range.cap(end);
        }
    }
    if let Some(end) = q.get("end") {
        range.cap(end.as_bytes().to_vec());
    }
    if let Some(cursor) = q.get("cursor") {
        let after = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| ApiError::bad_param("cursor: not a cursor this API returned"))?;
        range.raise(after, true);
    }
    let list_range = ListRange {
        start: range.lower.as_ref().map(|(k, _)| k.clone()),
        start_exclusive: range.lower.as_ref().is_some_and(|(_, ex)| *ex),
        end: range.upper,
    };
    let page = state
        .coord
        .list(
            &list_range,
            limit,
            limit.saturating_mul(SCAN_PER_ITEM),
            opts.timeout,
        )
        .await?;
    let items = page
        .items
        .into_iter()
        .map(|(key, set)| ListItem {
            key: key.as_str().to_owned(),
            siblings: render::live_siblings(&set),
            causality_token: render::token(&key, &set),
        })
        .collect();
    Ok(Json(ListBody {
        items,
        next_cursor: page
            .resume_after
            .map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes())),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_max_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
