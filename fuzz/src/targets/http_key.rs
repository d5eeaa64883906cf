//! Keys, `/kv/{key}` URIs, query strings and content types: what the HTTP API parses from a
//! request line and headers before any handler logic runs (`ringkv::key`,
//! `ringkv::http::fuzzing`, which opens `http::kv` and `http::params`).
//!
//! Mode (first byte, low two bits) picks what the rest is: 0, a percent-encoded key; 1, the
//! rest of a `/kv/` request target, path and query, as `http` parses it; 2, a query string
//! for the write routes; 3, a `Content-Type` value.
//!
//! Checks: a key that decodes is 1 to `MAX_KEY_BYTES` bytes and, percent-encoded again,
//! decodes to itself; a refusal names the right reason (the byte of a bad escape, invalid
//! UTF-8, the length) and is a 400 with the key error's code; the URI path gives the same key
//! as the plain decoder; a parsed query names only the route's parameters, its timeout and
//! quorums are within their bounds, and a bad one is a 400 `bad_param`; an accepted content
//! type is a bounded media type that is a valid header value.

use std::time::Duration;

use http::{HeaderValue, StatusCode, Uri};
use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
use ringkv::http::fuzzing::{
    content_type, key_from_uri, Query, MAX_CONTENT_TYPE_LEN, MAX_TIMEOUT_MS,
};
use ringkv::http::ApiError;
use ringkv::key::{Key, KeyError, MAX_KEY_BYTES};

use crate::alloc::bounded;

/// The replication factor the query checks resolve quorums against.
const N: usize = 3;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1234);
const WRITE_PARAMS: [&str; 3] = ["w", "timeout_ms", "returnbody"];

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        if mode & 3 == 1 {
            uri(rest);
        }
        return;
    };
    match mode & 3 {
        0 => key(text),
        1 => uri(rest),
        2 => query(text),
        _ => media_type(text),
    }
}

/// What a strict decoder must do with `raw`, computed the plain way: the decoded key, or
/// the error.
fn expected_key(raw: &str) -> Result<String, KeyError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or(KeyError::BadEscape(i))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| KeyError::BadEscape(i))?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| KeyError::NotUtf8)?;
    match s.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
        _ => Ok(s),
    }
}

fn key(raw: &str) {
    let got = bounded("decode key", raw.len(), || Key::from_percent_encoded(raw));
    let want = expected_key(raw);
    assert_eq!(
        got.as_ref().map(Key::as_str),
        want.as_deref(),
        "key {raw:?}"
    );
    match got {
        Ok(k) => {
            let again = percent_encode(k.as_bytes(), NON_ALPHANUMERIC).to_string();
            assert_eq!(
                Key::from_percent_encoded(&again).as_ref(),
                Ok(&k),
                "a key did not survive percent-encoding"
            );
        }
        Err(e) => check_key_error(ApiError::from(e)),
    }
}

fn check_key_error(e: ApiError) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
}

fn uri(rest: &[u8]) {
    let mut target = b"/kv/".to_vec();
    target.extend_from_slice(rest);
    // What `http` refuses never reaches the handler (hyper answers 400 itself).
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let got = bounded("key from URI", rest.len(), || key_from_uri(&uri, "/kv/"));
    let raw = uri.path().strip_prefix("/kv/").unwrap_or("");
    match (got, expected_key(raw)) {
        (Ok(k), Ok(want)) => {
            assert_eq!(k.as_str(), want);
            // The key a client percent-encodes into a path is the key the server reads.
            let path = format!("/kv/{}", percent_encode(k.as_bytes(), NON_ALPHANUMERIC));
            let again = Uri::try_from(path).expect("a percent-encoded path is a URI");
            assert_eq!(key_from_uri(&again, "/kv/").ok(), Some(k));
        }
        (Err(e), Err(_)) => check_key_error(e),
        (got, want) => panic!("path {raw:?}: got {got:?}, want {want:?}"),
    }
    if let Some(q) = uri.query() {
        query(q);
    }
}

fn query(raw: &str) {
    let parsed = bounded("parse query", raw.len(), || {
        Query::parse(Some(raw), &WRITE_PARAMS)
    });
    let q = match parsed {
        Ok(q) => q,
        Err(e) => {
            check_param_error(&e);
            let names = form_pairs(raw);
            // Values are decoded strictly: one that is not UTF-8 once decoded is refused.
            let not_text = raw.split('&').any(|p| {
                percent_encoding::percent_decode_str(&p.replace('+', " "))
                    .decode_utf8()
                    .is_err()
            });
            assert!(
                not_text || names.iter().any(|n| !WRITE_PARAMS.contains(&n.as_str())),
                "a query of known names only was refused: {raw:?}"
            );
            return;
        }
    };
    for n in form_pairs(raw) {
        assert!(
            WRITE_PARAMS.contains(&n.as_str()),
            "unknown {n:?} let through"
        );
    }
    match q.request_opts(N, DEFAULT_TIMEOUT) {
        Ok(opts) => {
            let t = opts.timeout;
            assert!(
                t == DEFAULT_TIMEOUT
                    || (Duration::from_millis(1)..=Duration::from_millis(MAX_TIMEOUT_MS))
                        .contains(&t),
                "timeout {t:?} out of bounds"
            );
            for quorum in [opts.r, opts.w].into_iter().flatten() {
                let needed = quorum.resolve(N);
                assert!(
                    (1..=N).contains(&needed),
                    "quorum {quorum:?} needs {needed}"
                );
            }
            assert!(opts.r.is_none(), "a write route took r");
        }
        Err(e) => check_param_error(&e),
    }
    if let Err(e) = q.bool("returnbody") {
        check_param_error(&e);
    }
}

/// The names of a query's pairs, decoded as the parser decodes them.
fn form_pairs(raw: &str) -> Vec<String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name = p.split('=').next().unwrap_or("").replace('+', " ");
            percent_encoding::percent_decode_str(&name)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

fn check_param_error(e: &ApiError) {
    assert_eq!(
        (e.status, e.code),
        (StatusCode::BAD_REQUEST, "bad_param"),
        "{e:?}"
    );
}

fn media_type(raw: &str) {
    match bounded("content type", raw.len(), || content_type(Some(raw))) {
        Ok(ct) => {
            assert_eq!(ct, raw);
            assert!(ct.len() <= MAX_CONTENT_TYPE_LEN);
            assert!(
                HeaderValue::from_str(&ct).is_ok(),
                "{ct:?} is no header value"
            );
            assert!(
                has_type_and_subtype(&ct),
                "{ct:?} accepted without type/subtype"
            );
        }
        Err(e) => assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "bad_content_type"),
            "{e:?}"
        ),
    }
}

/// A plain reading: `type/subtype`, both non-empty, ahead of any parameters.
fn has_type_and_subtype(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("");
    match essence.split_once('/') {
        Some((t, s)) => !t.trim().is_empty() && !s.trim().is_empty(),
        None => false,
    }
}
