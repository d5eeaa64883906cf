//! A write-ahead log in front of redb, so that a durable write costs one fdatasync of an
//! append-only file instead of a durable redb commit, and the next batch can be applied
//! while the previous one syncs.
//!
//! A transaction commits in redb with `Durability::None` (visible at once, not durable),
//! and the rows it left behind are appended to the log as one record ([`record`]);
//! [`Store::sync`] fdatasyncs the log. Every `--wal-max-bytes` of log, or
//! `--wal-checkpoint-interval`, a transaction commits durably instead (`Immediate`) with
//! the seq of the last record it covers (the checkpoint), and the log starts over at
//! offset 0. Opening replays the records past the checkpoint and checkpoints again.
//!
//! The log is a [`redb::StorageBackend`], the same seam the database file comes through,
//! so the simulator's disk (which loses un-synced writes on a crash) covers it too.

mod log;
pub mod record;

use std::ops::Bound;
use std::time::Duration;

use redb::StorageBackend;
use tokio::time::Instant;

use self::log::{Log, Tail};
use self::record::Op;
use super::{Entry, RedbStore, Store, StoreError, Table, TxnBody, WriteTxn};

/// The log's file in a data dir, next to redb's.
const FILE_NAME: &str = "ringkv.wal";

/// Opens (or creates) the log file in `dir`. A new file's directory entry is synced, as
/// redb's is: a log whose name a power loss could take back is no log.
pub fn open_file(dir: &std::path::Path) -> Result<Box<dyn StorageBackend>, StoreError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let backend = redb::backends::FileBackend::new(file).map_err(redb::Error::from)?;
    if created {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Box::new(backend))
}

/// The meta row holding the seq of the last record the database holds durably.
const CHECKPOINT_KEY: &[u8] = b"wal_checkpoint";

/// When the log is folded into a durable database commit.
#[derive(Clone, Copy, Debug)]
pub struct WalSettings {
    /// Log bytes after which the next transaction checkpoints (`--wal-max-bytes`).
    pub max_bytes: u64,
    /// Time after which the next transaction checkpoints (`--wal-checkpoint-interval`).
    pub max_age: Duration,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(30),
        }
    }
}

/// What opening found in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: usize,
    /// Bytes past the last whole record: a torn last write, or an earlier run's records.
    pub tail_bytes: usize,
}

/// redb with the log in front of it.
#[derive(Debug)]
pub struct WalStore {
    db: RedbStore,
    log: Log,
    settings: WalSettings,
    /// When the last checkpoint was; under the log's lock in spirit (only the writer reads
    /// and sets it, inside `write`).
    checkpointed: std::sync::Mutex<Instant>,
    replayed: Replayed,
}

/// A transaction's view that notes every row it changes, for the log record.
struct Recording<'a> {
    inner: &'a mut dyn WriteTxn,
    ops: &'a mut Vec<Op>,
}

impl WriteTxn for Recording<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(table, key, value)?;
        self.ops.push(Op::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(table, key)?;
        self.ops.push(Op::Delete {
            table,
            key: key.to_vec(),
        });
        Ok(())
    }
}

fn apply(txn: &mut dyn WriteTxn, ops: &[Op]) -> Result<(), StoreError> {
    for op in ops {
        match op {
            Op::Put { table, key, value } => txn.put(*table, key, value)?,
            Op::Delete { table, key } => txn.delete(*table, key)?,
        }
    }
    Ok(())
}

impl WalStore {
    /// Puts the log in `log` in front of `db`, replaying what it holds past the
    /// database's checkpoint. A record damaged in the middle of the log is an error; a
    /// damaged tail ends the replay, and is logged.
    pub fn open(
        db: RedbStore,
        log: Box<dyn StorageBackend>,
        settings: WalSettings,
    ) -> Result<Self, StoreError> {
        let mut store = WalStore {
            db,
            log: Log::new(log),
            settings,
            checkpointed: std::sync::Mutex::new(Instant::now()),
            replayed: Replayed::default(),
        };
        store.replayed = store.recover()?;
        Ok(store)
    }

    /// What the replay at open found.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    fn checkpoint_seq(&self) -> Result<u64, StoreError> {
        match self.db.get(Table::Meta, CHECKPOINT_KEY)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_le_bytes(v.as_slice().try_into().map_err(
                |_| StoreError::Corrupt("the write-ahead log checkpoint row is malformed".into()),
            )?)),
        }
    }

    /// Applies the records past the checkpoint in one durable commit that also moves the
    /// checkpoint past them, and starts the log over. Replaying twice (a crash during
    /// this) writes the same rows again: each record holds rows' final values.
    fn recover(&self) -> Result<Replayed, StoreError> {
        let mut tail = self.log.lock();
        let checkpoint = self.checkpoint_seq()?;
        let scan = self.log.scan(checkpoint)?;
        let last = scan.records.last().map_or(checkpoint, |(seq, _)| *seq);
        self.db.write(true, &mut |txn| {
            for (_, ops) in &scan.records {
                apply(txn, ops)?;
            }
            txn.put(Table::Meta, CHECKPOINT_KEY, &last.to_le_bytes())
        })?;
        self.log.restart(&mut tail, last);
        let replayed = Replayed {
            records: scan.records.len(),
            tail_bytes: scan.tail_bytes,
        };
        if replayed.records > 0 || scan.tail_bytes > 0 {
            tracing::info!(
                records = replayed.records,
                checkpoint,
                last,
                ignored_tail_bytes = replayed.tail_bytes,
                "write-ahead log replayed; bytes past the last whole record were a torn write or an earlier run's"
            );
        }
        Ok(replayed)
    }

    fn checkpoint_due(&self, tail: &Tail) -> bool {
        let since = *self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        Log::run_bytes(tail) >= self.settings.max_bytes || since.elapsed() >= self.settings.max_age
    }
}

impl Store for WalStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.db.scan(table, start, end, limit)
    }

    fn scan_bounded(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<super::ScanPage, StoreError> {
        // redb's own cut: the default would read `limit` whole rows first.
        self.db.scan_bounded(table, start, end, limit, max_bytes)
    }

    fn write(&self, durable: bool, body: TxnBody<'_>) -> Result<(), StoreError> {
        let mut tail = self.log.lock();
        let checkpoint = self.checkpoint_due(&tail);
        let covered = tail.last_seq;
        let mut ops = Vec::new();
        // Commit first, then log: a record never describes a transaction that did not
        // commit. A failed append leaves a commit visible but not durable, answered
        // with the error, as a failed fsync does.
        self.db.write(checkpoint, &mut |txn| {
            ops.clear();
            body(&mut Recording {
                inner: &mut *txn,
                ops: &mut ops,
            })?;
            if checkpoint {
                // This commit is durable, and with it every record up to `covered`.
                txn.put(Table::Meta, CHECKPOINT_KEY, &covered.to_le_bytes())?;
            }
            Ok(())
        })?;
        if checkpoint {
            self.log.restart(&mut tail, covered);
            *self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(());
        }
        if !ops.is_empty() {
            self.log.append(&mut tail, &ops)?;
        }
        drop(tail);
        if durable {
            self.log.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.log.sync()
    }

    /// Reopens redb, which may drop commits that were not durable in it, and replays the
    /// log over it: what the log holds was acknowledged or may be.
    fn reopen(&self) -> Result<(), StoreError> {
        self.db.reopen()?;
        self.recover().map(|_| ())
    }
}

#[cfg(test)]
mod tests;
