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
/// Bytes of checksum a cursor ends with, so a cursor this API did not return is told
/// apart from one it did (a bare base64 key would decode from almost any string).
const CURSOR_CHECK_BYTES: usize = 4;

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
    // `Query` decodes leniently (a bad escape passes through, bad UTF-8 becomes U+FFFD):
    // a bound that changed in decoding would list the wrong keys, so each is decoded
    // again, strictly.
    let raw = query.as_deref().unwrap_or("");
    for name in ["start", "prefix", "end"] {
        strict_values(raw, name)?;
    }
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
        range.raise(decode_cursor(cursor)?, true);
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
            state.config.limits.max_list_bytes,
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
        next_cursor: page.resume_after.map(|k| encode_cursor(k.as_bytes())),
    }))
}

fn cursor_check(key: &[u8]) -> [u8; CURSOR_CHECK_BYTES] {
    let [a, b, c, d, ..] = xxhash_rust::xxh3::xxh3_64(key).to_le_bytes();
    [a, b, c, d]
}

/// The key to resume after, and its checksum, in URL-safe base64.
fn encode_cursor(key: &[u8]) -> String {
    let mut bytes = key.to_vec();
    bytes.extend_from_slice(&cursor_check(key));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key a cursor resumes after, if this API returned it: the checksum holds and the key
/// is one a client could have written.
fn decode_cursor(cursor: &str) -> Result<Vec<u8>, ApiError> {
    let bad = || ApiError::bad_param("cursor: not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let split = bytes
        .len()
        .checked_sub(CURSOR_CHECK_BYTES)
        .ok_or_else(bad)?;
    let (key, check) = bytes.split_at(split);
    if check != cursor_check(key) {
        return Err(bad());
    }
    let key = String::from_utf8(key.to_vec()).map_err(|_| bad())?;
    let key = crate::key::Key::new(key).map_err(|_| bad())?;
    Ok(key.as_bytes().to_vec())
}

/// Every value of `name` in the raw query, decoded strictly: `+` is a space, and a `%` not
/// followed by two hex digits, or bytes that are not UTF-8 once decoded, are a 400.
fn strict_values(raw: &str, name: &str) -> Result<Vec<String>, ApiError> {
    let mut values = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if n != name {
            continue;
        }
        let spaced = v.replace('+', " ");
        let escapes_ok = spaced.match_indices('%').all(|(i, _)| {
            spaced
                .as_bytes()
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
        let decoded = escapes_ok
            .then(|| {
                percent_encoding::percent_decode_str(&spaced)
                    .decode_utf8()
                    .ok()
            })
            .flatten()
            .ok_or_else(|| {
                ApiError::bad_param(format!(
                    "{name}: {v:?} does not decode (a bad %-escape, or not UTF-8 once decoded)"
                ))
            })?;
        values.push(decoded.into_owned());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_decodes_only_if_this_api_made_it() {
        let cursor = encode_cursor("user/42".as_bytes());
        assert_eq!(decode_cursor(&cursor).unwrap(), b"user/42");
        for garbage in ["garbage", "", "!!", "abcd", "Z2FyYmFnZQ"] {
            assert_eq!(
                decode_cursor(garbage).unwrap_err().code,
                "bad_param",
                "{garbage}"
            );
        }
        // A checksum that holds over bytes that are no key is refused too.
        assert!(decode_cursor(&encode_cursor(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn bounds_decode_strictly() {
        assert_eq!(
            strict_values("prefix=a%2Fb+c&limit=3", "prefix").unwrap(),
            vec!["a/b c".to_owned()]
        );
        assert!(strict_values("prefix=%zz", "prefix").is_err());
        assert!(strict_values("prefix=ab%4", "prefix").is_err());
        assert!(strict_values("start=%FF", "start").is_err());
        assert!(strict_values("start=%FF", "prefix").unwrap().is_empty());
    }

    #[test]
    fn prefix_end_skips_max_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
