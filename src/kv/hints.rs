//! Hints: writes held for a replica that was down, keyed by target then key, until the
//! handoff worker hands them back. Bounded per target in bytes (here) and in age (the
//! worker); what does not fit is refused and counted, and left to anti-entropy.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::record;
use crate::key::Key;
use crate::store::{Store, StoreError, Table};
use crate::version::SiblingSet;

const HINT_FORMAT: u8 = 1;

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
        let mut buf = vec![HINT_FORMAT];
        buf.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        buf.extend_from_slice(&record::encode(&self.set));
        buf
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        match raw {
            [HINT_FORMAT, rest @ ..] if rest.len() > 8 => {
                let (at, set) = rest.split_at(8);
                let stored_at_ms = u64::from_be_bytes(at.try_into().unwrap_or_default());
                Ok(HintRecord {
                    stored_at_ms,
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
            let rows = store.scan(Table::Hints, start, std::ops::Bound::Unbounded, 1024)?;
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
