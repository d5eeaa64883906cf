//! `POST /batch`: many operations in one request. Not atomic: each op stands alone.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::coordinator::RequestOpts;
use crate::key::Key;
use crate::version::{Payload, VersionVector};

use super::batch_body;
use super::error::ApiError;
use super::kv::{body_error, content_type, parse_token, value_too_large};
use super::params::Query;
use super::render::{self, SiblingJson};
use super::AppState;

/// `{"ops": [...]}`, as the OpenAPI document describes it. The body is not parsed into
/// this: `batch_body` keeps each op as raw text (so a bad one gets its own 400 result, and
/// ops past the limit are counted, not held).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct BatchRequest {
    ops: Vec<RawOp>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchOp)]
struct RawOp {
    #[schema(value_type = super::openapi::BatchOpKind)]
    op: String,
    /// 1 to 1024 bytes of UTF-8.
    key: String,
    /// A `put`'s value (required there).
    value: Option<String>,
    /// How `value` is written (default `utf8`).
    #[schema(value_type = Option<super::openapi::Encoding>)]
    encoding: Option<String>,
    /// A `put`'s media type (default `application/octet-stream`).
    content_type: Option<String>,
    /// The causality token of a `put` or `delete`.
    token: Option<String>,
}

pub(super) enum Op {
    Get(Key),
    Put(Key, Option<VersionVector>, Payload),
    Delete(Key, Option<VersionVector>),
}

impl Op {
    pub(super) fn key(&self) -> &Key {
        match self {
            Op::Get(k) | Op::Put(k, _, _) | Op::Delete(k, _) => k,
        }
    }
}

/// One op's result: `status` as the single-key call would answer, then its siblings and
/// token, or its error.
#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct OpResult {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    siblings: Option<Vec<SiblingJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causality_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<ApiError> for OpResult {
    fn from(e: ApiError) -> Self {
        OpResult {
            status: e.status.as_u16(),
            error: Some(e.code),
            message: Some(e.message),
            ..Default::default()
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchBody {
    /// One per op, in order.
    results: Vec<OpResult>,
}

fn parse_op(raw: &RawValue, max_value: usize) -> Result<Op, ApiError> {
    let raw: RawOp =
        serde_json::from_str(raw.get()).map_err(|e| ApiError::bad_request(format!("op: {e}")))?;
    let key = Key::new(raw.key)?;
    let token = parse_token(raw.token.as_deref(), &key)?;
    match raw.op.as_str() {
        "get" => Ok(Op::Get(key)),
        "delete" => Ok(Op::Delete(key, token)),
        "put" => {
            let value = raw
                .value
                .ok_or_else(|| ApiError::bad_request("put needs a \"value\""))?;
            let data = match raw.encoding.as_deref() {
                None | Some("utf8") => Bytes::from(value),
                Some("base64") => Bytes::from(
                    STANDARD
                        .decode(value)
                        .map_err(|e| ApiError::bad_request(format!("value is not base64: {e}")))?,
                ),
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "encoding must be utf8 or base64, not {other:?}"
                    )))
                }
            };
            if data.len() > max_value {
                return Err(value_too_large(data.len(), max_value));
            }
            // Checked as PUT checks it: bounded, and a media type.
            let content_type = content_type(raw.content_type.as_deref())?;
            Ok(Op::Put(key, token, Payload::Value { data, content_type }))
        }
        other => Err(ApiError::bad_request(format!(
            "op must be put, get or delete, not {other:?}"
        ))),
    }
}

/// A batch body as the handler takes it: the whole (400 unless `{"ops":[…]}`, 413 past
/// `max_ops`), then each op on its own, so that a bad op fails alone. Pure, so that the
/// fuzz targets (`fuzz/`) check exactly what the handler runs.
pub(super) fn parse_batch(
    body: &[u8],
    max_ops: usize,
    max_value: usize,
) -> Result<Vec<Result<Op, ApiError>>, ApiError> {
    let ops = batch_body::parse(body, max_ops)
        .map_err(|e| ApiError::bad_request(format!("batch body is not {{\"ops\":[…]}}: {e}")))?;
    if ops.total > max_ops {
        return Err(ApiError::too_large(format!(
            "batch has {} ops; the limit is {max_ops} (--max-batch-ops)",
            ops.total,
        )));
    }
    Ok(ops
        .kept
        .into_iter()
        .map(|raw| parse_op(raw, max_value))
        .collect())
}

