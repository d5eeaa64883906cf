//! The replica: this node's copy of the keys it holds, read from the store and changed
//! only through the group-commit writer.

pub mod hints;
pub mod range;
pub mod record;
pub mod summary;
pub mod writable;
pub mod writer;

use std::ops::Bound;
use std::sync::Arc;

use crate::key::Key;
use crate::merkle::{Interval, Summary};
use crate::store::{Store, StoreError, Table};
use crate::version::{Payload, SiblingSet, VersionVector};

pub use hints::{HintLedger, HintRecord, Pending};
pub use range::ListRange;
use summary::SharedTree;
pub use writer::{Applied, Mutation, Staged, Upkeep, WriterHandle, WriterSettings};

/// `Clone` because the writer answers every job of a failed batch with the same error:
/// the store errors it carries are shared (`Arc`), which keeps their type.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum KvError {
    #[error("the write would leave more than {limit} siblings; read the key, merge the siblings, and write back with the causality token")]
    SiblingLimit { limit: usize },
    #[error("storage failed: {0}")]
    Store(#[source] Arc<StoreError>),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's dot counter cannot grow (see `SiblingSet::update_above`).
    #[error(transparent)]
    CounterOverflow(#[from] crate::version::CounterOverflow),
    /// A set from a peer carries a counter at u64::MAX, which no actor ever issues.
    #[error("refused a sibling set for key {key:?} from a peer: it carries a dot counter at u64::MAX, which no node issues (forged or corrupt)")]
    OverflowedSet { key: String },
    /// The storage is out of space: a 507, and a state the node leaves by itself.
    #[error("no space left for this write: {0}")]
    NoSpace(#[source] Arc<StoreError>),
    /// An fsync failed (`when` says on which path): no later write is acknowledged until
    /// the node restarts (see `writer::Refusal::failed`). A 500, like `Store`.
    #[error("fsync failed ({when}: {source}); this node accepts no writes until it restarts")]
    SyncFailed {
        when: &'static str,
        #[source]
        source: Arc<StoreError>,
    },
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        // 507 for a full disk, 500 otherwise (see `http::error`).
        if e.is_no_space() {
            KvError::NoSpace(Arc::new(e))
        } else {
            KvError::Store(Arc::new(e))
        }
    }
}

/// Bytes of records a background scan (scrub, the hint ledger's load) reads at once: a
/// count of rows alone would let a page of large sets take gigabytes.
pub const SCAN_BYTES: usize = 8 * 1024 * 1024;

/// One key and its set, as a scan returns them.
pub type KeyedSet = (Key, SiblingSet);

/// A scan's keys in order, and whether the range holds more past the last.
#[derive(Debug, Default)]
pub struct KeyedPage {
    pub rows: Vec<KeyedSet>,
    pub more: bool,
}

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

    /// Whether this node's storage takes writes now.
    pub fn write_state(&self) -> writable::WriteState {
        self.writer.write_state()
    }

    /// Changes of [`LocalKv::write_state`], for the task that announces them in gossip.
    pub fn watch_write_state(&self) -> tokio::sync::watch::Receiver<writable::WriteState> {
        self.writer.watch_write_state()
    }

    /// What the group-commit writer did.
    pub fn storage_stats(&self) -> &crate::stats::StorageStats {
        self.writer.stats()
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
        self.writer
            .submit(Mutation::Update {
                key,
                seen,
                payload,
                written_at_ms,
            })
            .await
    }

    /// A client write on this replica, answered twice: the resulting set once committed,
    /// and again once durable (see [`WriterHandle::submit_staged`]).
    pub async fn update_staged(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        written_at_ms: u64,
    ) -> Result<writer::Staged, KvError> {
        self.writer
            .submit_staged(Mutation::Update {
                key,
                seen,
                payload,
                written_at_ms,
            })
            .await
    }

    /// Merges another replica's set into this one.
    pub async fn merge(&self, key: Key, set: SiblingSet) -> Result<Applied, KvError> {
        self.writer.submit(Mutation::Merge { key, set }).await
    }

    /// Keeps a hint for `target`; `false` when its bound is full.
    pub async fn store_hint(
        &self,
        target: u64,
        key: Key,
        set: SiblingSet,
        now_ms: u64,
    ) -> Result<bool, KvError> {
        self.writer
            .submit_upkeep(Upkeep::Hint {
                target,
                key,
                set,
                now_ms,
            })
            .await
    }

    /// Deletes a hint that was handed off, if it is still the one delivered.
    pub async fn delete_hint(&self, target: u64, hint: &StoredHint) -> Result<bool, KvError> {
        self.writer
            .submit_upkeep(Upkeep::DeleteHint {
                target,
                key: hint.key.clone(),
                expected: hint.raw.clone(),
            })
            .await
    }

    /// Removes `key` if its stored set still has `digest`.
    pub async fn drop_if_digest(&self, key: Key, digest: u64) -> Result<bool, KvError> {
        self.writer
            .submit_upkeep(Upkeep::DropIfDigest { key, digest })
            .await
    }

    /// The summary of every key stored in a ring-position interval: whole leaves from the
    /// tree, and the partial leaves at the edges from the index.
    pub fn summary(&self, interval: Interval) -> Result<Summary, KvError> {
        let parts = interval.decompose();
        let mut sum = match parts.whole {
            Some((first, last)) => self
                .tree
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .leaves_sum(first, last),
            None => Summary::default(),
        };
        for edge in parts.edges {
            let mut after = None;
            loop {
                let (rows, more) = self.digests(edge, after.as_ref(), 1024)?;
                for (key, digest) in &rows {
                    sum.add(Summary::of(key.as_bytes(), *digest));
                }
                match (more, rows.last()) {
                    (true, Some((last, _))) => after = Some(last.clone()),
                    _ => break,
                }
            }
        }
        Ok(sum)
    }

    /// Up to `limit` keys stored in a ring-position interval, in position order, after
    /// `after`, with their digests; and whether more follow.
    pub fn digests(
        &self,
        interval: Interval,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<(Key, u64)>, bool), KvError> {
        let lower_key = match after {
            Some(k) => summary::index_key(k.as_bytes()),
            None => interval.lo.to_be_bytes().to_vec(),
        };
        let lower = if after.is_some() {
            Bound::Excluded(lower_key.as_slice())
        } else {
            Bound::Included(lower_key.as_slice())
        };
        let upper_key = interval.hi.checked_add(1).map(u64::to_be_bytes);
        let upper = upper_key
            .as_ref()
            .map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_slice()));
        let mut rows = self.store.scan(Table::Index, lower, upper, limit + 1)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let corrupt = || StoreError::Corrupt("bad index row".into());
        let entries = rows
            .into_iter()
            .map(|(k, v)| {
                let key = k
                    .get(8..)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    .and_then(|s| Key::new(s).ok())
                    .ok_or_else(corrupt)?;
                let digest = u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt())?);
                Ok((key, digest))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((entries, more))
    }

    /// Keys whose versions are all tombstones, after `after`, with their newest tombstone's
    /// time.
    pub fn tombstones(
        &self,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<(Key, u64)>, KvError> {
        let lower = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes()));
        let rows = self
            .store
            .scan(Table::Tombstones, lower, Bound::Unbounded, limit)?;
        let corrupt = || StoreError::Corrupt("bad tombstone row".into());
        Ok(rows
            .into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8(k)
                    .ok()
                    .and_then(|s| Key::new(s).ok())
                    .ok_or_else(corrupt)?;
                let at = u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt())?);
                Ok((key, at))
            })
            .collect::<Result<_, StoreError>>()?)
    }

    /// Up to `limit` hints for `target`, after key `after`, stopping once the hints read
    /// reach `max_bytes` (at least one): a hint holds a whole sibling set.
    pub fn scan_hints(
        &self,
        target: u64,
        after: Option<&Key>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredHint>, KvError> {
        let (start, end) = hints::target_range(target);
        let after_key = after.map(|k| hints::hint_key(target, k));
        let lower = match &after_key {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let rows = self
            .store
            .scan_bounded(Table::Hints, lower, upper, limit, max_bytes)?
            .rows;
        let mut out = Vec::with_capacity(rows.len());
        for (k, raw) in rows {
            let (_, key) = hints::split_hint_key(&k)?;
            match HintRecord::decode(&raw) {
                Ok(record) => out.push(StoredHint { key, record, raw }),
                // A corrupt hint is dropped, not delivered: its set cannot be trusted, and
                // anti-entropy brings the target what the hint held.
                Err(e) => {
                    self.corrupt(&key, &e);
                    self.writer.submit_detached(Upkeep::DeleteHint {
                        target,
                        key,
                        expected: raw,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Counts and logs a corrupt record.
    fn corrupt(&self, key: &Key, e: &StoreError) {
        self.writer.stats().corrupt_records.inc();
        tracing::error!(key = %key, error = %e, "stored record is corrupt; treating it as missing on this replica");
    }

    /// The set of a stored record, or `None` when it is corrupt: then it is counted,
    /// logged, and dropped (with its index and tree entries) by the writer, so that read
    /// repair and anti-entropy bring this replica a good copy.
    fn checked(&self, key: &Key, raw: &[u8]) -> Option<SiblingSet> {
        match record::decode(raw) {
            Ok(set) => Some(set),
            Err(e) => {
                self.corrupt(key, &e);
                self.writer
                    .submit_detached(Upkeep::DropCorrupt { key: key.clone() });
                None
            }
        }
    }

    /// The committed set for `key`. Reads never wait for the writer (redb is MVCC).
    ///
    /// A record that fails its checksum reads as missing (see [`LocalKv::checked`]). An
    /// engine error or panic on the read is counted and logged too, but answered as an
    /// error: the damage is in the engine's pages, where the record cannot be dropped, and
    /// an error keeps a quorum from counting this replica (a single node answers 500).
    pub fn read(&self, key: &Key) -> Result<Option<SiblingSet>, KvError> {
        match self.store.get(Table::Data, key.as_bytes()) {
            Ok(Some(raw)) => Ok(self.checked(key, &raw)),
            Ok(None) => Ok(None),
            Err(e) => {
                if e.is_corruption() {
                    self.corrupt(key, &e);
                }
                Err(e.into())
            }
        }
    }

    /// Checks the records of up to `limit` keys after `after` (and at most [`SCAN_BYTES`]
    /// of them), as a read would: a corrupt
    /// one is counted and dropped (see [`LocalKv::checked`]), so anti-entropy restores
    /// even keys nobody reads. Returns where to go on from (`None` at the end of the table)
    /// and how many were corrupt.
    pub fn scrub(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Option<Vec<u8>>, usize), KvError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let page =
            self.store
                .scan_bounded(Table::Data, lower, Bound::Unbounded, limit, SCAN_BYTES)?;
        let rows = page.rows;
        let mut corrupt = 0;
        for (k, v) in &rows {
            let Some(key) = std::str::from_utf8(k).ok().and_then(|s| Key::new(s).ok()) else {
                continue;
            };
            if self.checked(&key, v).is_none() {
                corrupt += 1;
            }
        }
        let next = if page.more {
            rows.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok((next, corrupt))
    }

    /// Up to `limit` stored keys in `(start, end)`, in key order, tombstoned ones included,
    /// stopping once the records read reach `max_bytes` (at least one key when the range
    /// has one), and whether the range holds more past the last key returned.
    pub fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeyedPage, KvError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut after: Option<Vec<u8>> = None;
        // A corrupt record is missing here, as on a read; the scan goes on past it, so that
        // a page is empty only at the end of the range (a page of only corrupt records
        // would give its caller no key to resume after).
        loop {
            let want = limit.saturating_sub(out.len());
            let budget = max_bytes.saturating_sub(bytes).max(1);
            let lower = after.as_deref().map_or(start, Bound::Excluded);
            let page = self
                .store
                .scan_bounded(Table::Data, lower, end, want, budget)?;
            for (k, v) in page.rows {
                bytes = bytes.saturating_add(k.len().saturating_add(v.len()));
                let key = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| Key::new(s).ok())
                    .ok_or_else(|| StoreError::Corrupt("stored key is not a valid key".into()))?;
                if let Some(set) = self.checked(&key, &v) {
                    out.push((key, set));
                }
                after = Some(k);
            }
            let full = out.len() >= limit || (!out.is_empty() && bytes >= max_bytes);
            if !page.more || full {
                return Ok(KeyedPage {
                    rows: out,
                    more: page.more,
                });
            }
        }
    }
}
