//! The sync in flight when the store has a write-ahead log (`store::wal`): a batch's
//! commit and log append are done, its fdatasync runs on the blocking pool, and the writer
//! goes on to apply the next batch meanwhile. Its jobs are answered when the sync ends.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::refusal::Refusal;
use super::Job;
use crate::kv::KvError;
use crate::stats::StorageStats;
use crate::store::{Store, StoreError};

/// One batch waiting for its sync.
pub(super) struct InFlight {
    sync: JoinHandle<Result<(), StoreError>>,
    jobs: Vec<Job>,
}

impl InFlight {
    /// Starts syncing everything committed so far, on behalf of `jobs`.
    pub(super) fn start(store: &Arc<dyn Store>, jobs: Vec<Job>) -> Self {
        let store = store.clone();
        InFlight {
            sync: tokio::task::spawn_blocking(move || store.sync()),
            jobs,
        }
    }
}

/// Waits for the sync in flight, if any; never resolves without one (a `select!` branch).
pub(super) async fn synced(
    inflight: &mut Option<InFlight>,
) -> Result<Result<(), StoreError>, tokio::task::JoinError> {
    match inflight {
        Some(f) => (&mut f.sync).await,
        None => std::future::pending().await,
    }
}

/// Answers the jobs of the sync that ended with `result`: their outcomes if it
/// succeeded; otherwise the failed sync's error, which is final (see `Refusal::note`).
pub(super) fn answer(
    inflight: Option<InFlight>,
    result: Result<Result<(), StoreError>, tokio::task::JoinError>,
    refusal: &mut Refusal,
    stats: &StorageStats,
) {
    let Some(f) = inflight else { return };
    let result = match result {
        Ok(r) => r,
        // The closure never panics by design; if it does, surface it here.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let synced = match result {
        Ok(()) => {
            stats.fsyncs.inc();
            Ok(())
        }
        Err(e) => {
            let e = Arc::new(e);
            refusal.note("log sync", &e, true);
            Err(refusal.error().cloned().unwrap_or(KvError::SyncFailed {
                when: "log sync",
                source: e,
            }))
        }
    };
    for job in f.jobs {
        job.answer(&synced);
    }
}

/// Waits for the sync in flight and answers its jobs.
pub(super) async fn drain(
    inflight: &mut Option<InFlight>,
    refusal: &mut Refusal,
    stats: &StorageStats,
) {
    if inflight.is_some() {
        let result = synced(inflight).await;
        answer(inflight.take(), result, refusal, stats);
    }
}
