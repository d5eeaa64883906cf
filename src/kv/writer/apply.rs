//! One transaction for a batch of jobs: each mutation decided against the key's current
//! state inside it, hint totals and the in-memory tree changed only once it committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Applied, Job, Mutation, Upkeep, WriterSettings};
use crate::identity::Identity;
use crate::key::Key;
use crate::kv::hints::{hint_key, HintLedger, HintRecord};
use crate::kv::summary::TreeDelta;
use crate::kv::{record, KvError};
use crate::stats::StorageStats;
use crate::store::{Store, StoreError, Table, WriteTxn};
use crate::version::{Dot, SiblingSet};

/// One transaction for the whole batch. A mutation that is refused (the sibling cap, an
/// overflowed counter) is answered alone; a storage error fails the whole batch, and
/// nothing in it is applied. Returns the jobs with their outcomes set, whether the
/// transaction committed, and the dot floor after it.
pub(super) fn commit(
    store: &dyn Store,
    settings: &WriterSettings,
    stats: &StorageStats,
    dot_floor: u64,
    batch: Vec<Job>,
    durable: bool,
) -> (Vec<Job>, Result<(), Arc<StoreError>>, u64) {
    let mut batch = batch;
    let mut floor = dot_floor;
    // Hint totals and the in-memory tree change only once the commit succeeded.
    let mut ledger = LedgerDelta::default();
    let mut tree = TreeDelta::default();
    let result = store.write(durable, &mut |txn| {
        // The body may run again (the store retries it): each run starts afresh.
        ledger = LedgerDelta::default();
        tree = TreeDelta::default();
        floor = dot_floor;
        for job in &mut batch {
            match job {
                Job::Data {
                    mutation, outcome, ..
                } => {
                    *outcome = Some(apply(
                        txn, settings, stats, &mut floor, &mut tree, mutation,
                    )?);
                }
                Job::Upkeep {
                    upkeep, outcome, ..
                } => {
                    *outcome = Some(apply_upkeep(
                        txn,
                        settings,
                        stats,
                        &mut ledger,
                        &mut tree,
                        upkeep,
                    )?);
                }
            }
        }
        // In the same transaction as the versions that raised it: as durable as they are.
        if floor != dot_floor {
            Identity::record_dot_floor(txn, floor)?;
        }
        tree.store(txn)
    });
    let result = result.map_err(Arc::new);
    match &result {
        Ok(()) => {
            ledger.commit(&settings.hints);
            std::mem::take(&mut tree).apply(&settings.tree);
        }
        Err(e) => {
            tracing::error!(error = %e, mutations = batch.len(), "commit failed");
            // Every job gets the one error, its type kept: 507 for a full disk, 500
            // otherwise (see `KvError::from`).
            let kv = if e.is_no_space() {
                KvError::NoSpace(e.clone())
            } else {
                KvError::Store(e.clone())
            };
            for job in &mut batch {
                job.fail(&kv);
            }
        }
    }
    (batch, result, floor)
}

/// Hint count and byte changes made by one transaction, per target.
#[derive(Default)]
struct LedgerDelta(BTreeMap<u64, (i64, i64)>);

impl LedgerDelta {
    fn add(&mut self, target: u64, count: i64, bytes: i64) {
        let e = self.0.entry(target).or_default();
        e.0 += count;
        e.1 += bytes;
    }

    fn bytes(&self, target: u64) -> i64 {
        self.0.get(&target).map_or(0, |e| e.1)
    }

    fn commit(self, ledger: &HintLedger) {
        for (target, (count, bytes)) in self.0 {
            ledger.adjust(target, count, bytes);
        }
    }
}

fn apply(
    txn: &mut dyn WriteTxn,
    settings: &WriterSettings,
    stats: &StorageStats,
    dot_floor: &mut u64,
    tree: &mut TreeDelta,
    mutation: &Mutation,
) -> Result<Result<Applied, KvError>, StoreError> {
    match mutation {
        Mutation::Update {
            key,
            seen,
            payload,
            written_at_ms,
        } => {
            let current = read_set(txn, stats, tree, key)?;
            let (next, dot) = match current.update_above(
                seen.as_ref(),
                settings.actor,
                *dot_floor,
                payload.clone(),
                *written_at_ms,
            ) {
                Ok(updated) => updated,
                Err(e) => return Ok(Err(e.into())),
            };
            if next.len() > settings.max_siblings {
                return Ok(Err(KvError::SiblingLimit {
                    limit: settings.max_siblings,
                }));
            }
            // Only a dot this node issues moves the floor; `dot.counter` is above the floor
            // by construction, so this never lowers it.
            *dot_floor = (*dot_floor).max(dot.counter);
            write_set(txn, tree, key, current, next, Some(dot)).map(Ok)
        }
        Mutation::Merge { key, set } => {
            // A counter at u64::MAX is never issued (see `SiblingSet::update_above`);
            // merged, it would make this node's next write of that actor overflow, so the
            // set is refused here, where peer data enters the store.
            if set.has_overflowed_counter() {
                return Ok(Err(KvError::OverflowedSet {
                    key: key.as_str().to_owned(),
                }));
            }
            let current = read_set(txn, stats, tree, key)?;
            let next = current.sync(set);
            write_set(txn, tree, key, current, next, None).map(Ok)
        }
    }
}

