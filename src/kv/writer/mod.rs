//! Group commit: the one task that writes. Mutations queue on a bounded channel; the
//! writer drains whatever is waiting into one transaction with one fsync.
//!
//! Doing every read-modify-write of a sibling set here, inside the transaction, is what
//! makes concurrent writes to one key safe: two blind writes can never both read the old
//! set and have the second silently overwrite the first.

mod apply;
mod pipeline;
mod refusal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use apply::commit;
use pipeline::InFlight;
use refusal::{probe_space, publish, Refusal, SPACE_PROBE_INTERVAL};

use super::hints::HintLedger;
use super::summary::SharedTree;
use super::writable::WriteState;
use super::KvError;
use crate::config::{BlockingMode, FsyncMode};
use crate::key::Key;
use crate::stats::StorageStats;
use crate::store::Store;
use crate::version::{Actor, Dot, Payload, SiblingSet, VersionVector};

/// A change to one key's data, decided against the key's current state inside the
/// transaction, and answered with what it did to the key ([`Applied`]).
#[derive(Debug)]
pub enum Mutation {
    /// A client write: a new version over `seen` (None = blind). A delete is a write of
    /// `Payload::Tombstone`.
    Update {
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        written_at_ms: u64,
    },
    /// A sibling set from another replica, merged with DVV sync. Never refused for the
    /// sibling cap: refusing would lose data another node already acknowledged.
    Merge { key: Key, set: SiblingSet },
}

/// Upkeep of the hints and the data rows, answered with whether it did what it asks
/// (each variant says what `false` means).
#[derive(Debug)]
pub enum Upkeep {
    /// Keep `set` for `target`, merged with any hint already held for that key. `false`:
    /// refused, the target's hints are at `--max-hint-bytes`.
    Hint {
        target: u64,
        key: Key,
        set: SiblingSet,
        now_ms: u64,
    },
    /// Remove the key entirely if its stored set still has this digest (see
    /// `Request::DropIfDigest`). `false`: it did not (or the key is gone).
    DropIfDigest { key: Key, digest: u64 },
    /// Drop a delivered hint, unless it changed since it was read (`expected` is the stored
    /// record that was delivered): a hint merged meanwhile still has to go out. `false`:
    /// it changed, and stays.
    DeleteHint {
        target: u64,
        key: Key,
        expected: Vec<u8>,
    },
    /// Delete the key's data row if it is still corrupt (see `LocalKv::read`), taking it
    /// out of the index and the tree in the same transaction so that anti-entropy sees
    /// it missing here. `false`: it is not corrupt (any more), or gone.
    DropCorrupt { key: Key },
}

/// What a data mutation did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The key's set after the mutation.
    pub set: SiblingSet,
    /// Whether the set held a live value before.
    pub had_live: bool,
    /// Whether anything was written.
    pub changed: bool,
    /// The new version's dot, for a client write.
    pub dot: Option<Dot>,
}

type Answer<T> = oneshot::Sender<Result<T, KvError>>;

/// One queued change with where its answer goes. Each kind carries its own outcome type,
/// so that every submitter gets exactly what its change produces.
enum Job {
    Data {
        mutation: Mutation,
        /// Told the outcome as soon as the transaction has committed, before its fsync
        /// (see [`WriterHandle::submit_staged`]).
        staged: Option<Answer<Applied>>,
        /// Told the outcome once it is as durable as `--fsync` makes it.
        reply: Answer<Applied>,
        /// Set by the commit (see [`commit`]).
        outcome: Option<Result<Applied, KvError>>,
    },
    Upkeep {
        upkeep: Upkeep,
        reply: Answer<bool>,
        outcome: Option<Result<bool, KvError>>,
    },
}

impl Job {
    fn data(mutation: Mutation, staged: Option<Answer<Applied>>, reply: Answer<Applied>) -> Self {
        Job::Data {
            mutation,
            staged,
            reply,
            outcome: None,
        }
    }

    fn upkeep(upkeep: Upkeep, reply: Answer<bool>) -> Self {
        Job::Upkeep {
            upkeep,
            reply,
            outcome: None,
        }
    }

    fn is_staged(&self) -> bool {
        matches!(
            self,
            Job::Data {
                staged: Some(_),
                ..
            }
        )
    }

