//! The causality token: the client's opaque copy of a sibling set's causal context, bound
//! to the key it was issued for.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use xxhash_rust::xxh3::xxh3_64;

use super::vv::{Actor, VersionVector};

/// First byte of every token, so the encoding can change without misreading old tokens.
/// Format 1 was the bare version vector; format 2 adds the key's hash.
pub const TOKEN_FORMAT: u8 = 2;
/// At most this many actors in a token. Actors are node incarnations (a node id and the
/// epoch it restarted into), so a real key's history names a handful; 64 leaves room for
/// many restarts of a large cluster. Tokens the API issues are trimmed to this bound (see
/// [`CausalityToken::for_key`]), so a token this node issued is never refused for it.
pub const MAX_TOKEN_ACTORS: usize = 64;
/// A token is a header value; anything longer than this is not one we issued. 64 actors
/// take about 1.5 KiB of msgpack, 2 KiB of base64.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("causality token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("causality token is not base64url")]
    NotBase64,
    #[error("causality token has unknown format {0}")]
    UnknownFormat(u8),
    #[error("causality token is empty")]
    Empty,
    #[error("causality token does not decode: {0}")]
    Corrupt(String),
    #[error("causality token is of an older format that is not bound to its key; read the key again and send the token that read returns")]
    OldFormat,
    #[error("causality token names {0} actors; the limit is {MAX_TOKEN_ACTORS}")]
    TooManyActors(usize),
    #[error("token claims versions this cluster never issued (actor {0} at counter u64::MAX)")]
    CounterOverflow(Actor),
    #[error("token was issued for another key")]
    WrongKey,
}

/// The hash a token carries of its key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// base64url( format byte ‖ xxh3-64(key), big-endian ‖ msgpack(version vector) ).
///
/// The key hash binds a token to its key: without it, a token read from one key and sent
/// with a write to another would supersede whatever that key's versions its counters
/// happen to cover, which is nothing the client ever saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalityToken {
    pub key_hash: u64,
    pub context: VersionVector,
}

impl CausalityToken {
    /// The token for `key` over `context`, trimmed to [`MAX_TOKEN_ACTORS`].
    ///
    /// Trimming is safe: a token that covers less makes a write supersede less, which
    /// leaves a sibling at worst, never a lost write. The actors of `keep` (the dots of
    /// the versions the client is shown) go first, so that the token still covers what
    /// the client read; then the rest by highest counter. A key's context only names
    /// real node incarnations, so this applies only to keys written by more than 64.
    pub fn for_key(key: &[u8], context: &VersionVector, keep: &[Actor]) -> Self {
        let context = if context.len() <= MAX_TOKEN_ACTORS {
            context.clone()
        } else {
            let mut entries: Vec<(Actor, u64)> = context.iter().map(|(a, c)| (*a, *c)).collect();
            entries.sort_by_key(|(a, c)| (!keep.contains(a), std::cmp::Reverse(*c)));
            entries.into_iter().take(MAX_TOKEN_ACTORS).collect()
        };
        CausalityToken {
            key_hash: key_hash(key),
            context,
        }
    }

