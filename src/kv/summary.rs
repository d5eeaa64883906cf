//! What a write changes besides the data row: the position index, the anti-entropy tree's
//! leaf sums and the tombstone index. All of it commits in the write's transaction, so
//! the tree always describes exactly what is stored.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use xxhash_rust::xxh3::xxh3_64;

use super::record;
use crate::cluster::ring::key_position;
use crate::key::Key;
use crate::merkle::{leaf_of, Summary, Tree, LEAVES};
use crate::store::{Store, StoreError, Table, WriteTxn};
use crate::version::SiblingSet;

/// The digest of a stored set: what anti-entropy compares. Over the canonical bytes, not
/// the stored ones (see [`record::canonical`]).
pub fn digest(set: &SiblingSet) -> u64 {
    xxh3_64(&record::canonical(set))
}

/// `position ‖ key`: the index row of a key.
pub fn index_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&key_position(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The in-memory tree, shared by the writer (which alone changes it, after each commit)
/// and the anti-entropy worker (which reads it).
pub type SharedTree = Arc<RwLock<Tree>>;

/// Tree changes made by one transaction, applied to the shared tree after it commits.
#[derive(Default)]
pub struct TreeDelta(BTreeMap<usize, (Summary, Summary)>);

impl TreeDelta {
    /// Records, inside the transaction, that `key` went from `before` to `after` (empty
    /// sets are absent keys).
    pub fn record(
        &mut self,
        txn: &mut dyn WriteTxn,
        key: &Key,
        before: &SiblingSet,
        after: &SiblingSet,
    ) -> Result<(), StoreError> {
        let ikey = index_key(key.as_bytes());
        let leaf = leaf_of(key_position(key.as_bytes()));
        let entry = self.0.entry(leaf).or_default();
        if !before.is_empty() {
            entry.1.add(Summary::of(key.as_bytes(), digest(before)));
        }
        // The tombstone row exists exactly when the set is stored and all tombstones: only
        // then is there one to remove, which spares every ordinary write a B-tree delete.
        let had_tombstone_row = !before.is_empty() && !before.has_live();
        if after.is_empty() {
            txn.delete(Table::Index, &ikey)?;
            if had_tombstone_row {
                txn.delete(Table::Tombstones, key.as_bytes())?;
            }
            return Ok(());
        }
        let d = digest(after);
        entry.0.add(Summary::of(key.as_bytes(), d));
        txn.put(Table::Index, &ikey, &d.to_be_bytes())?;
        if after.has_live() {
            if had_tombstone_row {
                txn.delete(Table::Tombstones, key.as_bytes())?;
            }
        } else {
            let newest = after
                .versions()
                .iter()
                .map(|v| v.written_at_ms)
                .max()
                .unwrap_or(0);
            txn.put(Table::Tombstones, key.as_bytes(), &newest.to_be_bytes())?;
        }
        Ok(())
    }

    /// Takes `key` out of the index, the tombstone index and its leaf's sum, inside the
    /// transaction, when its stored record is corrupt and so cannot say what it was: the
    /// index row still holds the digest the leaf counted. Afterwards the key is absent on
    /// this replica as far as anti-entropy can tell, so the next exchange pulls it from a
    /// replica that has it. Returns whether the key was indexed.
    pub fn forget(&mut self, txn: &mut dyn WriteTxn, key: &Key) -> Result<bool, StoreError> {
        let ikey = index_key(key.as_bytes());
        let indexed = match txn.get(Table::Index, &ikey)? {
            Some(raw) => {
                let bytes: [u8; 8] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("bad index row".into()))?;
                let leaf = leaf_of(key_position(key.as_bytes()));
                let entry = self.0.entry(leaf).or_default();
                entry
                    .1
                    .add(Summary::of(key.as_bytes(), u64::from_be_bytes(bytes)));
                txn.delete(Table::Index, &ikey)?;
                true
            }
            None => false,
        };
        txn.delete(Table::Tombstones, key.as_bytes())?;
        Ok(indexed)
    }

    /// Writes the changed leaf sums, still inside the transaction.
    pub fn store(&self, txn: &mut dyn WriteTxn) -> Result<(), StoreError> {
        for (leaf, (added, removed)) in &self.0 {
            let lkey = (*leaf as u16).to_be_bytes();
            let mut s = match txn.get(Table::Leaves, &lkey)? {
                Some(raw) => Summary::from_bytes(&raw)
                    .ok_or_else(|| StoreError::Corrupt("bad leaf summary".into()))?,
                None => Summary::default(),
            };
            s.add(*added);
            s.sub(*removed);
            txn.put(Table::Leaves, &lkey, &s.to_bytes())?;
        }
        Ok(())
    }

    /// After the commit: the same change in memory.
    pub fn apply(self, tree: &SharedTree) {
        let mut t = tree.write().unwrap_or_else(|p| p.into_inner());
        for (leaf, (added, removed)) in self.0 {
            t.apply(leaf, added, removed);
        }
    }
}