async fn run_op(state: &AppState, op: Op, opts: &RequestOpts) -> OpResult {
    let result =
        match op {
            Op::Get(key) => state.coord.get(&key, opts).await.map(|set| match set {
                Some(set) if set.has_live() => OpResult {
                    status: if set.live().count() > 1 { 300 } else { 200 },
                    siblings: Some(render::live_siblings(&set)),
                    causality_token: Some(render::token(&key, &set)),
                    ..Default::default()
                },
                // Like GET's 404: the token of what the read saw, even of nothing.
                other => OpResult {
                    causality_token: Some(render::token(&key, &other.unwrap_or_default())),
                    ..ApiError::not_found(format!("key {key:?} not found")).into()
                },
            }),
            Op::Put(key, seen, payload) => state
                .coord
                .put(key.clone(), seen, payload, opts)
                .await
                .map(|w| OpResult {
                    status: 204,
                    causality_token: Some(render::token(&key, &w.set)),
                    ..Default::default()
                }),
            Op::Delete(key, seen) => state.coord.delete(key.clone(), seen, opts).await.map(|d| {
                if d.found {
                    OpResult {
                        status: 204,
                        causality_token: Some(render::token(&key, &d.set)),
                        ..Default::default()
                    }
                } else {
                    OpResult {
                        causality_token: Some(render::token(&key, &d.set)),
                        ..ApiError::not_found(format!("key {key:?} not found")).into()
                    }
                }
            }),
        };
    result.unwrap_or_else(|e| ApiError::from(e).into())
}

#[utoipa::path(
    post,
    path = "/batch",
    tag = "kv",
    params(super::openapi::BatchQuery),
    request_body(content = BatchRequest, content_type = "application/json",
        description = "At most `--max-batch-ops` ops and `--max-batch-bytes` bytes. Not atomic: each op is applied on its own, in order"),
    responses(
        (status = 200, description = "One result per op, in order; a failed op has its own `status`, `error` and `message`", body = BatchBody),
        (status = 400, description = "`bad_param`, or `bad_request`: the body is not `{\"ops\": [...]}`", body = super::error::ErrorBody),
        (status = 413, description = "`too_large`: too many ops, or a body over `--max-batch-bytes`", body = super::error::ErrorBody),
        (status = 503, description = "`unavailable`: the node is rejoining; `removed`: the cluster removed this node", body = super::error::ErrorBody),
    ),
)]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchBody>, ApiError> {
    super::gate::kv_gate(&state)?;
    let limits = &state.config.limits;
    let opts = Query::parse(query.as_deref(), &["r", "w", "timeout_ms"])?
        .request_opts(state.config.replication.n, state.config.request_timeout)?;
    let body = body.map_err(|e| body_error(e, limits.max_batch_bytes))?;
    let ops = parse_batch(&body, limits.max_batch_ops, limits.max_value_bytes)?;
    let mut results: Vec<Option<OpResult>> = Vec::with_capacity(ops.len());
    let mut wave: Vec<(usize, Op)> = Vec::new();
    let mut wave_keys: HashSet<Key> = HashSet::new();
    for parsed in ops {
        let index = results.len();
        results.push(None);
        match parsed {
            Err(e) => results[index] = Some(e.into()),
            Ok(op) => {
                // Ops on one key must run in the order given; ops on different keys can run
                // together and share one commit. So a wave ends where a key repeats.
                if !wave_keys.insert(op.key().clone()) {
                    run_wave(&state, std::mem::take(&mut wave), &opts, &mut results).await;
                    wave_keys.clear();
                    wave_keys.insert(op.key().clone());
                }
                wave.push((index, op));
            }
        }
    }
    run_wave(&state, wave, &opts, &mut results).await;
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| OpResult {
                status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                error: Some("internal"),
                message: Some("op was not run".into()),
                ..Default::default()
            })
        })
        .collect();
    Ok(Json(BatchBody { results }))
}

async fn run_wave(
    state: &AppState,
    wave: Vec<(usize, Op)>,
    opts: &RequestOpts,
    results: &mut [Option<OpResult>],
) {
    let done = futures::future::join_all(
        wave.into_iter()
            .map(|(index, op)| async move { (index, run_op(state, op, opts).await) }),
    )
    .await;
    for (index, result) in done {
        results[index] = Some(result);
    }
}
