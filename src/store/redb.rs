//! The on-disk [`Store`]: redb, a copy-on-write B-tree with ACID commits.
//!
//! Three guards sit between the node and redb. Every call runs under `catch_unwind`, since
//! redb panics ("entered unreachable code") on some corrupt pages, and one bad page must
//! fail one request, not kill the connection or the node. The file goes through a
//! backend that remembers whether an fsync failed, which is the one I/O error a reopen
//! cannot undo. And the database sits behind a lock so it can be reopened in place after
//! an I/O error (a full disk), with every holder of the store switching over at once.

use std::fs;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use redb::backends::FileBackend;
use redb::{
    BackendError, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition,
};

use super::scan_page::take_bounded;
use super::{Entry, ScanPage, Store, StoreError, Table, TxnBody, WriteTxn};

const FILE_NAME: &str = "ringkv.redb";

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

#[derive(Debug)]
pub struct RedbStore {
    /// `None` only between a failed reopen and the next successful one.
    db: RwLock<Option<Database>>,
    /// Where the file lives, to reopen it; `None` for a caller's backend (the simulation),
    /// which cannot be reopened.
    dir: Option<PathBuf>,
    /// Set by the backend when an fsync failed, for the life of the process.
    sync_failed: Arc<AtomicBool>,
    /// redb's page cache, kept for a reopen.
    cache_bytes: usize,
}

/// Runs a call into redb, turning a panic into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(what, panic = %message, "storage engine panicked");
            Err(StoreError::Panic(format!("{what}: {message}")))
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the database in `dir`, with the default page cache
    /// ([`crate::config::DEFAULT_CACHE_BYTES`]). A file redb cannot open, or panics on, is
    /// an error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        RedbStore::open_with_cache(dir, crate::config::DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a page cache of `cache_bytes` (`--cache-bytes`). redb's
    /// own default, 1 GiB, fills under a burst of writes and is never given back.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let sync_failed = Arc::new(AtomicBool::new(false));
        let db = open_file(dir, &sync_failed, cache_bytes)?;
        RedbStore::init(db, Some(dir.to_owned()), sync_failed, cache_bytes)
    }

    /// Opens (or creates) a database on another storage backend: the simulation's disk.
    /// The caller makes the file's name durable, as [`RedbStore::open`] does with
    /// `sync_dir`.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = guarded("open", || {
            Ok(redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create_with_backend(backend)
                .map_err(redb::Error::from)?)
        })?;
        RedbStore::init(db, None, Arc::default(), cache_bytes)
    }

    fn init(
        db: Database,
        dir: Option<PathBuf>,
        sync_failed: Arc<AtomicBool>,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let store = RedbStore {
            db: RwLock::new(Some(db)),
            dir,
            sync_failed,
            cache_bytes,
        };
        // Create every table up front so readers never race a missing table.
        store.write(true, &mut |_| Ok(()))?;
        Ok(store)
    }

    /// Runs `f` over one table in a read transaction, under [`guarded`] (so a panic inside
    /// redb, as on a corrupt page, comes back as an error).
    fn read_table<T>(
        &self,
        op: &'static str,
        table: Table,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        guarded(op, || {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or(StoreError::Engine("closed".into()))?;
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let t = txn
                .open_table(definition(table))
                .map_err(redb::Error::from)?;
            f(&t)
        })
    }

    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        // A panic while holding the lock is caught in `guarded`; the database handle
        // itself is still the one to use (or to reopen), so poisoning is ignored.
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Engine(
                "the database is closed after an I/O error; reopening on a timer".into(),
            ));
        }
        Ok(guard)
    }

    /// The error of a failed commit: a failed fsync is told apart, since nothing recovers
    /// from it but a restart.
    fn commit_error(&self, e: StoreError) -> StoreError {
        if self.sync_failed.load(Ordering::SeqCst) {
            match e {
                StoreError::Io(io) => StoreError::SyncFailed(io),
                other => StoreError::SyncFailed(std::io::Error::other(other.to_string())),
            }
        } else {
            e
        }
    }
}

