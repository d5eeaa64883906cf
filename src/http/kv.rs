//! `/kv/{key}`: GET, HEAD, PUT and DELETE of one key.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::key::Key;
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

/// The causality token a client sent, if any.
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<VersionVector>, ApiError> {
    match headers.get(TOKEN_HEADER) {
        None => Ok(None),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::from(crate::version::TokenError::NotBase64))?;
            Ok(Some(CausalityToken::decode(text.trim())?.0))
        }
    }
}

pub fn parse_token(text: Option<&str>) -> Result<Option<VersionVector>, ApiError> {
    text.map(|t| CausalityToken::decode(t).map(|t| t.0))
        .transpose()
        .map_err(ApiError::from)
}

#[derive(Serialize)]
struct SiblingsBody {
    siblings: Vec<SiblingJson>,
    causality_token: String,
}

fn token_header(set: &SiblingSet) -> (header::HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&render::token(set)).unwrap_or_else(|_| HeaderValue::from_static(""));
    (header::HeaderName::from_static(TOKEN_HEADER), value)
}

/// GET's answer for a set: 200 with the raw value, 300 with the siblings, or 404.
pub fn read_response(key: &Key, set: Option<SiblingSet>) -> Response {
    let Some(set) = set.filter(|s| !s.is_empty()) else {
        return ApiError::not_found(format!("key {key:?} not found")).into_response();
    };
    let token = token_header(&set);
    let mut live = set.live();
    match (live.next(), live.next()) {
        (None, _) => {
            let mut resp = ApiError::not_found(format!("key {key:?} is deleted")).into_response();
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

pub async fn head_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    super::gate::kv_gate(&state)?;
    let key = key_from_uri(&uri, "/kv/")?;
    let opts = Query::parse(query.as_deref(), &["r", "timeout_ms"])?
        .request_opts(state.config.replication.n, state.config.request_timeout)?;
    let set = state.coord.get(&key, &opts).await?;
    match set {
        Some(set) if set.has_live() => {
            let siblings = set.live().count().to_string();
            let siblings =
                HeaderValue::from_str(&siblings).unwrap_or(HeaderValue::from_static("1"));
            Ok((
                StatusCode::OK,
                [
                    token_header(&set),
                    (header::HeaderName::from_static("x-siblings"), siblings),
                ],
            )
                .into_response())
        }
        _ => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

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
    let seen = token_from_headers(&headers)?;
    let max = state.config.limits.max_value_bytes;
    let data = body.map_err(|e| body_error(e, max))?;
    if data.len() > max {
        return Err(value_too_large(data.len(), max));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Content-Type is not visible ASCII"))?
            .to_owned(),
    };
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
    Ok((StatusCode::NO_CONTENT, [token_header(&written.set)], dot).into_response())
}

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
    let seen = token_from_headers(&headers)?;
    let deleted = state.coord.delete(key.clone(), seen, &opts).await?;
    if !deleted.found {
        return Err(ApiError::not_found(format!("key {key:?} not found")));
    }
    Ok((
        StatusCode::NO_CONTENT,
        [token_header(&deleted.set)],
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