    /// Answers the job with `e`, without applying it.
    fn refuse(self, e: &KvError) {
        match self {
            Job::Data { staged, reply, .. } => {
                if let Some(staged) = staged {
                    let _ = staged.send(Err(e.clone()));
                }
                let _ = reply.send(Err(e.clone()));
            }
            Job::Upkeep { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }

    /// Every job of a batch whose transaction failed gets its error.
    fn fail(&mut self, e: &KvError) {
        match self {
            Job::Data { outcome, .. } => *outcome = Some(Err(e.clone())),
            Job::Upkeep { outcome, .. } => *outcome = Some(Err(e.clone())),
        }
    }

    /// Once committed: tells a staged job its outcome, and notes a merge over the cap.
    fn committed(&mut self, settings: &WriterSettings, stats: &StorageStats) {
        if let Job::Data {
            mutation,
            staged,
            outcome: Some(result),
            ..
        } = self
        {
            note_merge_over_cap(settings, stats, mutation, result);
            if let Some(staged) = staged.take() {
                let _ = staged.send(result.clone());
            }
        }
    }

    /// The final answer: the outcome, or `synced`'s error if the commit's sync failed. A
    /// job the commit never reached (the store ran no transaction body) is dropped
    /// unanswered, which its submitter sees as the writer gone.
    fn answer(self, synced: &Result<(), KvError>) {
        fn send<T>(
            reply: Answer<T>,
            outcome: Option<Result<T, KvError>>,
            synced: &Result<(), KvError>,
        ) {
            let Some(result) = outcome else { return };
            // The requester may have timed out and gone; the write stands regardless.
            let _ = reply.send(match synced {
                Ok(()) => result,
                Err(e) => Err(e.clone()),
            });
        }
        match self {
            Job::Data { reply, outcome, .. } => send(reply, outcome, synced),
            Job::Upkeep { reply, outcome, .. } => send(reply, outcome, synced),
        }
    }
}

/// The two answers of [`WriterHandle::submit_staged`].
pub struct Staged {
    /// The outcome, once committed: visible to this node, not yet synced.
    pub committed: oneshot::Receiver<Result<Applied, KvError>>,
    /// The same outcome once synced, or the error that kept it from being synced.
    pub durable: oneshot::Receiver<Result<Applied, KvError>>,
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
    stats: Arc<StorageStats>,
    state: watch::Receiver<WriteState>,
}

pub struct WriterSettings {
    pub actor: Actor,
    /// The highest dot counter already issued (`Identity::dot_floor`).
    pub dot_floor: u64,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub blocking: BlockingMode,
    pub queue: usize,
    pub max_batch: usize,
    pub max_siblings: usize,
    pub max_hint_bytes: u64,
    pub hints: Arc<HintLedger>,
    pub tree: SharedTree,
    /// Whether a durable batch's sync may run while the next batch is applied: set when
    /// the store syncs a write-ahead log (`store::wal`), whose `sync` needs no write
    /// transaction, with `--fsync always` and storage work on the blocking pool.
    pub pipeline: bool,
}

impl WriterSettings {
    /// Settings for unit tests: actor 1, durable commits, I/O inline, no hint budget.
    #[cfg(test)]
    pub(crate) fn for_test(tree: SharedTree, hints: Arc<HintLedger>) -> Self {
        WriterSettings {
            actor: Actor { node: 1, epoch: 0 },
            dot_floor: 0,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            blocking: BlockingMode::Inline,
            queue: 64,
            max_batch: 16,
            max_siblings: 64,
            max_hint_bytes: 0,
            hints,
            tree,
            pipeline: false,
        }
    }

    /// Whether a commit is durable before it is acknowledged.
    fn durable(&self) -> bool {
        self.fsync == FsyncMode::Always
    }
}

impl WriterHandle {
    /// Applies a data change, and answers what it did to the key once durable.
    pub async fn submit(&self, mutation: Mutation) -> Result<Applied, KvError> {
        let (reply, rx) = oneshot::channel();
        self.queue(Job::data(mutation, None, reply)).await?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }

    /// Applies an upkeep change, and answers whether it did what it asks (see [`Upkeep`]).
    pub async fn submit_upkeep(&self, upkeep: Upkeep) -> Result<bool, KvError> {
        let (reply, rx) = oneshot::channel();
        self.queue(Job::upkeep(upkeep, reply)).await?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }

    async fn queue(&self, job: Job) -> Result<(), KvError> {
        self.tx.send(job).await.map_err(|_| KvError::ShuttingDown)
    }

    /// Queues a mutation and answers twice: once its transaction has committed, and once
    /// that commit is durable. A coordinator sends the committed set to the other
    /// replicas while its own fsync runs, instead of after it.
    ///
    /// Releasing a set before its fsync is safe for the dots it carries: the commit is
    /// already visible to every later transaction here, so no later write issues the same
    /// dot, even if the fsync fails; and a crash before the fsync makes the node restart
    /// with a new actor epoch (see `identity`), so the lost commit's dots are not reissued
    /// either.
    pub async fn submit_staged(&self, mutation: Mutation) -> Result<Staged, KvError> {
        let (staged, committed) = oneshot::channel();
        let (reply, durable) = oneshot::channel();
        self.queue(Job::data(mutation, Some(staged), reply)).await?;
        Ok(Staged { committed, durable })
    }

    /// Queues a mutation without waiting for it; dropped when the queue is full. For
    /// repairs that the next read would ask for again anyway.
    pub fn submit_detached(&self, upkeep: Upkeep) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Job::upkeep(upkeep, reply));
    }

