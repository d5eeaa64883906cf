//! `/kv/{key}`: GET, HEAD, PUT and DELETE of one key.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::coordinator::RequestOpts;
use crate::key::Key;
use crate::quorum::Quorum;
use crate::version::{CausalityToken, Dot, Payload, SiblingSet, VersionVector};

use super::error::ApiError;
use super::params::Query;
use super::render::{self, SiblingJson};
use super::AppState;

pub const TOKEN_HEADER: &str = "x-causality-token";
pub const DOT_HEADER: &str = "x-ringkv-dot";
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The key is taken from the raw path, not from axum's `Path`, so that decoding is ours
/// and strict (see [`Key::from_percent_encoded`]) and errors have our shape.
pub fn key_from_uri(uri: &Uri, prefix: &str) -> Result<Key, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    Ok(Key::from_percent_encoded(raw)?)
}

/// The causality token a client sent with a request for `key`, if any. It must decode,
/// be within bounds, and have been issued for this key (see [`CausalityToken::decode_for`]).
pub fn token_from_headers(
    headers: &HeaderMap,
    key: &Key,
) -> Result<Option<VersionVector>, ApiError> {
    match headers.get(TOKEN_HEADER) {
        None => Ok(None),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::from(crate::version::TokenError::NotBase64))?;
            parse_token(Some(text.trim()), key)
        }
    }
}

pub fn parse_token(text: Option<&str>, key: &Key) -> Result<Option<VersionVector>, ApiError> {
    text.map(|t| CausalityToken::decode_for(t, key.as_bytes()))
        .transpose()
        .map_err(ApiError::from)
}

/// The longest `Content-Type` stored with a value. It is replayed as a header on every
/// read, so it is bounded like everything else a client stores.
pub const MAX_CONTENT_TYPE_LEN: usize = 256;

/// A client's content type, checked before anything is stored: at most
/// [`MAX_CONTENT_TYPE_LEN`] bytes, and a media type (`type/subtype`, parameters allowed),
/// so that it can be sent back as a header as it came.
pub fn content_type(raw: Option<&str>) -> Result<String, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    if raw.len() > MAX_CONTENT_TYPE_LEN {
        return Err(ApiError::bad_content_type(format!(
            "content type is {} bytes; the limit is {MAX_CONTENT_TYPE_LEN}",
            raw.len()
        )));
    }
    let parsed = raw.parse::<mime::Mime>().map_err(|e| {
        ApiError::bad_content_type(format!("content type {raw:?} is not a media type: {e}"))
    })?;
    // `mime` lets an empty subtype through ("text/").
    if parsed.type_().as_str().is_empty() || parsed.subtype().as_str().is_empty() {
        return Err(ApiError::bad_content_type(format!(
            "content type {raw:?} is not a media type: it needs type/subtype"
        )));
    }
    if HeaderValue::from_str(raw).is_err() {
        return Err(ApiError::bad_content_type(format!(
            "content type {raw:?} cannot be sent back as a header"
        )));
    }
    Ok(raw.to_owned())
}

/// What a write's conditional headers ask for. `If-None-Match: *` is create-only; every
/// other conditional header is refused rather than ignored, since this API has no ETags
/// to compare and silently ignoring a precondition would be a write the client did not
/// ask for.
pub fn create_only(headers: &HeaderMap) -> Result<bool, ApiError> {
    for name in [
        header::IF_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        if headers.contains_key(&name) {
            return Err(ApiError::bad_request(format!(
                "{name} is not supported; only If-None-Match: * (create-only) is"
            )));
        }
    }
    let mut values = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    if values.peek().is_none() {
        return Ok(false);
    }
    for v in values {
        if v.to_str().ok().map(str::trim) != Some("*") {
            return Err(ApiError::bad_request(
                "If-None-Match takes only \"*\" (create-only); this API has no ETags",
            ));
        }
    }
    Ok(true)
}

/// GET's 300: the live siblings, and the token that covers them all.
#[derive(Serialize, utoipa::ToSchema)]
struct SiblingsBody {
    siblings: Vec<SiblingJson>,
    causality_token: String,
}

fn token_header(key: &Key, set: &SiblingSet) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&render::token(key, set))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    (header::HeaderName::from_static(TOKEN_HEADER), value)
}