fn apply_upkeep(
    txn: &mut dyn WriteTxn,
    settings: &WriterSettings,
    stats: &StorageStats,
    ledger: &mut LedgerDelta,
    tree: &mut TreeDelta,
    upkeep: &Upkeep,
) -> Result<Result<bool, KvError>, StoreError> {
    match upkeep {
        Upkeep::DropIfDigest { key, digest } => {
            let current = read_set(txn, stats, tree, key)?;
            if current.is_empty() || crate::kv::summary::digest(&current) != *digest {
                return Ok(Ok(false));
            }
            txn.delete(Table::Data, key.as_bytes())?;
            tree.record(txn, key, &current, &SiblingSet::new())?;
            Ok(Ok(true))
        }
        Upkeep::Hint {
            target,
            key,
            set,
            now_ms,
        } => {
            // Delivered later as a Merge: refused for the same reason, before it is kept.
            if set.has_overflowed_counter() {
                return Ok(Err(KvError::OverflowedSet {
                    key: key.as_str().to_owned(),
                }));
            }
            let hkey = hint_key(*target, key);
            let old = txn.get(Table::Hints, &hkey)?;
            // A corrupt held hint is replaced, not merged with (and not allowed to fail the
            // batch): what it held is left to anti-entropy.
            let held = old.as_ref().and_then(|raw| match HintRecord::decode(raw) {
                Ok(r) => Some(r),
                Err(e) => {
                    stats.corrupt_records.inc();
                    tracing::error!(key = %key, target, error = %e, "held hint is corrupt; replacing it");
                    None
                }
            });
            let record = match held {
                Some(mut r) => {
                    r.set = r.set.sync(set);
                    r
                }
                None => HintRecord {
                    stored_at_ms: *now_ms,
                    set: set.clone(),
                },
            };
            let raw = record.encode();
            let old_len = old.as_ref().map_or(0, |o| o.len() as i64);
            let total = settings.hints.pending(*target).bytes as i64 + ledger.bytes(*target);
            if total - old_len + raw.len() as i64 > settings.max_hint_bytes as i64 {
                return Ok(Ok(false));
            }
            txn.put(Table::Hints, &hkey, &raw)?;
            ledger.add(
                *target,
                i64::from(old.is_none()),
                raw.len() as i64 - old_len,
            );
            Ok(Ok(true))
        }
        Upkeep::DeleteHint {
            target,
            key,
            expected,
        } => {
            let hkey = hint_key(*target, key);
            match txn.get(Table::Hints, &hkey)? {
                Some(raw) if raw == *expected => {
                    txn.delete(Table::Hints, &hkey)?;
                    ledger.add(*target, -1, -(raw.len() as i64));
                    Ok(Ok(true))
                }
                _ => Ok(Ok(false)),
            }
        }
        Upkeep::DropCorrupt { key } => match txn.get(Table::Data, key.as_bytes())? {
            Some(raw) if record::decode(&raw).is_err() => {
                txn.delete(Table::Data, key.as_bytes())?;
                tree.forget(txn, key)?;
                tracing::warn!(key = %key, "dropped a corrupt record; anti-entropy and read repair restore it from a replica");
                Ok(Ok(true))
            }
            _ => Ok(Ok(false)),
        },
    }
}

/// The key's stored set. A corrupt record counts as absent: it must never take part in a
/// merge, where its damaged versions could win. It also leaves the index and the tree
/// (the caller then writes the key afresh, or leaves it absent), so that the tree matches
/// what this replica really holds.
fn read_set(
    txn: &mut dyn WriteTxn,
    stats: &StorageStats,
    tree: &mut TreeDelta,
    key: &Key,
) -> Result<SiblingSet, StoreError> {
    match txn.get(Table::Data, key.as_bytes())? {
        Some(raw) => match record::decode(&raw) {
            Ok(set) => Ok(set),
            Err(e) => {
                stats.corrupt_records.inc();
                tracing::error!(key = %key, error = %e, "stored record is corrupt; treating it as absent");
                tree.forget(txn, key)?;
                Ok(SiblingSet::new())
            }
        },
        None => Ok(SiblingSet::new()),
    }
}

fn write_set(
    txn: &mut dyn WriteTxn,
    tree: &mut TreeDelta,
    key: &Key,
    current: SiblingSet,
    next: SiblingSet,
    dot: Option<Dot>,
) -> Result<Applied, StoreError> {
    let changed = next != current;
    if changed {
        txn.put(Table::Data, key.as_bytes(), &record::encode(&next))?;
        tree.record(txn, key, &current, &next)?;
    }
    Ok(Applied {
        had_live: current.has_live(),
        set: next,
        changed,
        dot,
    })
}
