//! Storage: an ordered byte-key store with tables and all-or-nothing write transactions.
//!
//! The node never talks to redb directly; it talks to [`Store`]. There are two
//! implementations: [`RedbStore`] (the default, on disk) and [`MemoryStore`] (for tests and
//! for fast simulations), and [`WalStore`], redb behind a write-ahead log (`wal`), so
//! that a durable write costs one append and fdatasync of a log. Writes go through one
//! transaction at a time — the group-commit
//! writer in `kv::writer` is the only writer — so an implementation needs no write-write
//! conflict handling. [`scan_page`] bounds scans in bytes as well as rows.

pub mod cache_size;
mod memory;
mod redb;
pub mod scan_page;
pub mod wal;

use std::ops::Bound;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::scan_page::ScanPage;
pub use self::wal::{WalSettings, WalStore};

/// The tables a node keeps. Each is an ordered map from bytes to bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// key → encoded sibling set.
    Data,
    /// node identity and bookkeeping (`crate::identity`).
    Meta,
    /// hints held for down replicas, keyed by target then key (hinted handoff).
    Hints,
    /// ring position ‖ key → digest of the stored set: keys in ring order, for
    /// anti-entropy and data movement.
    Index,
    /// anti-entropy tree leaf → its summary (`merkle`), kept in step with `Data`.
    Leaves,
    /// key → time of its newest tombstone, for keys whose versions are all tombstones.
    Tombstones,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Data,
        Table::Meta,
        Table::Hints,
        Table::Index,
        Table::Leaves,
        Table::Tombstones,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Data => "data",
            Table::Meta => "meta",
            Table::Hints => "hints",
            Table::Index => "index",
            Table::Leaves => "leaves",
            Table::Tombstones => "tombstones",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The storage engine panicked (redb does on some corrupt pages); caught at the store
    /// boundary so that one bad page fails one request, not the connection or the node.
    #[error("storage engine panicked: {0}")]
    Panic(String),
    /// An fsync failed: data had reached the kernel and may have been dropped from it, so
    /// no later fsync proves anything. Only a restart recovers.
    #[error("fsync failed: {0}")]
    SyncFailed(#[source] std::io::Error),
}

impl StoreError {
    /// Whether the storage ran out of space (or quota): a state the node can leave once
    /// space returns, unlike a failed fsync.
    /// Whether the error says that what was read is damaged: the record (checksum), or
    /// the engine's pages (a redb corruption report or panic).
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Corrupt(_) | StoreError::Panic(_))
    }

    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Io(e) => io_is_no_space(e),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT, by kind or by errno (a wrapped error may carry only the errno).
pub fn io_is_no_space(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl From<::redb::Error> for StoreError {
    fn from(e: ::redb::Error) -> Self {
        match e {
            // Keep the io error itself: its kind decides between 507 and 500.
            ::redb::Error::Io(io) => StoreError::Io(io),
            ::redb::Error::Corrupted(m) => StoreError::Corrupt(m),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// One key-value pair as read from a table.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The view of a table inside a write transaction: reads see the transaction's own writes.
pub trait WriteTxn {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
}

/// The body of a write transaction. An error aborts the whole transaction.
pub type TxnBody<'a> = &'a mut dyn FnMut(&mut dyn WriteTxn) -> Result<(), StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Reads the latest committed value. Never blocks on the writer.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with keys in the range, in key order.
    fn scan(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Up to `limit` entries in the range, in key order, stopping once the entries read
    /// reach `max_bytes` (keys and values; at least one entry), and whether the range
    /// holds more (see [`scan_page`]). The default reads through [`Store::scan`], so a
    /// wrapper keeps its behaviour; the stores override it to read no more than the cut.
    fn scan_bounded(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        let rows = self.scan(table, start, end, limit.saturating_add(1))?;
        scan_page::take_bounded(rows.into_iter().map(Ok), limit, max_bytes)
    }

    /// Runs `body` in one transaction and commits it. When `durable`, the commit (and every
    /// commit before it) is on stable storage when this returns.
    fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError>;

    /// Makes every earlier commit durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Closes and opens the storage again, after an I/O error left the engine refusing
    /// every operation (redb answers "Previous I/O error occurred" until reopened). Commits
    /// that were not durable may be gone afterwards. Stores without the need do nothing.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! One suite, run against both implementations.
    use super::*;

    fn suite(store: &dyn Store) {
        store
            .write(true, &mut |txn| {
                txn.put(Table::Data, b"b", b"2")?;
                txn.put(Table::Data, b"a", b"1")?;
                txn.put(Table::Meta, b"a", b"meta")?;
                // A transaction reads its own writes.
                assert_eq!(txn.get(Table::Data, b"a")?, Some(b"1".to_vec()));
                txn.delete(Table::Data, b"b")?;
                assert_eq!(txn.get(Table::Data, b"b")?, None);
                txn.put(Table::Data, b"c", b"3")
            })
            .unwrap();
        assert_eq!(store.get(Table::Data, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.get(Table::Meta, b"a").unwrap(),
            Some(b"meta".to_vec())
        );
        assert_eq!(store.get(Table::Data, b"b").unwrap(), None);

        // A failing body commits nothing.
        let failed = store.write(true, &mut |txn| {
            txn.put(Table::Data, b"z", b"26")?;
            Err(StoreError::Corrupt("boom".into()))
        });
        assert!(failed.is_err());
        assert_eq!(store.get(Table::Data, b"z").unwrap(), None);

        let all = store
            .scan(Table::Data, Bound::Unbounded, Bound::Unbounded, 10)
            .unwrap();
        assert_eq!(
            all,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        let after_a = store
            .scan(Table::Data, Bound::Excluded(b"a"), Bound::Unbounded, 10)
            .unwrap();
        assert_eq!(after_a.len(), 1);
        let limited = store
            .scan(Table::Data, Bound::Unbounded, Bound::Excluded(b"c"), 10)
            .unwrap();
        assert_eq!(limited.len(), 1);
        // A byte cut stops after the entry that reaches the budget, and says more.
        let cut = store
            .scan_bounded(Table::Data, Bound::Unbounded, Bound::Unbounded, 10, 1)
            .unwrap();
        assert_eq!(cut.rows, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert!(cut.more);
        let rest = store
            .scan_bounded(Table::Data, Bound::Excluded(b"a"), Bound::Unbounded, 10, 1)
            .unwrap();
        assert_eq!(rest.rows.len(), 1);
        assert!(!rest.more);
        store.sync().unwrap();
    }

    #[test]
    fn memory_store_suite() {
        suite(&MemoryStore::new());
    }

    #[test]
    fn redb_store_suite_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            suite(&store);
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.get(Table::Data, b"c").unwrap(), Some(b"3".to_vec()));
    }
}