/// GET's answer for a set: 200 with the raw value, 300 with the siblings, or 404.
///
/// A 404 carries a token too: of the tombstones the read saw, or of the empty context
/// when it saw nothing. A write with it supersedes only that, where a write without a
/// token would supersede whatever its coordinator holds — a live value a stale 404 missed.
pub fn read_response(key: &Key, set: Option<SiblingSet>) -> Response {
    let set = set.unwrap_or_default();
    let token = token_header(key, &set);
    let mut live = set.live();
    match (live.next(), live.next()) {
        (None, _) => {
            let message = if set.is_empty() {
                format!("key {key:?} not found")
            } else {
                format!("key {key:?} is deleted")
            };
            let mut resp = ApiError::not_found(message).into_response();
            resp.headers_mut().insert(token.0, token.1);
            resp
        }
        (Some(only), None) => {
            let Payload::Value { data, content_type } = &only.payload else {
                unreachable!("live() yields values only")
            };
            let ct = HeaderValue::from_str(content_type)
                .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, ct), token],
                Body::from(data.clone()),
            )
                .into_response()
        }
        _ => {
            let body = SiblingsBody {
                siblings: render::live_siblings(&set),
                causality_token: token.1.to_str().unwrap_or_default().to_owned(),
            };
            (StatusCode::MULTIPLE_CHOICES, [token], Json(body)).into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/kv/{key}",
    tag = "kv",
    params(
        super::openapi::KeyPath,
        super::openapi::ReadQuery,
    ),
    responses(
        (status = 200, description = "The one live value, raw, with the `Content-Type` it was stored with",
            content(("*/*")),
            headers(("x-causality-token" = String, description = "What this read saw: send it with the next write"))),
        (status = 300, description = "Concurrent siblings: write their merge with this token to resolve them",
            body = SiblingsBody,
            headers(("x-causality-token" = String, description = "Covers every sibling"))),
        (status = 400, description = "`bad_key`, `bad_param` (unknown parameter, bad `r` or `timeout_ms`)", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no live value (never written, or deleted)", body = super::error::ErrorBody,
            headers(("x-causality-token" = String, description = "What the read saw (tombstones, or the empty context): write with it after a 404"))),
        (status = 500, description = "`internal`: the storage failed", body = super::error::ErrorBody),
        (status = 503, description = "`unavailable`: fewer than R replicas answered in time, or the node is rejoining; `removed`: the cluster removed this node", body = super::error::ErrorBody),
    ),
)]
pub async fn get_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    super::gate::kv_gate(&state)?;
    let key = key_from_uri(&uri, "/kv/")?;
    let opts = Query::parse(query.as_deref(), &["r", "timeout_ms"])?
        .request_opts(state.config.replication.n, state.config.request_timeout)?;
    let set = state.coord.get(&key, &opts).await?;
    Ok(read_response(&key, set))
}

#[utoipa::path(
    head,
    path = "/kv/{key}",
    tag = "kv",
    params(
        super::openapi::KeyPath,
        super::openapi::ReadQuery,
    ),
    responses(
        (status = 200, description = "The key has a live value (no body)",
            headers(
                ("x-causality-token" = String, description = "What this read saw"),
                ("x-siblings" = u64, description = "How many live siblings there are"),
            )),
        (status = 400, description = "`bad_key`, `bad_param` (no body)"),
        (status = 404, description = "No live value (no body)",
            headers(("x-causality-token" = String, description = "What the read saw: write with it after a 404"))),
        (status = 500, description = "`internal`: the storage failed (no body)"),
        (status = 503, description = "`unavailable` or `removed` (no body)"),
    ),
)]
pub async fn head_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    super::gate::kv_gate(&state)?;
    let key = key_from_uri(&uri, "/kv/")?;
    let opts = Query::parse(query.as_deref(), &["r", "timeout_ms"])?
        .request_opts(state.config.replication.n, state.config.request_timeout)?;
    let set = state.coord.get(&key, &opts).await?.unwrap_or_default();
    match set {
        set if set.has_live() => {
            let siblings = set.live().count().to_string();
            let siblings =
                HeaderValue::from_str(&siblings).unwrap_or(HeaderValue::from_static("1"));
            Ok((
                StatusCode::OK,
                [
                    token_header(&key, &set),
                    (header::HeaderName::from_static("x-siblings"), siblings),
                ],
            )
                .into_response())
        }
        // Like GET's 404: the token of what the read saw, for a safe write after it.
        set => Ok((StatusCode::NOT_FOUND, [token_header(&key, &set)]).into_response()),
    }
}

