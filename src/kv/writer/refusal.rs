//! Why the writer refuses writes, and the way back: a failed fsync refuses them until the
//! node restarts; a full disk refuses them until a probe commit proves there is room again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::blocking;
use super::WriterSettings;
use crate::kv::hints::HintLedger;
use crate::kv::summary::load_tree;
use crate::kv::writable::WriteState;
use crate::kv::KvError;
use crate::merkle::Tree;
use crate::store::{Store, StoreError, Table};

/// How often a writer out of space tries a probe commit.
pub(super) const SPACE_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The probe's size: a commit of this much proves there is room for ordinary writes.
const SPACE_PROBE_BYTES: usize = 64 * 1024;
/// The meta row the probe writes, then deletes.
pub(super) const SPACE_PROBE_KEY: &[u8] = b"space_probe";

/// Why the writer does not commit, if it does not.
#[derive(Default)]
pub(super) struct Refusal {
    /// After a failed fsync the kernel may have dropped the dirty pages and cleared the
    /// error, so a later fsync that succeeds proves nothing about earlier commits. No
    /// further write is acknowledged once one has failed; restarting the node recovers
    /// from the last durable commit, with a new epoch.
    pub(super) failed: Option<KvError>,
    /// Out of space: refused until a probe commit succeeds. Unlike a failed fsync this
    /// is safe to leave, since the data of the failed write never reached the kernel.
    pub(super) no_space: Option<KvError>,
}

impl Refusal {
    pub(super) fn error(&self) -> Option<&KvError> {
        self.failed.as_ref().or(self.no_space.as_ref())
    }

    pub(super) fn state(&self) -> WriteState {
        if self.failed.is_some() {
            WriteState::SyncFailed
        } else if self.no_space.is_some() {
            WriteState::NoSpace
        } else {
            WriteState::Writable
        }
    }

    /// Takes in a storage error of a commit or a sync.
    pub(super) fn note(&mut self, when: &'static str, e: &Arc<StoreError>, sync: bool) {
        let sync_error = matches!(**e, StoreError::SyncFailed(_));
        if e.is_no_space() && !sync_error {
            if self.no_space.is_none() {
                tracing::error!(error = %e, when, probe_every = ?SPACE_PROBE_INTERVAL,
                    "out of space: refusing writes until a probe commit succeeds; reads go on");
            }
            self.no_space = Some(KvError::NoSpace(e.clone()));
        } else if sync || sync_error {
            self.failed = Some(sync_failed(when, e));
        }
    }
}

/// Publishes a change of state. On entering the no-space state the store is reopened at
/// once: redb refuses reads too after an I/O error, and this node still serves them.
pub(super) async fn publish(
    state: &watch::Sender<WriteState>,
    was: WriteState,
    refusal: &Refusal,
    store: &Arc<dyn Store>,
    settings: &WriterSettings,
    probe_timer: &mut tokio::time::Interval,
) {
    let now = refusal.state();
    if now == was {
        return;
    }
    if now == WriteState::NoSpace {
        // The first probe one interval from now, not at once: space rarely returns in
        // the instant after it ran out.
        probe_timer.reset();
        if let Err(e) = blocking(settings.blocking, store.clone(), |s| s.reopen()).await {
            tracing::warn!(error = %e, "reopening the store after running out of space failed; reads fail until a probe reopens it");
        }
    }
    tracing::info!(
        from = was.as_str(),
        to = now.as_str(),
        "write state changed"
    );
    state.send_replace(now);
}

/// Reopens the store and commits a probe row, then removes it; both durable. On success,
/// the tree and hint totals as the reopened store has them.
pub(super) fn probe_space(store: &dyn Store) -> Result<(Tree, HintLedger), StoreError> {
    store.reopen()?;
    let ballast = vec![0u8; SPACE_PROBE_BYTES];
    let probed = store
        .write(true, &mut |txn| {
            txn.put(Table::Meta, SPACE_PROBE_KEY, &ballast)
        })
        .and_then(|()| store.write(true, &mut |txn| txn.delete(Table::Meta, SPACE_PROBE_KEY)));
    if let Err(e) = probed {
        // The failed probe left redb refusing everything again, reads included: open it
        // once more so that reads go on until the next probe.
        if let Err(reopen) = store.reopen() {
            tracing::warn!(error = %reopen, "reopening the store after a failed space probe failed");
        }
        return Err(e);
    }
    Ok((load_tree(store)?, HintLedger::load(store)?))
}

/// The error every later write gets once an fsync has failed (see [`Refusal::failed`]).
fn sync_failed(when: &'static str, e: &Arc<StoreError>) -> KvError {
    tracing::error!(error = %e, when, "fsync failed: this node acknowledges no more writes until it restarts");
    KvError::SyncFailed {
        when,
        source: e.clone(),
    }
}
