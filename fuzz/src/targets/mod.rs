//! The targets, one per decoder; each `run(&[u8])` panics when a check fails.
//!
//! - [`frame`]: RPC frames: length prefix, version byte, the request and response enums.
//! - [`handshake`]: the RPC handshake's server side, against garbage, honest and forged peers.
//! - [`token`]: causality tokens (format 2), and the trimming of the tokens the API issues.
//! - [`dvv`]: sibling sets' `sync` and `update` laws, on replayed histories and decoded sets.
//! - [`http_key`]: keys, `/kv/{key}` URIs, query strings and content types.
//! - [`batch`]: `POST /batch` bodies: the parse and every op's validation.
//! - [`record`]: stored records (format 2, checksummed; format 1), hints and hint keys.

pub mod batch;
pub mod dvv;
pub mod frame;
pub mod handshake;
pub mod http_key;
pub mod record;
pub mod token;

/// The first byte of an input picks a mode, the rest is the input to that mode.
pub(crate) fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&m, rest)| (m, rest))
}