#[utoipa::path(
    put,
    path = "/kv/{key}",
    tag = "kv",
    params(
        super::openapi::KeyPath,
        super::openapi::PutQuery,
        ("x-causality-token" = Option<String>, Header, description = "The token of the read this write follows: the write supersedes exactly what it saw. Without one it supersedes whatever the coordinator holds"),
        ("If-None-Match" = Option<super::openapi::AnyEtag>, Header, description = "`*` only: create-only, `412` when a replica that answered at W holds a live value. Any other conditional header is `400`"),
    ),
    request_body(
        description = "The value: opaque bytes, at most `--max-value-bytes`. Its `Content-Type` (a media type of at most 256 bytes; default `application/octet-stream`) is stored and returned as given",
        content(
            (super::openapi::RawValue = "application/octet-stream"),
            (String = "text/plain"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 204, description = "Stored at W",
            headers(
                ("x-causality-token" = String, description = "The token of the new version"),
                ("x-ringkv-dot" = String, description = "`<actor>:<counter>`: the version this write created"),
            ),
            links(
                ("GetKey" = (operation_id = "get_key", parameters(("key" = "$request.path.key")),
                    description = "Read back what was written")),
                ("DeleteKey" = (operation_id = "delete_key", parameters(("key" = "$request.path.key")),
                    description = "Delete what was written")),
            )),
        (status = 200, description = "With `returnbody=true`: the stored value, as `GET` answers it", content(("*/*")),
            headers(
                ("x-causality-token" = String, description = "The token of the new version"),
                ("x-ringkv-dot" = String, description = "`<actor>:<counter>`: the version this write created"),
            )),
        (status = 300, description = "With `returnbody=true`: the siblings the key holds now", body = SiblingsBody,
            headers(
                ("x-causality-token" = String, description = "Covers every sibling"),
                ("x-ringkv-dot" = String, description = "`<actor>:<counter>`: the version this write created"),
            )),
        (status = 400, description = "`bad_key`, `bad_param`, `bad_token` (undecodable, out of bounds, or issued for another key), `bad_content_type`, `bad_request` (an unsupported conditional header, an unreadable body)", body = super::error::ErrorBody),
        (status = 409, description = "`sibling_limit`: the write would leave more siblings than the cap; merge them with the token first", body = super::error::ErrorBody),
        (status = 412, description = "`precondition_failed`: `If-None-Match: *` and the key has a value", body = super::error::ErrorBody),
        (status = 413, description = "`too_large`: the value is over `--max-value-bytes`", body = super::error::ErrorBody),
        (status = 500, description = "`internal`: the storage failed", body = super::error::ErrorBody),
        (status = 503, description = "`unavailable`: fewer than W replicas acknowledged in time (the write may still be applied), or the node is rejoining; `removed`: the cluster removed this node", body = super::error::ErrorBody),
        (status = 507, description = "`insufficient_storage`: the replicas' storage is full; retry later or through another node", body = super::error::ErrorBody),
    ),
)]
pub async fn put_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::gate::kv_gate(&state)?;
    let key = key_from_uri(&uri, "/kv/")?;
    let query = Query::parse(query.as_deref(), &["w", "timeout_ms", "returnbody"])?;
    let opts = query.request_opts(state.config.replication.n, state.config.request_timeout)?;
    let return_body = query.bool("returnbody")?;
    let mut seen = token_from_headers(&headers, &key)?;
    let create_only = create_only(&headers)?;
    let max = state.config.limits.max_value_bytes;
    let data = body.map_err(|e| body_error(e, max))?;
    if data.len() > max {
        return Err(value_too_large(data.len(), max));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => content_type(None)?,
        Some(v) => {
            content_type(Some(v.to_str().map_err(|_| {
                ApiError::bad_content_type("Content-Type is not visible ASCII")
            })?))?
        }
    };
    if create_only {
        seen = Some(absent_at_w(&state, &key, &opts, seen).await?);
    }
    let written = state
        .coord
        .put(
            key.clone(),
            seen,
            Payload::Value { data, content_type },
            &opts,
        )
        .await?;
    let dot = dot_header(written.dot);
    if return_body {
        let mut response = read_response(&key, Some(written.set));
        response.headers_mut().extend(dot);
        return Ok(response);
    }
    Ok((
        StatusCode::NO_CONTENT,
        [token_header(&key, &written.set)],
        dot,
    )
        .into_response())
}

