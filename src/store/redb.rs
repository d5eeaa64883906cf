//! The on-disk [`Store`]: redb, a copy-on-write B-tree with ACID commits.

use std::fs;
use std::ops::Bound;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Entry, Store, StoreError, Table, TxnBody, WriteTxn};

const FILE_NAME: &str = "ringkv.redb";

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let created = !path.exists();
        let db = Database::create(&path).map_err(redb::Error::from)?;
        if created {
            // redb syncs the file but not the directory entry that names it: without this a
            // power loss right after the first commit could lose the whole database.
            sync_dir(dir)?;
        }
        RedbStore::init(db)
    }

    /// Opens (or creates) a database on another storage backend: the simulation's disk.
    /// The caller makes the file's name durable, as [`RedbStore::open`] does with
    /// `sync_dir`.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
            .map_err(redb::Error::from)?;
        RedbStore::init(db)
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        let store = RedbStore { db };
        // Create every table up front so readers never race a missing table.
        store.write(true, &mut |_| Ok(()))?;
        Ok(store)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
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
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn
            .open_table(definition(table))
            .map_err(redb::Error::from)?;
        let value = t.get(key).map_err(redb::Error::from)?;
        Ok(value.map(|v| v.value().to_vec()))
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
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn
            .open_table(definition(table))
            .map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.range::<&[u8]>((start, end)).map_err(redb::Error::from)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(redb::Error::from)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb::Error::from)?;
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
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.write(true, &mut |_| Ok(()))
    }
}
