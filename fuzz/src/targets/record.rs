//! What the store hands back: sibling-set records (`ringkv::kv::record`, format 2 with its
//! checksum, and format 1), hint records and hint keys (`ringkv::kv::hints`).
//!
//! Mode (first byte, mod 5): 0, the rest is a stored record; 1, the rest is a record body,
//! given here a valid format-2 checksum (so the fuzzer reaches the msgpack behind it); 2,
//! the rest is a stored hint; 3, the rest is a hint's `stored_at ‖ record`, given a valid
//! hint checksum and a valid record checksum; 4, the rest is a hint key.
//!
//! Checks: what decodes re-encodes to bytes that decode to the same (record, canonical
//! digest bytes, hint); a format-2 record and a format-1 record of the same body decode alike;
//! any change to a checksummed record's bytes is caught; a hint key splits into the target and
//! key it is made of; no decode holds more memory than the input justifies.

use ringkv::kv::hints::{hint_key, split_hint_key};
use ringkv::kv::{record, HintRecord};
use ringkv::store::StoreError;
use ringkv::version::SiblingSet;
use xxhash_rust::xxh3::xxh3_64;

use crate::alloc::bounded;

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    match mode % 5 {
        0 => {
            let _ = stored(rest);
        }
        1 => {
            let v2 = checksummed(2, rest);
            let mut v1 = vec![1];
            v1.extend_from_slice(rest);
            let (a, b) = (stored(&v2), stored(&v1));
            assert_eq!(a.ok(), b.ok(), "format 2 and format 1 of one body differ");
            if let Some(&last) = v2.last() {
                // A flipped bit in the body fails the checksum (xxh3 has no collision at
                // distance one bit).
                let mut bad = v2.clone();
                let end = bad.len() - 1;
                bad[end] = last ^ 0x01;
                assert!(record::decode(&bad).is_err(), "a flipped body bit decoded");
            }
        }
        2 => hint(rest),
        3 => {
            let Some((at, body)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let mut inner = at.to_vec();
            inner.extend_from_slice(&checksummed(2, body));
            hint(&checksummed(2, &inner));
        }
        _ => key(rest),
    }
}

/// `format ‖ xxh3_64(body) ‖ body`: the layout of format-2 records and hints.
fn checksummed(format: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![format];
    out.extend_from_slice(&xxh3_64(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn stored(raw: &[u8]) -> Result<SiblingSet, String> {
    let decoded = bounded("decode record", raw.len(), || record::decode(raw));
    match decoded {
        Ok(set) => {
            let again = record::decode(&record::encode(&set)).expect("an encoded record");
            assert_eq!(again, set, "a record changed through encode and decode");
            let digest_bytes = record::canonical(&set);
            assert_eq!(
                record::decode(&digest_bytes).expect("canonical bytes are format 1"),
                set
            );
            Ok(set)
        }
        Err(e) => {
            assert!(
                matches!(e, StoreError::Corrupt(_)),
                "a record refused with {e:?}"
            );
            Err(e.to_string())
        }
    }
}

fn hint(raw: &[u8]) {
    match bounded("decode hint", raw.len(), || HintRecord::decode(raw)) {
        Ok(h) => {
            let again = HintRecord::decode(&h.encode()).expect("an encoded hint decodes");
            assert_eq!(again, h, "a hint changed through encode and decode");
        }
        Err(e) => assert!(
            matches!(e, StoreError::Corrupt(_)),
            "a hint refused with {e:?}"
        ),
    }
}

fn key(raw: &[u8]) {
    match split_hint_key(raw) {
        Ok((target, key)) => assert_eq!(hint_key(target, &key), raw, "a hint key split wrongly"),
        Err(e) => assert!(
            matches!(e, StoreError::Corrupt(_)),
            "a hint key refused with {e:?}"
        ),
    }
}