/// Loads the tree from its stored leaves.
pub fn load_tree(store: &dyn Store) -> Result<Tree, StoreError> {
    let rows = store.scan(
        Table::Leaves,
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        LEAVES,
    )?;
    let mut leaves = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let leaf = u16::from_be_bytes(
            k.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("bad leaf key".into()))?,
        );
        let s = Summary::from_bytes(&v)
            .ok_or_else(|| StoreError::Corrupt("bad leaf summary".into()))?;
        leaves.push((leaf as usize, s));
    }
    Ok(Tree::from_leaves(leaves))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::writer::{self, Mutation, WriterSettings};
    use crate::kv::HintLedger;
    use crate::store::MemoryStore;
    use crate::version::{Actor, Payload};
    use bytes::Bytes;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// The tree recomputed from the data table, key by key.
    fn recomputed(store: &dyn Store) -> Tree {
        let mut tree = Tree::default();
        for (k, v) in store
            .scan(
                Table::Data,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )
            .unwrap()
        {
            let set = record::decode(&v).unwrap();
            tree.apply(
                leaf_of(key_position(&k)),
                Summary::of(&k, digest(&set)),
                Summary::default(),
            );
        }
        tree
    }

    fn writer_settings(tree: &SharedTree) -> WriterSettings {
        WriterSettings::for_test(tree.clone(), Arc::new(HintLedger::default()))
    }

    /// Flips the last byte of a stored record, as a bad disk might.
    fn damage(store: &dyn Store, key: &Key) {
        store
            .write(true, &mut |txn| {
                let mut raw = txn.get(Table::Data, key.as_bytes())?.expect("stored");
                let last = raw.len() - 1;
                raw[last] ^= 0x01;
                txn.put(Table::Data, key.as_bytes(), &raw)
            })
            .unwrap();
    }

    /// A corrupt record reads as missing, is dropped with its index and leaf entries (so
    /// the tree says what is really stored, and anti-entropy sees the key missing), and a
    /// replica's set merged into it replaces it instead of merging with it.
    #[tokio::test]
    async fn a_corrupt_record_is_missing_dropped_from_the_tree_and_never_merged() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let tree: SharedTree = Arc::default();
        let (handle, task) = writer::spawn(
            store.clone(),
            writer_settings(&tree),
            CancellationToken::new(),
        );
        let value = |s: &str| Payload::Value {
            data: Bytes::from(s.to_owned()),
            content_type: "t".into(),
        };
        let keys: Vec<Key> = (0..10)
            .map(|i| Key::new(format!("k{i}")).unwrap())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            handle
                .submit(Mutation::Update {
                    key: key.clone(),
                    seen: None,
                    payload: value(&format!("v{i}")),
                    written_at_ms: 1,
                })
                .await
                .unwrap();
        }
        let before = tree.read().unwrap().root();
        let local = crate::kv::LocalKv::new(
            store.clone(),
            handle.clone(),
            Arc::new(HintLedger::default()),
            tree.clone(),
        );

        damage(store.as_ref(), &keys[3]);
        assert_eq!(local.read(&keys[3]).unwrap(), None);
        assert_eq!(handle.stats().corrupt_records.get(), 1);
        // The drop is queued behind the read; wait for it, bounded.
        for _ in 0..200 {
            if store.get(Table::Data, b"k3").unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.get(Table::Data, b"k3").unwrap(), None, "not dropped");
        assert_eq!(store.get(Table::Index, &index_key(b"k3")).unwrap(), None);
        let after_drop = tree.read().unwrap().root();
        assert_ne!(after_drop, before, "the tree still counts the dropped key");
        assert_eq!(after_drop, recomputed(store.as_ref()).root());
        assert_eq!(load_tree(store.as_ref()).unwrap().root(), after_drop);

        // A replica's set arrives for a key whose stored record is corrupt: it is stored
        // as it came, the damaged versions take no part.
        damage(store.as_ref(), &keys[5]);
        let (theirs, _) = SiblingSet::new()
            .update(None, Actor { node: 2, epoch: 0 }, value("theirs"), 9)
            .expect("a fresh counter");
        let merged = handle
            .submit(Mutation::Merge {
                key: keys[5].clone(),
                set: theirs.clone(),
            })
            .await
            .unwrap();
        assert_eq!(merged.set, theirs);
        assert_eq!(local.read(&keys[5]).unwrap(), Some(theirs));
        assert_eq!(handle.stats().corrupt_records.get(), 2);
        assert_eq!(
            tree.read().unwrap().root(),
            recomputed(store.as_ref()).root()
        );
        assert_eq!(
            load_tree(store.as_ref()).unwrap().root(),
            recomputed(store.as_ref()).root()
        );
        drop((local, handle));
        task.abort();
    }

    /// A corrupt held hint is neither delivered nor merged with: a new hint for the key
    /// replaces it, and one found by the handoff scan is dropped.
    #[tokio::test]
    async fn a_corrupt_hint_is_replaced_or_dropped_never_delivered() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let tree: SharedTree = Arc::default();
        let hints = Arc::new(HintLedger::default());
        let mut settings = writer_settings(&tree);
        settings.max_hint_bytes = 1 << 20;
        settings.hints = hints.clone();
        let (handle, task) = writer::spawn(store.clone(), settings, CancellationToken::new());
        let local = crate::kv::LocalKv::new(store.clone(), handle.clone(), hints, tree);
        let set_of = |s: &str| {
            let payload = Payload::Value {
                data: Bytes::from(s.to_owned()),
                content_type: "t".into(),
            };
            SiblingSet::new()
                .update(None, Actor { node: 2, epoch: 0 }, payload, 1)
                .expect("a fresh counter")
                .0
        };
        let key = Key::new("h").unwrap();
        let damage_hint = || {
            let hkey = crate::kv::hints::hint_key(7, &key);
            store
                .write(true, &mut |txn| {
                    let mut raw = txn.get(Table::Hints, &hkey)?.expect("held");
                    let last = raw.len() - 1;
                    raw[last] ^= 0x01;
                    txn.put(Table::Hints, &hkey, &raw)
                })
                .unwrap();
        };
        assert!(local
            .store_hint(7, key.clone(), set_of("old"), 1)
            .await
            .unwrap());
        damage_hint();
        assert!(local
            .store_hint(7, key.clone(), set_of("new"), 2)
            .await
            .unwrap());
        let held = local.scan_hints(7, None, 10, usize::MAX).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].record.set, set_of("new"));
        assert_eq!(handle.stats().corrupt_records.get(), 1);

        damage_hint();
        assert!(local
            .scan_hints(7, None, 10, usize::MAX)
            .unwrap()
            .is_empty());
        assert_eq!(handle.stats().corrupt_records.get(), 2);
        for _ in 0..200 {
            if local.hint_ledger().pending(7).count == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            local.hint_ledger().pending(7).count,
            0,
            "corrupt hint not dropped"
        );
        drop((local, handle));
        task.abort();
    }

    #[tokio::test]
    async fn tree_tracks_every_write_and_survives_a_reload() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let tree: SharedTree = Arc::default();
        let (handle, task) = writer::spawn(
            store.clone(),
            WriterSettings::for_test(tree.clone(), Arc::new(HintLedger::default())),
            CancellationToken::new(),
        );
        let value = |s: &str| Payload::Value {
            data: Bytes::from(s.to_owned()),
            content_type: "t".into(),
        };
        let mut jobs = Vec::new();
        for i in 0..300u32 {
            let key = Key::new(format!("k{}", i % 50)).unwrap();
            let mutation = match i % 3 {
                0 => Mutation::Update {
                    key,
                    seen: None,
                    payload: value(&i.to_string()),
                    written_at_ms: 1,
                },
                1 => Mutation::Update {
                    key,
                    seen: None,
                    payload: Payload::Tombstone,
                    written_at_ms: 2,
                },
                _ => {
                    let (set, _) = SiblingSet::new()
                        .update(None, Actor { node: 2, epoch: 0 }, value("other"), 3)
                        .expect("a fresh counter");
                    Mutation::Merge { key, set }
                }
            };
            jobs.push(handle.submit(mutation));
        }
        for r in futures::future::join_all(jobs).await {
            r.unwrap();
        }
        let expected = recomputed(store.as_ref());
        assert_eq!(tree.read().unwrap().root(), expected.root());
        assert_eq!(load_tree(store.as_ref()).unwrap().root(), expected.root());
        // Every key whose versions are all tombstones, and only those, is in the index.
        let rows = store
            .scan(
                Table::Data,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )
            .unwrap();
        for (k, v) in rows {
            let set = record::decode(&v).unwrap();
            let marked = store.get(Table::Tombstones, &k).unwrap().is_some();
            assert_eq!(
                marked,
                !set.has_live(),
                "key {:?}",
                String::from_utf8_lossy(&k)
            );
            assert!(store.get(Table::Index, &index_key(&k)).unwrap().is_some());
        }
        drop(handle);
        task.abort();
    }
}
