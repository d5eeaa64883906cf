//! Causality tokens (`ringkv::version::CausalityToken`, format 2), as a client sends them
//! back in `X-Causality-Token` or a batch op.
//!
//! Mode (first byte, low two bits): 0, the rest is the token text as sent; 1, the rest is
//! the raw token bytes, base64url-encoded here (so the fuzzer works on the format byte, the
//! key hash and the msgpack behind the base64); 2, the rest is a bare msgpack version vector
//! that the API issues a token for, trimmed to the actor bound.
//!
//! Checks: a token that decodes is within its bounds (actors, no counter at u64::MAX), and
//! encodes to a token that decodes to it; it binds to its key (`decode_for` refuses any
//! other key); the error is the one the text calls for (too long, empty, format); a token
//! the API issues for any context decodes, covers the shown versions' actors, and is
//! covered by the context.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ringkv::version::{
    key_hash, Actor, CausalityToken, TokenError, VersionVector, MAX_TOKEN_ACTORS, TOKEN_FORMAT,
};

use crate::alloc::bounded;

/// `version::token::MAX_TOKEN_LEN` (not exported): longer text is refused unread.
const MAX_TOKEN_LEN: usize = 8 * 1024;

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    match mode & 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                text_token(text);
            }
        }
        1 => text_token(&URL_SAFE_NO_PAD.encode(rest)),
        _ => issued(rest),
    }
}

fn text_token(text: &str) {
    let decoded = bounded("decode token", text.len(), || CausalityToken::decode(text));
    match decoded {
        Ok(token) => {
            assert!(
                text.len() <= MAX_TOKEN_LEN,
                "a token over the length bound decoded"
            );
            assert!(
                token.context.len() <= MAX_TOKEN_ACTORS,
                "too many actors decoded"
            );
            assert!(
                token.context.iter().all(|(_, &c)| c < u64::MAX),
                "a counter at u64::MAX decoded"
            );
            let again = CausalityToken::decode(&token.encode()).expect("a re-encoded token");
            assert_eq!(again, token, "a token changed through encode and decode");
            let key = b"k";
            let ours = CausalityToken {
                key_hash: key_hash(key),
                context: token.context.clone(),
            }
            .encode();
            assert_eq!(
                CausalityToken::decode_for(&ours, key),
                Ok(token.context.clone())
            );
            assert_eq!(
                CausalityToken::decode_for(&ours, b"another key"),
                Err(TokenError::WrongKey),
                "a token was accepted for a key it was not issued for"
            );
        }
        Err(e) => check_error(text, &e),
    }
}

/// The error is one the text calls for.
fn check_error(text: &str, e: &TokenError) {
    if text.len() > MAX_TOKEN_LEN {
        assert_eq!(*e, TokenError::TooLong);
        return;
    }
    let raw = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=').as_bytes());
    match (raw, e) {
        (Err(_), TokenError::NotBase64) => {}
        (Ok(raw), e) => match (raw.first(), e) {
            (None, TokenError::Empty) => {}
            (Some(1), TokenError::OldFormat) => {}
            (Some(&f), TokenError::UnknownFormat(g)) if f != 1 && f != TOKEN_FORMAT => {
                assert_eq!(f, *g)
            }
            (Some(&TOKEN_FORMAT), TokenError::Corrupt(_)) => {}
            (Some(&TOKEN_FORMAT), TokenError::TooManyActors(n)) => {
                assert!(*n > MAX_TOKEN_ACTORS)
            }
            (Some(&TOKEN_FORMAT), TokenError::CounterOverflow(_)) => {}
            (first, e) => panic!("token starting {first:?} refused with {e:?}"),
        },
        (Err(_), e) => panic!("text that is not base64url refused with {e:?}"),
    }
}

/// A token the API issues for a context it holds (any size): accepted back, trimmed to the
/// bound, keeping the shown versions' actors.
fn issued(body: &[u8]) {
    let Ok(context) = rmp_serde::from_slice::<VersionVector>(body) else {
        return;
    };
    // Contexts with a counter at u64::MAX are refused where they enter a node.
    if context.max_counter() == u64::MAX {
        return;
    }
    let keep: Vec<Actor> = context
        .iter()
        .map(|(a, _)| *a)
        .step_by(3)
        .take(MAX_TOKEN_ACTORS)
        .collect();
    let key = b"issued";
    let text = CausalityToken::for_key(key, &context, &keep).encode();
    let back = CausalityToken::decode_for(&text, key)
        .unwrap_or_else(|e| panic!("a token the API issued was refused: {e}"));
    assert!(back.len() <= MAX_TOKEN_ACTORS);
    // Entries at counter 0 say nothing, and a vector built by a node skips them
    // (`VersionVector::add`), so a token may name fewer actors than its context did.
    assert!(back.len() <= context.len().min(MAX_TOKEN_ACTORS));
    assert!(
        context.descends(&back),
        "an issued token claims more than its context"
    );
    for a in &keep {
        assert_eq!(
            back.get(a),
            context.get(a),
            "an issued token dropped a shown actor"
        );
    }
}
