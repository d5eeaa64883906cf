//! Deliberate faults for the checker to catch (`--sabotage`): a [`Store`] wrapper that
//! breaks the node's storage from below, so that the product carries no fault code.
//!
//! The wrapper is armed once the node serves (`run_with_store`'s `on_ready`), not when it
//! opens: what a node commits while starting — its identity, its new epoch after a crash,
//! its running marker — stays as the product writes it. Broken, those would make the
//! node come back as a different or reused actor, a failure of another kind than the lost
//! writes the sabotage is meant to show.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringkv::store::{Entry, Store, StoreError, Table, TxnBody, WriteTxn};

/// Which fault a run's nodes carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sabotage {
    #[default]
    None,
    /// Acknowledge writes (client writes, replica merges, hints) without storing them.
    AckWithoutStore,
    /// Acknowledge once committed, but never make the commit durable.
    SkipFsync,
}

/// A store with a fault: see [`Sabotage`].
pub struct SabotagedStore {
    inner: Arc<dyn Store>,
    sabotage: Sabotage,
    armed: AtomicBool,
}

impl SabotagedStore {
    /// Disarmed until [`SabotagedStore::arm`].
    pub fn new(inner: Arc<dyn Store>, sabotage: Sabotage) -> Self {
        SabotagedStore {
            inner,
            sabotage,
            armed: AtomicBool::new(false),
        }
    }

    /// From now on the fault applies.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn fault(&self) -> Sabotage {
        if self.armed.load(Ordering::SeqCst) {
            self.sabotage
        } else {
            Sabotage::None
        }
    }
}

impl Store for SabotagedStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(table, start, end, limit)
    }

    fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
        match self.fault() {
            Sabotage::None => self.inner.write(durable, body),
            Sabotage::AckWithoutStore => self
                .inner
                .write(durable, &mut |txn| body(&mut Unstored { inner: txn })),
            // Committed, so visible and acknowledged, but left pending on the simulated
            // disk, where a crash discards it.
            Sabotage::SkipFsync => self.inner.write(false, body),
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        match self.fault() {
            Sabotage::SkipFsync => Ok(()),
            Sabotage::None | Sabotage::AckWithoutStore => self.inner.sync(),
        }
    }

    fn reopen(&self) -> Result<(), StoreError> {
        self.inner.reopen()
    }
}

/// A transaction that drops every put of a key's versions: the data row and what
/// describes it (ring index, tree leaves, tombstone times), so that the node's stored
/// state stays consistent with itself and nothing on disk — nor anti-entropy, which
/// reads the index and leaves — knows the write ever happened.
///
/// Kept: `Meta` (the node's identity and dot floor: losing the floor would make a
/// restarted node reissue dots, another fault than this one) and `Hints` (the writer
/// counts a hint's bytes in memory as it stores it, so a dropped hint would read as one
/// never delivered; kept, it is delivered as a merge to a node that drops it in turn).
/// Deletes pass through: they store nothing.
struct Unstored<'a> {
    inner: &'a mut dyn WriteTxn,
}

fn drops(table: Table) -> bool {
    match table {
        Table::Data | Table::Index | Table::Leaves | Table::Tombstones => true,
        Table::Meta | Table::Hints => false,
    }
}

impl WriteTxn for Unstored<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if drops(table) {
            return Ok(());
        }
        self.inner.put(table, key, value)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(table, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv::store::MemoryStore;

    fn put(store: &dyn Store, table: Table, key: &[u8]) {
        store
            .write(true, &mut |txn| txn.put(table, key, b"v"))
            .expect("write");
    }

    #[test]
    fn ack_without_store_drops_versions_once_armed() {
        let store = SabotagedStore::new(Arc::new(MemoryStore::new()), Sabotage::AckWithoutStore);
        put(&store, Table::Data, b"before");
        store.arm();
        for table in Table::ALL {
            put(&store, table, b"after");
        }
        assert!(store.get(Table::Data, b"before").unwrap().is_some());
        for table in Table::ALL {
            let kept = store.get(table, b"after").unwrap().is_some();
            assert_eq!(kept, !drops(table), "{table:?}");
        }
        assert!(!drops(Table::Meta) && !drops(Table::Hints) && drops(Table::Data));
    }

    /// Records how the store below is asked to write and sync.
    #[derive(Default)]
    struct Recorder {
        inner: MemoryStore,
        calls: std::sync::Mutex<Vec<&'static str>>,
    }

    impl Recorder {
        fn note(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Store for Recorder {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(table, key)
        }

        fn scan(
            &self,
            table: Table,
            start: Bound<&[u8]>,
            end: Bound<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Entry>, StoreError> {
            self.inner.scan(table, start, end, limit)
        }

        fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
            self.note(if durable { "durable" } else { "lazy" });
            self.inner.write(durable, body)
        }

        fn sync(&self) -> Result<(), StoreError> {
            self.note("sync");
            self.inner.sync()
        }
    }

    #[test]
    fn skip_fsync_commits_lazily_and_never_syncs_once_armed() {
        let below = Arc::new(Recorder::default());
        let store = SabotagedStore::new(below.clone(), Sabotage::SkipFsync);
        put(&store, Table::Meta, b"identity");
        store.sync().unwrap();
        store.arm();
        put(&store, Table::Data, b"k");
        store.sync().unwrap();
        assert_eq!(
            *below.calls.lock().unwrap(),
            ["durable", "sync", "lazy"],
            "armed, a durable commit goes down lazy and a sync goes nowhere"
        );
        assert!(
            store.get(Table::Data, b"k").unwrap().is_some(),
            "still committed"
        );
    }

    #[test]
    fn disarmed_or_none_passes_everything() {
        let none = SabotagedStore::new(Arc::new(MemoryStore::new()), Sabotage::None);
        none.arm();
        let idle = SabotagedStore::new(Arc::new(MemoryStore::new()), Sabotage::AckWithoutStore);
        for store in [&none, &idle] {
            put(store, Table::Data, b"k");
            assert!(store.get(Table::Data, b"k").unwrap().is_some());
        }
    }
}
