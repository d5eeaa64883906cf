//! An in-memory [`Store`]: the same semantics as redb, with nothing on disk.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, RwLock};

use super::scan_page::take_bounded;
use super::{Entry, ScanPage, Store, StoreError, Table, TxnBody, WriteTxn};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: RwLock<HashMap<Table, Map>>,
    /// Serialises transactions, as redb's single writer does.
    writer: Mutex<()>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Writes staged until commit, so a failed body leaves the store untouched.
struct Staged<'a> {
    base: &'a RwLock<HashMap<Table, Map>>,
    changes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl WriteTxn for Staged<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(change) = self.changes.get(&(table, key.to_vec())) {
            return Ok(change.clone());
        }
        let tables = self.base.read().map_err(poisoned)?;
        Ok(tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.changes
            .insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.changes.insert((table, key.to_vec()), None);
        Ok(())
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Engine("memory store lock poisoned".into())
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tables = self.tables.read().map_err(poisoned)?;
        Ok(tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tables = self.tables.read().map_err(poisoned)?;
        let Some(map) = tables.get(&table) else {
            return Ok(Vec::new());
        };
        if crate::store::redb::empty_range(start, end) {
            return Ok(Vec::new());
        }
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_bounded(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        let tables = self.tables.read().map_err(poisoned)?;
        let Some(map) = tables.get(&table) else {
            return Ok(ScanPage::default());
        };
        if crate::store::redb::empty_range(start, end) {
            return Ok(ScanPage::default());
        }
        let rows = map
            .range::<[u8], _>((start, end))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        take_bounded(rows, limit, max_bytes)
    }

    fn write(&self, _durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
        let _writer = self.writer.lock().map_err(poisoned)?;
        let mut staged = Staged {
            base: &self.tables,
            changes: BTreeMap::new(),
        };
        body(&mut staged)?;
        let changes = staged.changes;
        let mut tables = self.tables.write().map_err(poisoned)?;
        for ((table, key), value) in changes {
            let map = tables.entry(table).or_default();
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
