//! The log file: records appended at the end of the current run, synced on demand, and
//! written again from offset 0 after each checkpoint, so that a file that has been
//! through one run is overwritten in place (no size change for fdatasync to journal).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use redb::StorageBackend;

use super::record::{self, Op, Scan};
use crate::store::StoreError;

/// A log over any file the storage seam gives (a real file, the simulator's disk, a test's
/// faulty disk).
#[derive(Debug)]
pub struct Log {
    file: Box<dyn StorageBackend>,
    state: Mutex<Tail>,
    /// The highest seq known to be on stable storage.
    synced: AtomicU64,
}

/// Where the current run of the log ends. Held locked by each append and checkpoint, so
/// that the two never interleave.
#[derive(Debug)]
pub struct Tail {
    /// The offset of the next record.
    pub end: u64,
    /// The seq of the last record appended (or of the checkpoint, when none was since).
    pub last_seq: u64,
}

/// A log bigger than this is not read into memory at start, but refused: no run of ours
/// writes one (`--wal-max-bytes` plus one record).
const MAX_READ_BYTES: u64 = 4 << 30;

impl Log {
    pub fn new(file: Box<dyn StorageBackend>) -> Self {
        Log {
            file,
            state: Mutex::new(Tail {
                end: 0,
                last_seq: 0,
            }),
            synced: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Tail> {
        // A panic while appending leaves at worst a torn record past `end`, which the next
        // append overwrites: the state is still the one to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every record past `checkpoint` (see [`record::scan`]).
    pub fn read(&self) -> Result<Vec<u8>, StoreError> {
        let len = self.file.len()?;
        if len > MAX_READ_BYTES {
            return Err(StoreError::Corrupt(format!(
                "write-ahead log of {len} bytes is over the {MAX_READ_BYTES} a run can write"
            )));
        }
        let mut buf =
            vec![0; usize::try_from(len).map_err(|_| StoreError::Engine("log too long".into()))?];
        self.file.read(0, &mut buf)?;
        Ok(buf)
    }

    pub fn scan(&self, checkpoint: u64) -> Result<Scan, StoreError> {
        record::scan(&self.read()?, checkpoint)
    }

    /// Starts a new run after a checkpoint at `seq`: the next record goes to offset 0.
    pub fn restart(&self, tail: &mut Tail, seq: u64) {
        tail.end = 0;
        tail.last_seq = seq;
        self.synced.fetch_max(seq, Ordering::SeqCst);
    }

    /// Appends `ops` as the next record; not synced. On an error nothing moved: the next
    /// append overwrites whatever part of this one reached the file.
    pub fn append(&self, tail: &mut Tail, ops: &[Op]) -> Result<(), StoreError> {
        let seq = tail
            .last_seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Engine("write-ahead log seq exhausted".into()))?;
        let bytes = record::encode(seq, self.synced.load(Ordering::SeqCst), ops)?;
        self.file.write(tail.end, &bytes)?;
        tail.end = tail
            .end
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| StoreError::Engine("write-ahead log offset overflow".into()))?;
        tail.last_seq = seq;
        Ok(())
    }

    /// Makes every record appended before this call durable. Runs without the tail lock,
    /// so the next batch is appended while this one syncs. A failed fdatasync is final
    /// (see `StoreError::SyncFailed`).
    pub fn sync(&self) -> Result<(), StoreError> {
        let target = self.lock().last_seq;
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        self.file.sync_data().map_err(StoreError::SyncFailed)?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Bytes in the current run.
    pub fn run_bytes(tail: &Tail) -> u64 {
        tail.end
    }
}