    /// Whether the writer takes writes now.
    pub fn write_state(&self) -> WriteState {
        *self.state.borrow()
    }

    pub fn watch_write_state(&self) -> watch::Receiver<WriteState> {
        self.state.clone()
    }

    /// Commits, fsyncs and mutations so far.
    pub fn stats(&self) -> &Arc<StorageStats> {
        &self.stats
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
    let stats = Arc::new(StorageStats::default());
    let (state_tx, state) = watch::channel(WriteState::Writable);
    let task = tokio::spawn(run(store, settings, stats.clone(), state_tx, rx, stop));
    (WriterHandle { tx, stats, state }, task)
}

async fn run(
    store: Arc<dyn Store>,
    settings: WriterSettings,
    stats: Arc<StorageStats>,
    state: watch::Sender<WriteState>,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let settings = Arc::new(settings);
    // Raised by every committed update; a batch that failed to commit may have raised it
    // too, which only skips counters (see `SiblingSet::update_above`). Kept in memory
    // across a reopen of the store, which may lose commits that were not durable: the
    // dots those commits issued may have gone out to other replicas, and counting on
    // from here never issues them again.
    let mut dot_floor = settings.dot_floor;
    let mut refusal = Refusal::default();
    let mut sync_timer = tokio::time::interval(settings.fsync_interval);
    sync_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_timer = tokio::time::interval(SPACE_PROBE_INTERVAL);
    probe_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsynced = false;
    let pipelined_sync =
        settings.pipeline && settings.durable() && settings.blocking == BlockingMode::Threaded;
    let mut inflight: Option<InFlight> = None;
    // Committed jobs for the sync after the one in flight.
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        let was = refusal.state();
        let first = tokio::select! {
            job = rx.recv() => job,
            result = pipeline::synced(&mut inflight) => {
                pipeline::answer(inflight.take(), result, &mut refusal, &stats);
                pipeline::next(&store, &mut inflight, &mut waiting, &refusal);
                publish(&state, was, &refusal, &store, &settings, &mut probe_timer).await;
                continue;
            }
            _ = stop.cancelled() => {
                // Refuse new jobs, but finish the ones already queued.
                rx.close();
                rx.recv().await
            }
            _ = sync_timer.tick(), if settings.fsync == FsyncMode::Periodic && unsynced
                && refusal.error().is_none() => {
                let started = Instant::now();
                match blocking(settings.blocking, store.clone(), |s| s.sync()).await {
                    Ok(()) => stats.synced(started),
                    Err(e) => refusal.note("periodic", &Arc::new(e), true),
                }
                unsynced = false;
                publish(&state, was, &refusal, &store, &settings, &mut probe_timer).await;
                continue;
            }
            _ = probe_timer.tick(), if refusal.failed.is_none() && refusal.no_space.is_some() => {
                match blocking(settings.blocking, store.clone(), probe_space).await {
                    Ok((tree, hints)) => {
                        *settings.tree.write().unwrap_or_else(|p| p.into_inner()) = tree;
                        settings.hints.replace_with(hints);
                        refusal.no_space = None;
                        // What was not durable before the reopen is gone or synced now.
                        unsynced = false;
                        tracing::info!("space is back: a probe commit succeeded; taking writes again");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "space probe failed; still refusing writes");
                        refusal.note("space probe", &Arc::new(e), false);
                    }
                }
                publish(&state, was, &refusal, &store, &settings, &mut probe_timer).await;
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
        if let Some(e) = refusal.error() {
            for job in batch {
                job.refuse(e);
            }
            continue;
        }
        let durable = settings.durable();
        if pipelined_sync {
            let syncs = Syncs {
                inflight: &mut inflight,
                waiting: &mut waiting,
            };
            dot_floor = pipelined(
                &store,
                &settings,
                &stats,
                dot_floor,
                batch,
                syncs,
                &mut refusal,
            )
            .await;
            publish(&state, was, &refusal, &store, &settings, &mut probe_timer).await;
            continue;
        }
        // With a staged job in the batch, commit first and sync after, so that its set can
        // go out between the two (see `submit_staged`); otherwise one durable commit.
        let split = durable && batch.iter().any(Job::is_staged);
        let s = settings.clone();
        let mutations = batch.len() as u64;
        let started = Instant::now();
        let (mut jobs, result, floor) = blocking(settings.blocking, store.clone(), {
            let stats = stats.clone();
            move |store| commit(store, &s, &stats, dot_floor, batch, durable && !split)
        })
        .await;
        dot_floor = floor;
        let committed = result.is_ok();
        if let Err(e) = &result {
            refusal.note("commit", e, false);
        }
        if committed {
            stats.committed(mutations, started);
            if durable && !split {
                stats.fsyncs.inc();
            }
        }
        unsynced |= !durable;
        for job in &mut jobs {
            job.committed(&settings, &stats);
        }
        let synced = if split && committed {
            let started = Instant::now();
            match blocking(settings.blocking, store.clone(), |s| s.sync()).await {
                Ok(()) => {
                    stats.synced(started);
                    Ok(())
                }
                Err(e) => {
                    let e = Arc::new(e);
                    refusal.note("after a staged commit", &e, true);
                    // `note` always records a failed sync; the fallback only keeps this
                    // total without an unwrap.
                    Err(refusal.error().cloned().unwrap_or(KvError::SyncFailed {
                        when: "after a staged commit",
                        source: e,
                    }))
                }
            }
        } else {
            Ok(())
        };
        for job in jobs {
            job.answer(&synced);
        }
        publish(&state, was, &refusal, &store, &settings, &mut probe_timer).await;
    }
    pipeline::drain(&store, &mut inflight, &mut waiting, &mut refusal, &stats).await;
    if refusal.error().is_some() {
        // Nothing to sync: the storage refuses it.
        return;
    }
    let started = Instant::now();
    match blocking(settings.blocking, store, |s| s.sync()).await {
        Ok(()) => stats.synced(started),
        Err(e) => tracing::error!(error = %e, "final fsync failed"),
    }
    tracing::debug!("writer stopped");
}

/// The sync in flight and the jobs waiting for the next one.
struct Syncs<'a> {
    inflight: &'a mut Option<InFlight>,
    waiting: &'a mut Vec<Job>,
}

