//! Hints: writes held for a replica that was down, keyed by target then key, until the
//! handoff worker hands them back. Bounded per target in bytes (here) and in age (the
//! worker); what does not fit is refused and counted, and left to anti-entropy.

use std::collections::BTreeMap;
use std::sync::Mutex;

use xxhash_rust::xxh3::xxh3_64;

use super::record;
use crate::key::Key;
use crate::store::{Store, StoreError, Table};
use crate::version::SiblingSet;

/// Older builds' hint layout: `1 ‖ stored_at_ms ‖ data record`, checked only through the
/// data record inside it.
const HINT_FORMAT_1: u8 = 1;
/// `2 ‖ xxh3_64(rest) ‖ rest`, rest being `stored_at_ms ‖ data record`: the checksum covers
/// the time too, which decides when the hint expires.
const HINT_FORMAT: u8 = 2;

/// `target (u64, big-endian) ‖ key`: one target's hints are one contiguous range.
pub fn hint_key(target: u64, key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.as_bytes().len());
    k.extend_from_slice(&target.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The range of one target's hints: `[target, target + 1)`.
pub fn target_range(target: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = target.to_be_bytes().to_vec();
    let end = target.checked_add(1).map(|t| t.to_be_bytes().to_vec());
    (start, end)
}

pub fn split_hint_key(raw: &[u8]) -> Result<(u64, Key), StoreError> {
    let corrupt = || StoreError::Corrupt("bad hint key".into());
    let (target, key) = raw.split_at_checked(8).ok_or_else(corrupt)?;
    let target = u64::from_be_bytes(target.try_into().map_err(|_| corrupt())?);
    let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
    Ok((target, Key::new(key).map_err(|_| corrupt())?))
}

/// A stored hint: when it was first stored (for the age bound) and the set to hand back.
#[derive(Debug, Clone, PartialEq)]
pub struct HintRecord {
    pub stored_at_ms: u64,
    pub set: SiblingSet,
}

impl HintRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut rest = Vec::with_capacity(64);
        rest.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        rest.extend_from_slice(&record::encode(&self.set));
        let mut buf = Vec::with_capacity(9 + rest.len());
        buf.push(HINT_FORMAT);
        buf.extend_from_slice(&xxh3_64(&rest).to_be_bytes());
        buf.extend_from_slice(&rest);
        buf
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let rest = match raw {
            [HINT_FORMAT, tail @ ..] => {
                let (sum, rest) = tail
                    .split_at_checked(8)
                    .ok_or_else(|| StoreError::Corrupt("hint shorter than its checksum".into()))?;
                let mut want = [0u8; 8];
                want.copy_from_slice(sum);
                if u64::from_be_bytes(want) != xxh3_64(rest) {
                    return Err(StoreError::Corrupt("hint checksum mismatch".into()));
                }
                rest
            }
            [HINT_FORMAT_1, rest @ ..] => rest,
            _ => return Err(StoreError::Corrupt("bad hint record".into())),
        };
        match rest.split_at_checked(8) {
            Some((at, set)) if !set.is_empty() => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(at);
                Ok(HintRecord {
                    stored_at_ms: u64::from_be_bytes(bytes),
                    set: record::decode(set)?,
                })
            }
            _ => Err(StoreError::Corrupt("bad hint record".into())),
        }
    }
}

/// Hints pending for one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    pub count: u64,
    pub bytes: u64,
}

/// Per-target totals of stored hints, kept in memory and rebuilt from the table at
/// startup. Only the writer changes it, after a commit succeeds.
#[derive(Debug, Default)]
pub struct HintLedger {
    targets: Mutex<BTreeMap<u64, Pending>>,
}

impl HintLedger {
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut targets: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let start = match &after {
                Some(k) => std::ops::Bound::Excluded(k.as_slice()),
                None => std::ops::Bound::Unbounded,
            };
            // Bounded in bytes too: a hint holds a whole sibling set.
            let rows = store
                .scan_bounded(
                    Table::Hints,
                    start,
                    std::ops::Bound::Unbounded,
                    1024,
                    super::SCAN_BYTES,
                )?
                .rows;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, v) in &rows {
                let (target, _) = split_hint_key(k)?;
                let p = targets.entry(target).or_default();
                p.count += 1;
                p.bytes += v.len() as u64;
            }
        }
        Ok(HintLedger {
            targets: Mutex::new(targets),
        })
    }

    /// Takes the totals of `other`, rebuilt from the table after the store was reopened
    /// (commits that were not durable may be gone).
    pub fn replace_with(&self, other: HintLedger) {
        let fresh = other
            .targets
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        *self.lock() = fresh;
    }

    pub fn pending(&self, target: u64) -> Pending {
        self.lock().get(&target).copied().unwrap_or_default()
    }

    pub fn all(&self) -> BTreeMap<u64, Pending> {
        self.lock().clone()
    }

    /// Applies a committed change: `count` and `bytes` may be negative.
    pub fn adjust(&self, target: u64, count: i64, bytes: i64) {
        let mut targets = self.lock();
        let p = targets.entry(target).or_default();
        p.count = p.count.saturating_add_signed(count);
        p.bytes = p.bytes.saturating_add_signed(bytes);
        if p.count == 0 {
            targets.remove(&target);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        // The map holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, Payload};
    use bytes::Bytes;

    fn hint() -> HintRecord {
        let payload = Payload::Value {
            data: Bytes::from_static(b"held for a down replica"),
            content_type: "t".into(),
        };
        let (set, _) = SiblingSet::new()
            .update(None, Actor { node: 3, epoch: 1 }, payload, 5)
            .expect("a fresh counter");
        HintRecord {
            stored_at_ms: 1_700_000_000_000,
            set,
        }
    }

    #[test]
    fn every_flipped_byte_of_a_hint_is_caught() {
        let h = hint();
        let raw = h.encode();
        assert_eq!(HintRecord::decode(&raw).unwrap(), h);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x10;
            assert!(HintRecord::decode(&bad).is_err(), "flip at {i} decoded");
        }
        assert!(HintRecord::decode(&raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn format_1_hints_still_read() {
        let h = hint();
        let mut old = vec![HINT_FORMAT_1];
        old.extend_from_slice(&h.stored_at_ms.to_be_bytes());
        old.extend_from_slice(&record::canonical(&h.set));
        assert_eq!(HintRecord::decode(&old).unwrap(), h);
    }
}