fn open_file(
    dir: &Path,
    sync_failed: &Arc<AtomicBool>,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let created = !path.exists();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let backend = Tracked {
        inner: FileBackend::new(file).map_err(redb::Error::from)?,
        sync_failed: sync_failed.clone(),
    };
    let db = guarded("open", || {
        Ok(redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
            .map_err(redb::Error::from)?)
    })?;
    if created {
        // redb syncs the file but not the directory entry that names it: without this a
        // power loss right after the first commit could lose the whole database.
        sync_dir(dir)?;
    }
    Ok(db)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// redb's file backend, noting a failed fsync. An error of `write` or `set_len` (ENOSPC)
/// means the data never reached the kernel, and a reopen can retry; a failed `sync_data`
/// means the kernel may have dropped pages it had, which no later fsync can detect.
#[derive(Debug)]
struct Tracked {
    inner: FileBackend,
    sync_failed: Arc<AtomicBool>,
}

impl StorageBackend for Tracked {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let r = self.inner.sync_data();
        if r.is_err() {
            self.sync_failed.store(true, Ordering::SeqCst);
        }
        r
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Whether `(start, end)` is empty or inverted. BTreeMap panics on an inverted range and
/// redb returns nothing; one check keeps both stores alike.
pub(crate) fn empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

type RedbTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

struct Txn<'t> {
    tables: Vec<(Table, RedbTable<'t>)>,
}

impl<'t> Txn<'t> {
    fn table(&mut self, table: Table) -> Result<&mut RedbTable<'t>, StoreError> {
        self.tables
            .iter_mut()
            .find(|(t, _)| *t == table)
            .map(|(_, t)| t)
            .ok_or_else(|| StoreError::Engine(format!("table {} not open", table.name())))
    }
}

impl WriteTxn for Txn<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.table(table)?;
        let value = t.get(key).map_err(redb::Error::from)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.table(table)?
            .insert(key, value)
            .map_err(redb::Error::from)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.table(table)?.remove(key).map_err(redb::Error::from)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_table("read", table, |t| {
            let value = t.get(key).map_err(redb::Error::from)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if empty_range(start, end) {
            return Ok(Vec::new());
        }
        self.read_table("scan", table, |t| {
            let mut out = Vec::new();
            for item in t.range::<&[u8]>((start, end)).map_err(redb::Error::from)? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.map_err(redb::Error::from)?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn scan_bounded(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        if empty_range(start, end) {
            return Ok(ScanPage::default());
        }
        self.read_table("scan", table, |t| {
            // Lazy: rows past the cut (but the one that tells `more`) are never copied.
            let rows = t
                .range::<&[u8]>((start, end))
                .map_err(redb::Error::from)?
                .map(|item| {
                    let (k, v) = item.map_err(redb::Error::from)?;
                    Ok((k.value().to_vec(), v.value().to_vec()))
                });
            take_bounded(rows, limit, max_bytes)
        })
    }

    fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
        guarded("write", || {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or(StoreError::Engine("closed".into()))?;
            let mut txn = db.begin_write().map_err(redb::Error::from)?;
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(durability)
                .map_err(|e| StoreError::Engine(e.to_string()))?;
            {
                let mut tables = Vec::with_capacity(Table::ALL.len());
                for table in Table::ALL {
                    let t = txn
                        .open_table(definition(table))
                        .map_err(redb::Error::from)?;
                    tables.push((table, t));
                }
                let mut view = Txn { tables };
                // On error the transaction is dropped, which aborts it.
                body(&mut view)?;
            }
            txn.commit()
                .map_err(|e| self.commit_error(redb::Error::from(e).into()))?;
            Ok(())
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.write(true, &mut |_| Ok(()))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else {
            return Err(StoreError::Engine(
                "this store's backend cannot be reopened".into(),
            ));
        };
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle goes first: it holds the file's lock. Its drop may try to write
        // and fail, or panic, on the storage that failed it; either way it is gone.
        if let Some(old) = slot.take() {
            let _ = guarded("close", || {
                drop(old);
                Ok(())
            });
        }
        let db = open_file(dir, &self.sync_failed, self.cache_bytes)?;
        *slot = Some(db);
        tracing::info!(dir = %dir.display(), "database reopened");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a storage call comes back as an error carrying its message.
    #[test]
    fn a_panic_in_the_engine_is_an_error() {
        let r: Result<(), StoreError> = guarded("read", || unreachable!("corrupt page"));
        match r {
            Err(StoreError::Panic(m)) => assert!(m.contains("corrupt page"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(guarded("read", || Ok(7)), Ok(7)));
    }

    /// ENOSPC keeps its kind through redb's error and ours (it decides 507 over 500).
    #[test]
    fn no_space_survives_the_conversion() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = StoreError::from(redb::Error::Io(io));
        assert!(e.is_no_space(), "{e:?}");
        assert!(!StoreError::Engine("x".into()).is_no_space());
        let sync = StoreError::SyncFailed(std::io::Error::from_raw_os_error(28));
        assert!(
            !sync.is_no_space(),
            "a failed fsync is never the recoverable state"
        );
    }
}
