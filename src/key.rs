//! Keys: validated UTF-8 strings of 1 to [`MAX_KEY_BYTES`] bytes, and their strict
//! percent-decoding from URL paths.

use std::fmt;

pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("key has a bad percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("key is not valid UTF-8 once decoded")]
    NotUtf8,
}

/// A key that passed validation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    pub fn new(s: impl Into<String>) -> Result<Self, KeyError> {
        let s = s.into();
        match s.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
            _ => Ok(Key(s)),
        }
    }

    /// Decodes a percent-encoded path segment. Unlike lenient decoders, a `%` that is not
    /// followed by two hex digits is an error, never passed through: `%zz` must not quietly
    /// become a different key than the client meant.
    pub fn from_percent_encoded(raw: &str) -> Result<Self, KeyError> {
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes.get(i + 1..i + 3).ok_or(KeyError::BadEscape(i))?;
                let hi = hex_val(hex[0]).ok_or(KeyError::BadEscape(i))?;
                let lo = hex_val(hex[1]).ok_or(KeyError::BadEscape(i))?;
                out.push(hi << 4 | lo);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        let s = String::from_utf8(out).map_err(|_| KeyError::NotUtf8)?;
        Key::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        assert_eq!(Key::from_percent_encoded("a%2Fb").unwrap().as_str(), "a/b");
        assert_eq!(
            Key::from_percent_encoded("caf%C3%A9").unwrap().as_str(),
            "café"
        );
        assert_eq!(
            Key::from_percent_encoded("%zz"),
            Err(KeyError::BadEscape(0))
        );
        assert_eq!(
            Key::from_percent_encoded("ab%4"),
            Err(KeyError::BadEscape(2))
        );
        assert_eq!(Key::from_percent_encoded("%C3%28"), Err(KeyError::NotUtf8));
        assert_eq!(Key::from_percent_encoded(""), Err(KeyError::Empty));
        assert!(Key::new("k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            Key::new("k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
    }
}
