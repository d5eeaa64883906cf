//! The causality token: the client's opaque copy of a sibling set's causal context.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::vv::VersionVector;

/// First byte of every token, so the encoding can change without misreading old tokens.
const TOKEN_FORMAT: u8 = 1;
/// A token is a header value; anything longer than this is not one we issued. It allows
/// thousands of actors, far beyond any real cluster's node incarnations.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

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
}

/// base64url( format byte ‖ msgpack(version vector) ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalityToken(pub VersionVector);

impl CausalityToken {
    pub fn encode(&self) -> String {
        let mut buf = vec![TOKEN_FORMAT];
        // Encoding a BTreeMap of plain integers into a Vec cannot fail.
        rmp_serde::encode::write(&mut buf, &self.0).expect("version vector encodes");
        URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(text: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|_| TokenError::NotBase64)?;
        let (&format, body) = raw.split_first().ok_or(TokenError::Empty)?;
        if format != TOKEN_FORMAT {
            return Err(TokenError::UnknownFormat(format));
        }
        let vv: VersionVector =
            rmp_serde::from_slice(body).map_err(|e| TokenError::Corrupt(e.to_string()))?;
        Ok(CausalityToken(vv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, Dot};

    #[test]
    fn round_trip_and_rejects() {
        let vv: VersionVector = [Dot {
            actor: Actor { node: 7, epoch: 1 },
            counter: 42,
        }]
        .into_iter()
        .collect();
        let t = CausalityToken(vv).encode();
        assert_eq!(
            CausalityToken::decode(&t)
                .unwrap()
                .0
                .get(&Actor { node: 7, epoch: 1 }),
            42
        );
        assert_eq!(CausalityToken::decode("!!!"), Err(TokenError::NotBase64));
        assert_eq!(CausalityToken::decode(""), Err(TokenError::Empty));
        assert!(matches!(
            CausalityToken::decode("AgAA"),
            Err(TokenError::UnknownFormat(2))
        ));
        assert!(matches!(
            CausalityToken::decode("AZmZmQ"),
            Err(TokenError::Corrupt(_))
        ));
    }
}
