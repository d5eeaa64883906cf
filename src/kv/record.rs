//! How a sibling set is laid out on disk: a format byte, a checksum, then msgpack.
//!
//! Format 2 (written now): `2 ‖ xxh3_64(body) (8 bytes, big-endian) ‖ body`, where body is
//! the msgpack of the set. Format 1 (older builds): `1 ‖ body`, no checksum; still read,
//! since a data dir may predate format 2. Every read checks the checksum: a record that
//! fails it is corrupt, and is never served or merged.

use xxhash_rust::xxh3::xxh3_64;

use crate::store::StoreError;
use crate::version::SiblingSet;

/// The format older builds wrote, without a checksum.
const FORMAT_1: u8 = 1;
/// Bumped whenever the stored layout changes, so an old file is read, never misread.
const RECORD_FORMAT: u8 = 2;
const CHECKSUM_BYTES: usize = 8;

fn body(set: &SiblingSet) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    // Serialising plain structs into a Vec cannot fail.
    rmp_serde::encode::write(&mut buf, set).expect("sibling set encodes");
    buf
}

/// The stored bytes of a set.
pub fn encode(set: &SiblingSet) -> Vec<u8> {
    let body = body(set);
    let mut buf = Vec::with_capacity(1 + CHECKSUM_BYTES + body.len());
    buf.push(RECORD_FORMAT);
    buf.extend_from_slice(&xxh3_64(&body).to_be_bytes());
    buf.extend_from_slice(&body);
    buf
}

/// The bytes anti-entropy digests: format 1's layout, whatever the stored format. Digests
/// are compared across nodes and summed into stored tree leaves, so they must not change
/// with the record format (nodes of both builds, leaves written by an older build).
pub fn canonical(set: &SiblingSet) -> Vec<u8> {
    let mut buf = vec![FORMAT_1];
    buf.extend_from_slice(&body(set));
    buf
}

pub fn decode(raw: &[u8]) -> Result<SiblingSet, StoreError> {
    match raw.split_first() {
        Some((&RECORD_FORMAT, rest)) => {
            let (sum, body) = rest
                .split_at_checked(CHECKSUM_BYTES)
                .ok_or_else(|| StoreError::Corrupt("record shorter than its checksum".into()))?;
            let mut want = [0u8; CHECKSUM_BYTES];
            want.copy_from_slice(sum);
            let got = xxh3_64(body);
            if u64::from_be_bytes(want) != got {
                return Err(StoreError::Corrupt(format!(
                    "record checksum mismatch (stored {:016x}, computed {got:016x})",
                    u64::from_be_bytes(want)
                )));
            }
            rmp_serde::from_slice(body).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some((&FORMAT_1, body)) => {
            rmp_serde::from_slice(body).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some((other, _)) => Err(StoreError::Corrupt(format!(
            "unknown record format {other}"
        ))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, Payload};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn set_of(values: &[Vec<u8>]) -> SiblingSet {
        let mut set = SiblingSet::new();
        for (i, v) in values.iter().enumerate() {
            let actor = Actor {
                node: i as u64 + 1,
                epoch: 0,
            };
            let payload = Payload::Value {
                data: Bytes::from(v.clone()),
                content_type: "t".into(),
            };
            set = set
                .update(None, actor, payload, 7)
                .expect("a fresh counter")
                .0;
        }
        set
    }

    proptest! {
        /// Any single flipped bit in a stored record is caught, never decoded to a set.
        #[test]
        fn a_flipped_bit_is_caught(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let set = set_of(&values);
            let mut raw = encode(&set);
            prop_assert_eq!(decode(&raw).unwrap(), set);
            let i = at.index(raw.len());
            raw[i] ^= 1 << bit;
            prop_assert!(decode(&raw).is_err(), "flip at {} bit {} decoded", i, bit);
        }

        /// Format 1, as older builds wrote it, still reads; the digest bytes are format 1's.
        #[test]
        fn format_1_still_reads(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
        ) {
            let set = set_of(&values);
            let old = canonical(&set);
            prop_assert_eq!(old[0], 1);
            prop_assert_eq!(decode(&old).unwrap(), set);
        }
    }
}
