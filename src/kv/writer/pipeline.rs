//! The sync in flight when the store has a write-ahead log (`store::wal`): a batch's
//! commit and log append are done, its fdatasync runs on the blocking pool, and the writer
//! goes on to apply the batches that arrive meanwhile. Those wait together, and the next
//! sync, started as soon as this one ends, covers them all: one sync per sync time,
//! however small the batches were.

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
    /// When the sync started, for `StorageStats::sync_latency`.
    started: std::time::Instant,
}

impl InFlight {
    /// Starts syncing everything committed so far, on behalf of `jobs`.
    pub(super) fn start(store: &Arc<dyn Store>, jobs: Vec<Job>) -> Self {
        let store = store.clone();
        InFlight {
            sync: tokio::task::spawn_blocking(move || store.sync()),
            jobs,
            started: std::time::Instant::now(),
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
            stats.synced(f.started);
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

/// Once no sync is in flight: starts one for the jobs waiting, or, after a failed sync,
/// answers them with its error (nothing after a failed sync is acknowledged).
pub(super) fn next(
    store: &Arc<dyn Store>,
    inflight: &mut Option<InFlight>,
    waiting: &mut Vec<Job>,
    refusal: &Refusal,
) {
    if inflight.is_some() || waiting.is_empty() {
        return;
    }
    let jobs = std::mem::take(waiting);
    match refusal.error() {
        Some(e) => {
            let e = Err(e.clone());
            jobs.into_iter().for_each(|j| j.answer(&e));
        }
        None => *inflight = Some(InFlight::start(store, jobs)),
    }
}

/// Waits for the sync in flight, answers its jobs and starts the next one, until none is
/// in flight and none waits.
pub(super) async fn drain(
    store: &Arc<dyn Store>,
    inflight: &mut Option<InFlight>,
    waiting: &mut Vec<Job>,
    refusal: &mut Refusal,
    stats: &StorageStats,
) {
    next(store, inflight, waiting, refusal);
    while inflight.is_some() {
        let result = synced(inflight).await;
        answer(inflight.take(), result, refusal, stats);
        next(store, inflight, waiting, refusal);
    }
}
