//! The replica: this node's copy of the keys it holds, read from the store and changed
//! only through the group-commit writer.

pub mod hints;
pub mod record;
pub mod summary;
pub mod writer;

use std::ops::Bound;
use std::sync::Arc;

use crate::key::Key;
use crate::store::{Store, StoreError, Table};
use crate::version::{Payload, SiblingSet, VersionVector};

pub use hints::{HintLedger, HintRecord, Pending};
use summary::SharedTree;
pub use writer::{Applied, Mutation, Outcome, WriterHandle, WriterSettings};

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

/// One stored hint, as the handoff worker reads it.
#[derive(Debug, Clone)]
pub struct StoredHint {
    pub key: Key,
    pub record: HintRecord,
    /// The stored bytes, to delete the hint only if it did not change meanwhile.
    pub raw: Vec<u8>,
}

#[derive(Clone)]
pub struct LocalKv {
    store: Arc<dyn Store>,
    writer: WriterHandle,
    hints: Arc<HintLedger>,
    tree: SharedTree,
}

impl LocalKv {
    pub fn new(
        store: Arc<dyn Store>,
        writer: WriterHandle,
        hints: Arc<HintLedger>,
        tree: SharedTree,
    ) -> Self {
        LocalKv {
            store,
            writer,
            hints,
            tree,
        }
    }

    /// The anti-entropy tree of what this node stores.
    pub fn tree(&self) -> &SharedTree {
        &self.tree
    }

    /// Hints held here, per target.
    pub fn hint_ledger(&self) -> &HintLedger {
        &self.hints
    }

    /// A client write on this replica.
    pub async fn update(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        written_at_ms: u64,
    ) -> Result<Applied, KvError> {
        self.applied(Mutation::Update {
            key,
            seen,
            payload,
            written_at_ms,
        })
        .await
    }

    /// Merges another replica's set into this one.
    pub async fn merge(&self, key: Key, set: SiblingSet) -> Result<Applied, KvError> {
        self.applied(Mutation::Merge { key, set }).await
    }

    async fn applied(&self, mutation: Mutation) -> Result<Applied, KvError> {
        match self.writer.submit(mutation).await? {
            Outcome::Applied(a) => Ok(a),
            other => Err(KvError::Store(format!(
                "unexpected writer outcome {other:?}"
            ))),
        }
    }

    /// Keeps a hint for `target`; `false` when its bound is full.
    pub async fn store_hint(
        &self,
        target: u64,
        key: Key,
        set: SiblingSet,
        now_ms: u64,
    ) -> Result<bool, KvError> {
        match self
            .writer
            .submit(Mutation::Hint {
                target,
                key,
                set,
                now_ms,
            })
            .await?
        {
            Outcome::HintStored => Ok(true),
            Outcome::HintRefused => Ok(false),
            other => Err(KvError::Store(format!(
                "unexpected writer outcome {other:?}"
            ))),
        }
    }

    /// Deletes a hint that was handed off, if it is still the one delivered.
    pub async fn delete_hint(&self, target: u64, hint: &StoredHint) -> Result<bool, KvError> {
        match self
            .writer
            .submit(Mutation::DeleteHint {
                target,
                key: hint.key.clone(),
                expected: hint.raw.clone(),
            })
            .await?
        {
            Outcome::HintDeleted(deleted) => Ok(deleted),
            other => Err(KvError::Store(format!(
                "unexpected writer outcome {other:?}"
            ))),
        }
    }

    /// Up to `limit` hints for `target`, after key `after`.
    pub fn scan_hints(
        &self,
        target: u64,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<StoredHint>, KvError> {
        let (start, end) = hints::target_range(target);
        let after_key = after.map(|k| hints::hint_key(target, k));
        let lower = match &after_key {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let rows = self.store.scan(Table::Hints, lower, upper, limit)?;
        rows.into_iter()
            .map(|(k, raw)| {
                let (_, key) = hints::split_hint_key(&k)?;
                Ok(StoredHint {
                    key,
                    record: HintRecord::decode(&raw)?,
                    raw,
                })
            })
            .collect()
    }

    /// The committed set for `key`. Reads never wait for the writer (redb is MVCC).
    pub fn read(&self, key: &Key) -> Result<Option<SiblingSet>, KvError> {
        match self.store.get(Table::Data, key.as_bytes())? {
            Some(raw) => Ok(Some(record::decode(&raw)?)),
            None => Ok(None),
        }
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
