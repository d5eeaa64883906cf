//! How a sibling set is laid out on disk: a format byte, then msgpack.

use crate::store::StoreError;
use crate::version::SiblingSet;

/// Bumped whenever the stored layout changes, so an old file is read, never misread.
const RECORD_FORMAT: u8 = 1;

pub fn encode(set: &SiblingSet) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.push(RECORD_FORMAT);
    // Serialising plain structs into a Vec cannot fail.
    rmp_serde::encode::write(&mut buf, set).expect("sibling set encodes");
    buf
}

pub fn decode(raw: &[u8]) -> Result<SiblingSet, StoreError> {
    match raw.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            rmp_serde::from_slice(body).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some((other, _)) => Err(StoreError::Corrupt(format!(
            "unknown record format {other}"
        ))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}
