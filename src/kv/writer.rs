//! Group commit: the one task that writes. Mutations queue on a bounded channel; the
//! writer drains whatever is waiting into one transaction with one fsync.
//!
//! Doing every read-modify-write of a sibling set here, inside the transaction, is what
//! makes concurrent writes to one key safe: two blind writes can never both read the old
//! set and have the second silently overwrite the first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{record, KvError};
use crate::config::{BlockingMode, FsyncMode};
use crate::key::Key;
use crate::store::{Store, StoreError, Table, WriteTxn};
use crate::version::{Actor, Payload, SiblingSet, VersionVector};

/// A change to one key, decided against the key's current set inside the transaction.
#[derive(Debug)]
pub enum Mutation {
    /// A client write: a new version over `seen` (None = blind).
    Update {
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        written_at_ms: u64,
    },
    /// A tombstone, written only if the key holds a live value.
    Delete {
        key: Key,
        seen: Option<VersionVector>,
        written_at_ms: u64,
    },
    /// A sibling set from another replica, merged with DVV sync. Never refused for the
    /// sibling cap: refusing would lose data another node already acknowledged.
    Merge { key: Key, set: SiblingSet },
}

/// What a mutation did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The key's set after the mutation.
    pub set: SiblingSet,
    /// Whether the set held a live value before.
    pub had_live: bool,
    /// Whether anything was written.
    pub changed: bool,
}

struct Job {
    mutation: Mutation,
    reply: oneshot::Sender<Result<Applied, KvError>>,
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

pub struct WriterSettings {
    pub actor: Actor,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub blocking: BlockingMode,
    pub queue: usize,
    pub max_batch: usize,
    pub max_siblings: usize,
}

impl WriterHandle {
    pub async fn submit(&self, mutation: Mutation) -> Result<Applied, KvError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { mutation, reply })
            .await
            .map_err(|_| KvError::ShuttingDown)?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }
}

/// Starts the writer. It runs until `stop` is cancelled, then commits what is queued,
/// syncs, and ends.
pub fn spawn(
    store: Arc<dyn Store>,
    settings: WriterSettings,
    stop: CancellationToken,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let task = tokio::spawn(run(store, settings, rx, stop));
    (WriterHandle { tx }, task)
}

async fn run(
    store: Arc<dyn Store>,
    settings: WriterSettings,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let settings = Arc::new(settings);
    let mut sync_timer = tokio::time::interval(settings.fsync_interval);
    sync_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsynced = false;
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = stop.cancelled() => {
                // Refuse new jobs, but finish the ones already queued.
                rx.close();
                rx.recv().await
            }
            _ = sync_timer.tick(), if settings.fsync == FsyncMode::Periodic && unsynced => {
                if let Err(e) = blocking(settings.blocking, store.clone(), |s| s.sync()).await {
                    tracing::error!(error = %e, "periodic fsync failed");
                }
                unsynced = false;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < settings.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let durable = settings.fsync == FsyncMode::Always;
        let s = settings.clone();
        let outcomes = blocking(settings.blocking, store.clone(), move |store| {
            commit(store, &s, batch)
        })
        .await;
        unsynced |= !durable;
        for (job, result) in outcomes {
            // The requester may have timed out and gone; the write stands regardless.
            let _ = job.reply.send(result);
        }
    }
    if let Err(e) = blocking(settings.blocking, store, |s| s.sync()).await {
        tracing::error!(error = %e, "final fsync failed");
    }
    tracing::debug!("writer stopped");
}

/// One transaction for the whole batch. A mutation that is refused (the sibling cap) is
/// answered alone; a storage error fails the whole batch, and nothing in it is applied.
fn commit(
    store: &dyn Store,
    settings: &WriterSettings,
    batch: Vec<Job>,
) -> Vec<(Job, Result<Applied, KvError>)> {
    let mut outcomes: Vec<Result<Applied, KvError>> = Vec::with_capacity(batch.len());
    let durable = settings.fsync == FsyncMode::Always;
    let result = store.write(durable, &mut |txn| {
        outcomes.clear();
        for job in &batch {
            outcomes.push(apply(txn, settings, &job.mutation)?);
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::error!(error = %e, mutations = batch.len(), "commit failed");
        outcomes = batch
            .iter()
            .map(|_| Err(KvError::Store(e.to_string())))
            .collect();
    }
    batch.into_iter().zip(outcomes).collect()
}

fn apply(
    txn: &mut dyn WriteTxn,
    settings: &WriterSettings,
    mutation: &Mutation,
) -> Result<Result<Applied, KvError>, StoreError> {
    let key = match mutation {
        Mutation::Update { key, .. }
        | Mutation::Delete { key, .. }
        | Mutation::Merge { key, .. } => key,
    };
    let current = match txn.get(Table::Data, key.as_bytes())? {
        Some(raw) => record::decode(&raw)?,
        None => SiblingSet::new(),
    };
    let had_live = current.has_live();
    let next = match mutation {
        Mutation::Update {
            seen,
            payload,
            written_at_ms,
            ..
        } => {
            let (next, _) = current.update(
                seen.as_ref(),
                settings.actor,
                payload.clone(),
                *written_at_ms,
            );
            if next.len() > settings.max_siblings {
                return Ok(Err(KvError::SiblingLimit {
                    limit: settings.max_siblings,
                }));
            }
            next
        }
        Mutation::Delete {
            seen,
            written_at_ms,
            ..
        } => {
            // Nothing live to delete: answer 404 and write nothing, so that a token the
            // client holds still covers everything stored.
            if !had_live {
                return Ok(Ok(Applied {
                    set: current,
                    had_live,
                    changed: false,
                }));
            }
            let (next, _) = current.update(
                seen.as_ref(),
                settings.actor,
                Payload::Tombstone,
                *written_at_ms,
            );
            if next.len() > settings.max_siblings {
                return Ok(Err(KvError::SiblingLimit {
                    limit: settings.max_siblings,
                }));
            }
            next
        }
        Mutation::Merge { set, .. } => current.sync(set),
    };
    let changed = next != current;
    if changed {
        txn.put(Table::Data, key.as_bytes(), &record::encode(&next))?;
    }
    Ok(Ok(Applied {
        set: next,
        had_live,
        changed,
    }))
}

/// Runs blocking storage work as the mode says (see [`BlockingMode`]).
async fn blocking<T: Send + 'static>(
    mode: BlockingMode,
    store: Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> T + Send + 'static,
) -> T {
    match mode {
        BlockingMode::Inline => f(store.as_ref()),
        BlockingMode::Threaded => {
            match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
                Ok(v) => v,
                // The closure never panics by design; if it does, surface it here.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    }
}
