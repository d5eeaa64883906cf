//! The API's parsers, opened to the fuzz targets (`fuzz/`, crate `ringkv-fuzz`): hidden
//! from the docs and no part of the API; the handlers call the same functions.

use crate::key::Key;
use crate::version::{Payload, VersionVector};

use super::batch::{self, Op};
use super::error::ApiError;

pub use super::kv::{content_type, key_from_uri, parse_token, MAX_CONTENT_TYPE_LEN};
pub use super::params::{Query, MAX_TIMEOUT_MS};

/// One op of a batch body, as `POST /batch` parsed it (its own type stays private).
#[derive(Debug)]
pub enum BatchOp {
    Get(Key),
    Put(Key, Option<VersionVector>, Payload),
    Delete(Key, Option<VersionVector>),
}

/// `POST /batch`'s parse and validation of a body: the batch's error, or each op's result.
pub fn batch(
    body: &[u8],
    max_ops: usize,
    max_value: usize,
) -> Result<Vec<Result<BatchOp, ApiError>>, ApiError> {
    let ops = batch::parse_batch(body, max_ops, max_value)?;
    Ok(ops
        .into_iter()
        .map(|op| {
            op.map(|op| match op {
                Op::Get(key) => BatchOp::Get(key),
                Op::Put(key, token, payload) => BatchOp::Put(key, token, payload),
                Op::Delete(key, token) => BatchOp::Delete(key, token),
            })
        })
        .collect())
}
