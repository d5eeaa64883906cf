//! `POST /batch` bodies: the JSON parse of `{"ops": [...]}` and every op's validation, as
//! the handler runs them (`ringkv::http::fuzzing::batch`), with small limits so that inputs
//! reach them.
//!
//! Checks: a refused body is a 400 `bad_request`, or a 413 `too_large` for more ops than the
//! limit; an accepted body has at most the limit of ops; each accepted op has a valid key, a
//! value within the limit, a content type the API accepts and a token within its bounds; a
//! refused op is a 4xx of the API's shape; the accepted ops, written back as a body (values
//! in base64, tokens re-encoded), parse to the same ops, and the refused ones stay refused;
//! the parse holds no more memory than the body justifies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::StatusCode;
use ringkv::http::fuzzing::{self, content_type, BatchOp};
use ringkv::http::ApiError;
use ringkv::key::MAX_KEY_BYTES;
use ringkv::version::{key_hash, CausalityToken, Payload, MAX_TOKEN_ACTORS};
use serde_json::{json, Value};

use crate::alloc::bounded;

pub const MAX_OPS: usize = 8;
pub const MAX_VALUE: usize = 64;

pub fn run(data: &[u8]) {
    let parsed = bounded("parse batch", data.len(), || {
        fuzzing::batch(data, MAX_OPS, MAX_VALUE)
    });
    let ops = match parsed {
        Ok(ops) => ops,
        Err(e) => {
            let ok = matches!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "bad_request")
                    | (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            );
            assert!(ok, "a batch refused with {e:?}");
            return;
        }
    };
    assert!(ops.len() <= MAX_OPS, "{} ops let through", ops.len());
    for op in &ops {
        match op {
            Ok(op) => check_op(op),
            Err(e) => check_op_error(e),
        }
    }
    let rebuilt = json!({ "ops": ops.iter().map(body_of).collect::<Vec<_>>() });
    let bytes = serde_json::to_vec(&rebuilt).expect("JSON values serialize");
    let again = fuzzing::batch(&bytes, MAX_OPS, MAX_VALUE)
        .unwrap_or_else(|e| panic!("a rebuilt batch was refused: {e:?}\n{rebuilt}"));
    assert_eq!(again.len(), ops.len());
    for (first, second) in ops.iter().zip(&again) {
        match (first, second) {
            (Ok(a), Ok(b)) => assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "an op changed when written back"
            ),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("an op written back went from {a:?} to {b:?}"),
        }
    }
}

fn check_op(op: &BatchOp) {
    let (key, token) = match op {
        BatchOp::Get(key) => (key, None),
        BatchOp::Put(key, token, payload) => {
            let Payload::Value {
                data,
                content_type: ct,
            } = payload
            else {
                panic!("a put parsed to a tombstone");
            };
            assert!(
                data.len() <= MAX_VALUE,
                "a {}-byte value let through",
                data.len()
            );
            assert!(
                content_type(Some(ct)).is_ok(),
                "content type {ct:?} let through"
            );
            (key, token.as_ref())
        }
        BatchOp::Delete(key, token) => (key, token.as_ref()),
    };
    assert!((1..=MAX_KEY_BYTES).contains(&key.as_bytes().len()));
    if let Some(t) = token {
        assert!(t.len() <= MAX_TOKEN_ACTORS && t.max_counter() < u64::MAX);
    }
}

fn check_op_error(e: &ApiError) {
    assert!(
        e.status.is_client_error() && !e.code.is_empty() && !e.message.is_empty(),
        "an op refused with {e:?}"
    );
}

/// The JSON of an op that parses to `op`; for a refused op, one that is refused too.
fn body_of(op: &Result<BatchOp, ApiError>) -> Value {
    let token = |key: &ringkv::key::Key, t: &Option<ringkv::version::VersionVector>| {
        t.as_ref().map(|vv| {
            CausalityToken {
                key_hash: key_hash(key.as_bytes()),
                context: vv.clone(),
            }
            .encode()
        })
    };
    match op {
        Err(_) => json!({ "op": "get", "key": "" }),
        Ok(BatchOp::Get(key)) => json!({ "op": "get", "key": key.as_str() }),
        Ok(BatchOp::Delete(key, t)) => {
            json!({ "op": "delete", "key": key.as_str(), "token": token(key, t) })
        }
        Ok(BatchOp::Put(key, t, payload)) => {
            let (data, ct) = match payload {
                Payload::Value { data, content_type } => (STANDARD.encode(data), content_type),
                Payload::Tombstone => unreachable!("checked by check_op"),
            };
            json!({
                "op": "put",
                "key": key.as_str(),
                "value": data,
                "encoding": "base64",
                "content_type": ct,
                "token": token(key, t),
            })
        }
    }
}
