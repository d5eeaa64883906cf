//! The replica: this node's copy of the keys it holds, read from the store and changed
//! only through the group-commit writer.

pub mod record;
pub mod writer;

use std::ops::Bound;
use std::sync::Arc;

use crate::key::Key;
use crate::store::{Store, StoreError, Table};
use crate::version::SiblingSet;

pub use writer::{Applied, Mutation, WriterHandle, WriterSettings};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    #[error("the write would leave more than {limit} siblings; read the key, merge the siblings, and write back with the causality token")]
    SiblingLimit { limit: usize },
    #[error("storage failed: {0}")]
    Store(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Store(e.to_string())
    }
}

/// One key and its set, as a scan returns them.
pub type KeyedSet = (Key, SiblingSet);

#[derive(Clone)]
pub struct LocalKv {
    store: Arc<dyn Store>,
    writer: WriterHandle,
}

impl LocalKv {
    pub fn new(store: Arc<dyn Store>, writer: WriterHandle) -> Self {
        LocalKv { store, writer }
    }

    /// The committed set for `key`. Reads never wait for the writer (redb is MVCC).
    pub fn read(&self, key: &Key) -> Result<Option<SiblingSet>, KvError> {
        match self.store.get(Table::Data, key.as_bytes())? {
            Some(raw) => Ok(Some(record::decode(&raw)?)),
            None => Ok(None),
        }
    }

    pub async fn apply(&self, mutation: Mutation) -> Result<Applied, KvError> {
        self.writer.submit(mutation).await
    }

    /// Up to `limit` stored keys in `(start, end)`, in key order, tombstoned ones included.
    pub fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyedSet>, KvError> {
        let rows = self.store.scan(Table::Data, start, end, limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8(k)
                    .ok()
                    .and_then(|s| Key::new(s).ok())
                    .ok_or_else(|| StoreError::Corrupt("stored key is not a valid key".into()))?;
                Ok((key, record::decode(&v)?))
            })
            .collect()
    }
}