/// One batch with a write-ahead log: commit and append it (not durable yet); then start
/// its sync, or, while one is in flight, leave its jobs for the next. Past `--write-queue`
/// jobs waiting, wait for the syncs first, so that a stalled disk holds up the writer
/// instead of piling up answers. Returns the dot floor after the commit.
async fn pipelined(
    store: &Arc<dyn Store>,
    settings: &Arc<WriterSettings>,
    stats: &Arc<StorageStats>,
    dot_floor: u64,
    batch: Vec<Job>,
    syncs: Syncs<'_>,
    refusal: &mut Refusal,
) -> u64 {
    let Syncs { inflight, waiting } = syncs;
    let s = settings.clone();
    let mutations = batch.len() as u64;
    let started = Instant::now();
    let (mut jobs, result, floor) = blocking(settings.blocking, store.clone(), {
        let stats = stats.clone();
        move |store| commit(store, &s, &stats, dot_floor, batch, false)
    })
    .await;
    if let Err(e) = &result {
        refusal.note("commit", e, false);
    } else {
        stats.committed(mutations, started);
    }
    for job in &mut jobs {
        job.committed(settings, stats);
    }
    if result.is_err() {
        // A failed commit set every job's outcome to its error already.
        jobs.into_iter().for_each(|j| j.answer(&Ok(())));
        return floor;
    }
    waiting.extend(jobs);
    pipeline::next(store, inflight, waiting, refusal);
    if waiting.len() >= settings.queue {
        pipeline::drain(store, inflight, waiting, refusal, stats).await;
    }
    floor
}