/// `If-None-Match: *`: reads the key at W first, and refuses the write with 412 if any
/// replica that answered holds a live value. Best-effort, as any precondition in a
/// leaderless store: a concurrent create on another coordinator, or a value on a replica
/// outside the W that answered, is not seen, and then both writes stay as siblings (no
/// write is lost either way). Returns the token the write goes out with: the client's, or
/// that of what the read saw (tombstones), so that the write supersedes only that.
async fn absent_at_w(
    state: &AppState,
    key: &Key,
    opts: &RequestOpts,
    seen: Option<VersionVector>,
) -> Result<VersionVector, ApiError> {
    let w = opts
        .w
        .unwrap_or(Quorum::Count(state.coord.replication().w.max(1)));
    let read_opts = RequestOpts {
        r: Some(w),
        ..*opts
    };
    let found = state.coord.get(key, &read_opts).await?.unwrap_or_default();
    if found.has_live() {
        return Err(ApiError::precondition_failed(format!(
            "key {key:?} has a value (If-None-Match: *)"
        )));
    }
    Ok(seen.unwrap_or_else(|| found.context().clone()))
}

#[utoipa::path(
    delete,
    path = "/kv/{key}",
    tag = "kv",
    params(
        super::openapi::KeyPath,
        super::openapi::WriteQuery,
        ("x-causality-token" = Option<String>, Header, description = "The token of the read this delete follows: the tombstone supersedes exactly what it saw"),
    ),
    responses(
        (status = 204, description = "A tombstone stored at W",
            headers(
                ("x-causality-token" = String, description = "The token of the tombstone"),
                ("x-ringkv-dot" = String, description = "`<actor>:<counter>`: the version this delete created"),
            )),
        (status = 400, description = "`bad_key`, `bad_param`, `bad_token`, `bad_request` (a conditional header)", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no live value was found", body = super::error::ErrorBody,
            headers(("x-causality-token" = String, description = "What the delete's read saw"))),
        (status = 409, description = "`sibling_limit`", body = super::error::ErrorBody),
        (status = 500, description = "`internal`: the storage failed", body = super::error::ErrorBody),
        (status = 503, description = "`unavailable`: fewer than W replicas acknowledged in time, or the node is rejoining; `removed`: the cluster removed this node", body = super::error::ErrorBody),
        (status = 507, description = "`insufficient_storage`: the replicas' storage is full", body = super::error::ErrorBody),
    ),
)]
pub async fn delete_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::gate::kv_gate(&state)?;
    let key = key_from_uri(&uri, "/kv/")?;
    let opts = Query::parse(query.as_deref(), &["w", "timeout_ms"])?
        .request_opts(state.config.replication.n, state.config.request_timeout)?;
    let seen = token_from_headers(&headers, &key)?;
    if create_only(&headers)? {
        return Err(ApiError::bad_request(
            "If-None-Match: * is a create-only PUT; a DELETE does not take it",
        ));
    }
    let deleted = state.coord.delete(key.clone(), seen, &opts).await?;
    if !deleted.found {
        // The token of what the delete's read saw, as GET's 404 carries it.
        let mut resp = ApiError::not_found(format!("key {key:?} not found")).into_response();
        let (name, value) = token_header(&key, &deleted.set);
        resp.headers_mut().insert(name, value);
        return Ok(resp);
    }
    Ok((
        StatusCode::NO_CONTENT,
        [token_header(&key, &deleted.set)],
        dot_header(deleted.dot),
    )
        .into_response())
}

/// `X-Ringkv-Dot: <actor>:<counter>`, the version a write created. Clients need not care;
/// it lets a history checker (the simulation's) tell exactly which version a write made.
fn dot_header(dot: Option<Dot>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(dot) = dot {
        let value = format!("{}:{}", dot.actor, dot.counter);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(DOT_HEADER), value);
        }
    }
    headers
}

pub fn value_too_large(len: usize, max: usize) -> ApiError {
    ApiError::too_large(format!(
        "value is {len} bytes; the limit is {max} (--max-value-bytes)"
    ))
}

/// Maps axum's body rejection to our error shape.
pub fn body_error(e: BytesRejection, max: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("request body is over the limit of {max} bytes"))
    } else {
        ApiError::bad_request(format!("could not read the request body: {e}"))
    }
}

/// `/kv/` with nothing after it.
pub async fn empty_key() -> ApiError {
    ApiError::from(crate::key::KeyError::Empty)
}