    pub fn encode(&self) -> String {
        let mut buf = vec![TOKEN_FORMAT];
        buf.extend_from_slice(&self.key_hash.to_be_bytes());
        // Encoding a BTreeMap of plain integers into a Vec cannot fail.
        rmp_serde::encode::write(&mut buf, &self.context).expect("version vector encodes");
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes and checks a token, without knowing its key: format, size, actor count, and
    /// that no counter is one no actor ever issues (u64::MAX; see
    /// [`super::SiblingSet::update_above`]).
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|_| TokenError::NotBase64)?;
        let (&format, body) = raw.split_first().ok_or(TokenError::Empty)?;
        match format {
            TOKEN_FORMAT => {}
            1 => return Err(TokenError::OldFormat),
            other => return Err(TokenError::UnknownFormat(other)),
        }
        let (hash, body) = body
            .split_first_chunk::<8>()
            .ok_or_else(|| TokenError::Corrupt("too short for a key hash".into()))?;
        let context: VersionVector =
            rmp_serde::from_slice(body).map_err(|e| TokenError::Corrupt(e.to_string()))?;
        if context.len() > MAX_TOKEN_ACTORS {
            return Err(TokenError::TooManyActors(context.len()));
        }
        if let Some((actor, _)) = context.iter().find(|(_, &c)| c == u64::MAX) {
            return Err(TokenError::CounterOverflow(*actor));
        }
        Ok(CausalityToken {
            key_hash: u64::from_be_bytes(*hash),
            context,
        })
    }

    /// Decodes a token sent with a request for `key`: [`Self::decode`], and the token must
    /// have been issued for that key.
    pub fn decode_for(text: &str, key: &[u8]) -> Result<VersionVector, TokenError> {
        let token = Self::decode(text)?;
        if token.key_hash != key_hash(key) {
            return Err(TokenError::WrongKey);
        }
        Ok(token.context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Dot;

    fn a(node: u64) -> Actor {
        Actor { node, epoch: 1 }
    }

    #[test]
    fn round_trip_and_rejects() {
        let vv: VersionVector = [Dot {
            actor: a(7),
            counter: 42,
        }]
        .into_iter()
        .collect();
        let t = CausalityToken::for_key(b"k", &vv, &[]).encode();
        assert_eq!(CausalityToken::decode_for(&t, b"k").unwrap().get(&a(7)), 42);
        assert_eq!(
            CausalityToken::decode_for(&t, b"other"),
            Err(TokenError::WrongKey)
        );
        assert_eq!(CausalityToken::decode("!!!"), Err(TokenError::NotBase64));
        assert_eq!(CausalityToken::decode(""), Err(TokenError::Empty));
        assert!(matches!(
            CausalityToken::decode("AwAA"),
            Err(TokenError::UnknownFormat(3))
        ));
        // A format-1 token (format byte, then the bare msgpack map).
        let mut old = vec![1u8];
        rmp_serde::encode::write(&mut old, &vv).unwrap();
        assert_eq!(
            CausalityToken::decode(&URL_SAFE_NO_PAD.encode(old)),
            Err(TokenError::OldFormat)
        );
        assert!(matches!(
            CausalityToken::decode("AgAA"),
            Err(TokenError::Corrupt(_))
        ));
        let mut bad = vec![2u8];
        bad.extend_from_slice(&key_hash(b"k").to_be_bytes());
        bad.extend_from_slice(&[0x99, 0x99]);
        assert!(matches!(
            CausalityToken::decode_for(&URL_SAFE_NO_PAD.encode(bad), b"k"),
            Err(TokenError::Corrupt(_))
        ));
        assert_eq!(
            CausalityToken::decode(&"A".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn forged_counters_and_actor_counts_are_refused() {
        let at_max: VersionVector = [(a(1), 3), (a(2), u64::MAX)].into_iter().collect();
        let t = CausalityToken {
            key_hash: key_hash(b"k"),
            context: at_max,
        };
        assert_eq!(
            CausalityToken::decode_for(&t.encode(), b"k"),
            Err(TokenError::CounterOverflow(a(2)))
        );
        let below: VersionVector = [(a(2), u64::MAX - 1)].into_iter().collect();
        let t = CausalityToken::for_key(b"k", &below, &[]).encode();
        assert_eq!(CausalityToken::decode_for(&t, b"k"), Ok(below));

        let many: VersionVector = (0..=MAX_TOKEN_ACTORS as u64).map(|n| (a(n), 1)).collect();
        let t = CausalityToken {
            key_hash: key_hash(b"k"),
            context: many.clone(),
        };
        assert_eq!(
            CausalityToken::decode_for(&t.encode(), b"k"),
            Err(TokenError::TooManyActors(MAX_TOKEN_ACTORS + 1))
        );
        // What the API issues for the same context is trimmed, keeps the shown versions'
        // actors, and is accepted back.
        let keep = [a(0), a(MAX_TOKEN_ACTORS as u64)];
        let issued = CausalityToken::for_key(b"k", &many, &keep).encode();
        let back = CausalityToken::decode_for(&issued, b"k").unwrap();
        assert_eq!(back.len(), MAX_TOKEN_ACTORS);
        assert!(keep.iter().all(|k| back.get(k) == 1));
        assert!(many.descends(&back));
    }
}