/// A `Merge` is stored even when it leaves a key over the sibling cap: it was
/// acknowledged elsewhere, and refusing it would lose that write. It is not silent either:
/// logged with the key, and counted (`/metrics`, `/debug/replication`).
fn note_merge_over_cap(
    settings: &WriterSettings,
    stats: &StorageStats,
    mutation: &Mutation,
    result: &Result<Applied, KvError>,
) {
    if let (Mutation::Merge { key, .. }, Ok(a)) = (mutation, result) {
        if a.changed && a.set.len() > settings.max_siblings {
            stats.merges_over_sibling_cap.inc();
            tracing::warn!(
                key = %key,
                siblings = a.set.len(),
                limit = settings.max_siblings,
                "a merge from a peer left the key over the sibling cap; stored anyway, as it was acknowledged elsewhere"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::record;
    use crate::kv::summary::digest;
    use crate::store::MemoryStore;
    use crate::store::{StoreError, Table};
    use bytes::Bytes;
    use refusal::SPACE_PROBE_KEY;

    fn settings(dot_floor: u64) -> WriterSettings {
        WriterSettings {
            dot_floor,
            queue: 16,
            max_batch: 8,
            ..WriterSettings::for_test(Arc::default(), Arc::new(HintLedger::default()))
        }
    }

    fn put(key: &Key, value: &str) -> Mutation {
        Mutation::Update {
            key: key.clone(),
            seen: None,
            payload: Payload::Value {
                data: Bytes::from(value.to_owned()),
                content_type: "t".into(),
            },
            written_at_ms: 1,
        }
    }

    async fn applied(w: &WriterHandle, m: Mutation) -> Applied {
        w.submit(m).await.unwrap()
    }

    /// The case the node-wide floor exists for: this node loses a key's history (here it
    /// drops the key, as after moving it to new owners; collecting its tombstones is the
    /// same) while a stale copy survives on a replica that was away, and the node then
    /// writes the key again, also after a restart.
    #[tokio::test]
    async fn a_key_written_again_after_its_history_is_gone_gets_a_fresh_dot() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let key = Key::new("k").unwrap();
        let (w, task) = spawn(store.clone(), settings(0), CancellationToken::new());
        // The replica that was away keeps the first version; this node goes on to a second.
        let stale = applied(&w, put(&key, "v1")).await;
        let second = applied(&w, put(&key, "v2")).await;
        let dropped = w
            .submit_upkeep(Upkeep::DropIfDigest {
                key: key.clone(),
                digest: digest(&second.set),
            })
            .await
            .unwrap();
        assert!(dropped);
        let new = applied(&w, put(&key, "new")).await;
        let new_dot = new.dot.unwrap();
        // Counting from the key's empty history would have issued v1's dot again, for
        // "new": the stale copy and the new write would pass for one version, and
        // whichever side won, an acknowledged write would be gone.
        assert!(new_dot.counter > second.dot.unwrap().counter);
        assert_ne!(Some(new_dot), stale.dot);
        // The stale copy meets the new write: the new write stands, v1 does not come back.
        for met in [stale.set.sync(&new.set), new.set.sync(&stale.set)] {
            let values: Vec<_> = met.live().map(|v| &v.payload).collect();
            assert_eq!(values, [&new.set.live().next().unwrap().payload], "{met:?}");
        }
        drop(w);
        task.await.unwrap();

        // The floor was stored with the write: a restarted writer counts on from it.
        let floor = crate::identity::Identity::load(store.as_ref(), || 1)
            .unwrap()
            .dot_floor;
        assert_eq!(floor, new_dot.counter);
        let (w, task) = spawn(store.clone(), settings(floor), CancellationToken::new());
        let other = applied(&w, put(&Key::new("fresh").unwrap(), "x")).await;
        assert!(other.dot.unwrap().counter > floor);
        drop(w);
        task.await.unwrap();
    }

    fn forged(actor: Actor, counter: u64) -> VersionVector {
        [(actor, counter)].into_iter().collect()
    }

    /// A token claiming this node's own actor at u64::MAX − 1 neither raises the node-wide
    /// floor nor enters the key's context: the next write, to any key, counts on from the
    /// dots this node really issued.
    #[tokio::test]
    async fn a_forged_token_moves_neither_the_floor_nor_the_context() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (w, task) = spawn(store.clone(), settings(0), CancellationToken::new());
        let key = Key::new("mine").unwrap();
        let first = applied(&w, put(&key, "v1")).await;
        let me = settings(0).actor;
        let forged_write = Mutation::Update {
            key: key.clone(),
            seen: Some(forged(me, u64::MAX - 1)),
            payload: Payload::Tombstone,
            written_at_ms: 2,
        };
        let second = applied(&w, forged_write).await;
        assert_eq!(second.dot.unwrap().counter, first.dot.unwrap().counter + 1);
        assert_eq!(second.set.context().get(&me), second.dot.unwrap().counter);
        assert_eq!(second.set.len(), 1, "it superseded what the replica held");
        let other = applied(&w, put(&Key::new("bystander").unwrap(), "x")).await;
        assert_eq!(other.dot.unwrap().counter, second.dot.unwrap().counter + 1);
        drop(w);
        task.await.unwrap();
        let floor = crate::identity::Identity::load(store.as_ref(), || 1)
            .unwrap()
            .dot_floor;
        assert_eq!(floor, other.dot.unwrap().counter);
    }

    /// A peer's set with a counter at u64::MAX is refused, and nothing is stored; a write
    /// whose counter would reach u64::MAX is refused too, never wrapped.
    #[tokio::test]
    async fn counters_at_their_end_are_refused_not_wrapped() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (w, task) = spawn(
            store.clone(),
            settings(u64::MAX - 2),
            CancellationToken::new(),
        );
        let key = Key::new("k").unwrap();
        let me = settings(0).actor;
        // A set at u64::MAX − 1 is one a node can issue; one at u64::MAX only a forgery has.
        let (near_end, _) = SiblingSet::new()
            .update_above(
                None,
                Actor { node: 9, epoch: 0 },
                u64::MAX - 2,
                Payload::Tombstone,
                1,
            )
            .unwrap();
        assert!(!near_end.has_overflowed_counter());
        let at_max: SiblingSet = rmp_serde::from_slice(
            &rmp_serde::to_vec(&(Vec::<crate::version::Version>::new(), forged(me, u64::MAX)))
                .unwrap(),
        )
        .unwrap();
        assert!(at_max.has_overflowed_counter());
        let refused = w
            .submit(Mutation::Merge {
                key: key.clone(),
                set: at_max,
            })
            .await;
        assert!(
            matches!(refused, Err(KvError::OverflowedSet { .. })),
            "{refused:?}"
        );
        assert!(store.get(Table::Data, key.as_bytes()).unwrap().is_none());

        // The floor is at u64::MAX − 2: one more dot, then the counter is exhausted.
        let last = applied(&w, put(&key, "last")).await;
        assert_eq!(last.dot.unwrap().counter, u64::MAX - 1);
        let over = w.submit(put(&key, "over")).await;
        assert!(matches!(over, Err(KvError::CounterOverflow(_))), "{over:?}");
        let stored =
            record::decode(&store.get(Table::Data, key.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(
            stored.versions().len(),
            1,
            "the refused write stored nothing"
        );
        drop(w);
        task.await.unwrap();
    }

    /// A merge that leaves a key over the sibling cap is stored (it was acknowledged
    /// elsewhere) and counted.
    #[tokio::test]
    async fn a_merge_over_the_sibling_cap_is_stored_and_counted() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut s = settings(0);
        s.max_siblings = 2;
        let (w, task) = spawn(store, s, CancellationToken::new());
        let key = Key::new("k").unwrap();
        let set = (0..3u64).fold(SiblingSet::new(), |acc, n| {
            let (one, _) = SiblingSet::new()
                .update(
                    None,
                    Actor {
                        node: 10 + n,
                        epoch: 0,
                    },
                    Payload::Tombstone,
                    1,
                )
                .unwrap();
            acc.sync(&one)
        });
        assert_eq!(set.len(), 3);
        let a = applied(&w, Mutation::Merge { key, set }).await;
        assert_eq!(a.set.len(), 3, "stored over the cap");
        assert_eq!(w.stats().merges_over_sibling_cap.get(), 1);
        drop(w);
        task.await.unwrap();
    }

    /// A store whose fsync fails from the first call on, as a disk that went bad.
    struct SyncFails(MemoryStore);

    impl Store for SyncFails {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(table, key)
        }
        fn scan(
            &self,
            table: Table,
            from: std::ops::Bound<&[u8]>,
            to: std::ops::Bound<&[u8]>,
            limit: usize,
        ) -> Result<Vec<crate::store::Entry>, StoreError> {
            self.0.scan(table, from, to, limit)
        }
        fn write(&self, durable: bool, body: crate::store::TxnBody<'_>) -> Result<(), StoreError> {
            self.0.write(durable, body)
        }
        fn sync(&self) -> Result<(), StoreError> {
            Err(StoreError::Io(std::io::Error::other("EIO")))
        }
    }

    /// A staged write whose fsync fails is not acknowledged, and neither is any write
    /// after it, even one whose own commit would have gone through.
    #[tokio::test]
    async fn no_write_is_acknowledged_after_a_failed_fsync() {
        let store: Arc<dyn Store> = Arc::new(SyncFails(MemoryStore::new()));
        let (w, task) = spawn(store, settings(0), CancellationToken::new());
        let key = Key::new("k").unwrap();
        let staged = w.submit_staged(put(&key, "a")).await.unwrap();
        assert!(
            staged.committed.await.unwrap().is_ok(),
            "visible before the fsync"
        );
        let durable = staged.durable.await.unwrap();
        assert!(
            matches!(&durable, Err(KvError::SyncFailed { source, .. }) if matches!(**source, StoreError::Io(_))),
            "{durable:?}"
        );
        for value in ["b", "c"] {
            let later = w.submit(put(&key, value)).await;
            assert!(
                matches!(&later, Err(e @ KvError::SyncFailed { .. }) if e.to_string().contains("fsync failed")),
                "{later:?}"
            );
        }
        drop(w);
        task.await.unwrap();
    }

    /// A store whose writes fail with ENOSPC while `full` is set, like a full disk.
    struct FullDisk {
        inner: MemoryStore,
        full: std::sync::atomic::AtomicBool,
        reopens: std::sync::atomic::AtomicUsize,
    }

    impl FullDisk {
        fn check(&self) -> Result<(), StoreError> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io(std::io::Error::from_raw_os_error(28)));
            }
            Ok(())
        }
    }

    impl Store for FullDisk {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(table, key)
        }
        fn scan(
            &self,
            table: Table,
            from: std::ops::Bound<&[u8]>,
            to: std::ops::Bound<&[u8]>,
            limit: usize,
        ) -> Result<Vec<crate::store::Entry>, StoreError> {
            self.inner.scan(table, from, to, limit)
        }
        fn write(&self, durable: bool, body: crate::store::TxnBody<'_>) -> Result<(), StoreError> {
            self.check()?;
            self.inner.write(durable, body)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.check()
        }
        fn reopen(&self) -> Result<(), StoreError> {
            self.reopens
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// Out of space, writes answer `NoSpace` (507) without a restart being needed: the
    /// writer reopens the store, probes on a timer, and takes writes again once a probe
    /// commit succeeds.
    #[tokio::test]
    async fn a_full_disk_refuses_writes_then_recovers_when_space_returns() {
        let store = Arc::new(FullDisk {
            inner: MemoryStore::new(),
            full: false.into(),
            reopens: 0.into(),
        });
        let (w, task) = spawn(store.clone(), settings(0), CancellationToken::new());
        let key = Key::new("k").unwrap();
        applied(&w, put(&key, "a")).await;
        assert_eq!(w.write_state(), WriteState::Writable);

        store.full.store(true, std::sync::atomic::Ordering::SeqCst);
        for value in ["b", "c"] {
            let r = w.submit(put(&key, value)).await;
            // The store's own error, type and all, not its text.
            assert!(
                matches!(&r, Err(KvError::NoSpace(e)) if matches!(&**e, StoreError::Io(io) if io.raw_os_error() == Some(28))),
                "{r:?}"
            );
        }
        assert_eq!(w.write_state(), WriteState::NoSpace);
        let reopened = store.reopens.load(std::sync::atomic::Ordering::SeqCst);
        assert!(reopened >= 1, "not reopened for reads");
        // Probes go on failing while the disk is full.
        tokio::time::sleep(SPACE_PROBE_INTERVAL + Duration::from_millis(500)).await;
        assert_eq!(w.write_state(), WriteState::NoSpace);
        assert!(store.reopens.load(std::sync::atomic::Ordering::SeqCst) > reopened);

        store.full.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut state = w.watch_write_state();
        tokio::time::timeout(
            SPACE_PROBE_INTERVAL * 2,
            state.wait_for(|s| *s == WriteState::Writable),
        )
        .await
        .expect("writable again within two probe intervals")
        .unwrap();
        let d = applied(&w, put(&key, "d")).await;
        assert!(d.changed);
        // The probe row is gone again.
        assert_eq!(store.get(Table::Meta, SPACE_PROBE_KEY).unwrap(), None);
        drop(w);
        task.await.unwrap();
    }

    /// A store whose `sync` waits while `hold` is set, like a slow disk.
    struct HeldSync {
        inner: MemoryStore,
        hold: std::sync::atomic::AtomicBool,
        fail: bool,
    }

    impl Store for HeldSync {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(table, key)
        }
        fn scan(
            &self,
            table: Table,
            from: std::ops::Bound<&[u8]>,
            to: std::ops::Bound<&[u8]>,
            limit: usize,
        ) -> Result<Vec<crate::store::Entry>, StoreError> {
            self.inner.scan(table, from, to, limit)
        }
        fn write(&self, durable: bool, body: crate::store::TxnBody<'_>) -> Result<(), StoreError> {
            self.inner.write(durable, body)
        }
        fn sync(&self) -> Result<(), StoreError> {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while self.hold.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.fail {
                return Err(StoreError::SyncFailed(std::io::Error::other("EIO")));
            }
            Ok(())
        }
    }

    fn pipelined_settings() -> WriterSettings {
        WriterSettings {
            pipeline: true,
            blocking: BlockingMode::Threaded,
            ..settings(0)
        }
    }

    /// With a log, the next batch is applied while the previous one's sync runs, and
    /// neither is acknowledged before a sync that covers it has ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_batch_is_applied_while_the_previous_one_syncs() {
        let store = Arc::new(HeldSync {
            inner: MemoryStore::new(),
            hold: true.into(),
            fail: false,
        });
        let (w, task) = spawn(
            store.clone(),
            pipelined_settings(),
            CancellationToken::new(),
        );
        let first = w
            .submit_staged(put(&Key::new("a").unwrap(), "1"))
            .await
            .unwrap();
        first.committed.await.unwrap().unwrap();
        // The first batch's sync is held; the second is committed all the same.
        let second = w
            .submit_staged(put(&Key::new("b").unwrap(), "2"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), second.committed)
            .await
            .expect("the second batch committed during the first one's sync")
            .unwrap()
            .unwrap();
        assert!(store.get(Table::Data, b"b").unwrap().is_some());
        let mut first_durable = first.durable;
        let mut second_durable = second.durable;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            first_durable.try_recv().is_err(),
            "acknowledged before its sync ended"
        );
        assert!(
            second_durable.try_recv().is_err(),
            "acknowledged before its sync ended"
        );
        store.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        first_durable.await.unwrap().unwrap();
        second_durable.await.unwrap().unwrap();
        assert_eq!(w.stats().fsyncs.get(), 2);
        drop(w);
        task.await.unwrap();
    }

    /// A failed log sync fails its batch, the batch applied meanwhile, and every write
    /// after them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_sync_fails_the_batches_behind_it() {
        let store = Arc::new(HeldSync {
            inner: MemoryStore::new(),
            hold: true.into(),
            fail: true,
        });
        let (w, task) = spawn(
            store.clone(),
            pipelined_settings(),
            CancellationToken::new(),
        );
        let first = w
            .submit_staged(put(&Key::new("a").unwrap(), "1"))
            .await
            .unwrap();
        first.committed.await.unwrap().unwrap();
        let second = w
            .submit_staged(put(&Key::new("b").unwrap(), "2"))
            .await
            .unwrap();
        second.committed.await.unwrap().unwrap();
        store.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        for durable in [first.durable, second.durable] {
            let r = durable.await.unwrap();
            assert!(matches!(&r, Err(KvError::SyncFailed { .. })), "{r:?}");
        }
        let later = w.submit(put(&Key::new("c").unwrap(), "3")).await;
        assert!(
            matches!(&later, Err(KvError::SyncFailed { .. })),
            "{later:?}"
        );
        assert_eq!(w.write_state(), WriteState::SyncFailed);
        drop(w);
        task.await.unwrap();
    }

    /// After a failed fsync the state says so, for `/ready` and gossip.
    #[tokio::test]
    async fn a_failed_fsync_is_announced_and_final() {
        let store: Arc<dyn Store> = Arc::new(SyncFails(MemoryStore::new()));
        let (w, task) = spawn(store, settings(0), CancellationToken::new());
        let key = Key::new("k").unwrap();
        let staged = w.submit_staged(put(&key, "a")).await.unwrap();
        assert!(staged.durable.await.unwrap().is_err());
        assert_eq!(w.write_state(), WriteState::SyncFailed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(w.write_state(), WriteState::SyncFailed);
        drop(w);
        task.await.unwrap();
    }
}
