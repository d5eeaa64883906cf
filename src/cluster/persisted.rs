//! The last membership this node knew, kept in the store's meta table so a restarted
//! node starts from the ring it belonged to instead of "a cluster of myself".
//!
//! The record is written by [`keep_persisted`] when the view's members change (debounced:
//! at most one write per interval) and read once at startup by [`load`]. A record read
//! back is checked before use: an unreadable or out-of-bounds record is logged and
//! ignored (the node then starts as if it had none), never a panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::membership::{ClusterView, Member, MemberState};
use super::NodeId;
use crate::config::BlockingMode;
use crate::store::{Store, StoreError, Table};

/// The meta table's key for the record.
const MEMBERSHIP: &[u8] = b"membership";
/// Format version of the record: a record of another version is ignored.
const VERSION: u8 = 1;
/// More members than any cluster this code runs: a record claiming more is corrupt.
pub const MAX_MEMBERS: usize = 1024;
/// As `--vnodes` allows.
pub const MAX_VNODES: u16 = 4096;
/// Bound on the encoded record, checked before decoding.
const MAX_RECORD_BYTES: usize = 256 * 1024;

/// One member as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub state: String,
    pub vnodes: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u8,
    members: Vec<StoredMember>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("persisted membership does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("persisted membership does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("persisted membership is invalid: {0}")]
    Invalid(String),
    #[error("writing the persisted membership panicked: {0}")]
    Panicked(String),
}

/// What the node knew of its cluster when it last ran: every member of its rings, itself
/// included, none live (liveness is gossip's to tell).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Persisted {
    pub members: BTreeMap<NodeId, Member>,
}

impl Persisted {
    /// Whether the record names a member other than `me`: only then has the node a ring
    /// to confirm before it serves.
    pub fn has_peers(&self, me: NodeId) -> bool {
        self.members.keys().any(|id| *id != me)
    }
}

fn stored(members: &BTreeMap<NodeId, Member>) -> Vec<StoredMember> {
    members
        .values()
        // A member that left is in no ring; keeping it would only bring it back.
        .filter(|m| m.state != MemberState::Left)
        .take(MAX_MEMBERS)
        .map(|m| StoredMember {
            id: m.id.0,
            http_addr: m.http_addr,
            rpc_addr: m.rpc_addr,
            gossip_addr: m.gossip_addr,
            state: m.state.as_str().to_owned(),
            vnodes: m.vnodes,
        })
        .collect()
}

/// Checks a decoded record: bounds on the member count and vnode counts, known states, no
/// duplicate ids.
fn validate(record: Record) -> Result<Persisted, PersistError> {
    let bad = |m: String| Err(PersistError::Invalid(m));
    if record.version != VERSION {
        return bad(format!("record version {}, want {VERSION}", record.version));
    }
    if record.members.len() > MAX_MEMBERS {
        return bad(format!(
            "{} members, more than {MAX_MEMBERS}",
            record.members.len()
        ));
    }
    let mut members = BTreeMap::new();
    for m in record.members {
        if m.vnodes == 0 || m.vnodes > MAX_VNODES {
            return bad(format!("member {} has {} vnodes", NodeId(m.id), m.vnodes));
        }
        let Some(state) = MemberState::parse(&m.state) else {
            return bad(format!("member {} has state {:?}", NodeId(m.id), m.state));
        };
        let member = Member {
            id: NodeId(m.id),
            http_addr: m.http_addr,
            rpc_addr: m.rpc_addr,
            gossip_addr: m.gossip_addr,
            state,
            live: false,
            vnodes: m.vnodes,
            to_move: None,
            writable: true,
        };
        if members.insert(member.id, member).is_some() {
            return bad(format!("member {} is listed twice", NodeId(m.id)));
        }
    }
    Ok(Persisted { members })
}

fn decode(raw: &[u8]) -> Result<Persisted, PersistError> {
    if raw.len() > MAX_RECORD_BYTES {
        return Err(PersistError::Invalid(format!(
            "record of {} bytes, more than {MAX_RECORD_BYTES}",
            raw.len()
        )));
    }
    validate(rmp_serde::from_slice(raw)?)
}

fn encode(members: &BTreeMap<NodeId, Member>) -> Result<Vec<u8>, PersistError> {
    Ok(rmp_serde::to_vec(&Record {
        version: VERSION,
        members: stored(members),
    })?)
}

/// The persisted membership, if there is a valid one. A bad record is logged and ignored:
/// the node then starts as one that knows no ring, which is what it did before records
/// existed.
pub fn load(store: &dyn Store) -> Option<Persisted> {
    let raw = match store.get(Table::Meta, MEMBERSHIP) {
        Ok(raw) => raw?,
        Err(e) => {
            tracing::error!(error = %e, "reading the persisted membership failed; ignoring it");
            return None;
        }
    };
    match decode(&raw) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "the persisted membership is unusable; ignoring it");
            None
        }
    }
}

/// Writes the members of `view` (durably: a crash right after must find them).
pub fn save(store: &dyn Store, members: &BTreeMap<NodeId, Member>) -> Result<(), PersistError> {
    let raw = encode(members)?;
    store.write(true, &mut |txn| txn.put(Table::Meta, MEMBERSHIP, &raw))?;
    Ok(())
}

/// What of a view is persisted: two views with the same key need no new write.
fn persisted_key(view: &ClusterView) -> Vec<StoredMember> {
    stored(&view.members)
}

/// Keeps the persisted membership in step with the view until shutdown: after a change,
/// waits `debounce` (so a join's burst of gossip rounds is one write), then writes the
/// newest view if it differs from what was written last. A view still rejoining is not
/// written: it is the old record plus whatever gossip said so far, not yet confirmed.
pub async fn keep_persisted(
    store: Arc<dyn Store>,
    mut view: watch::Receiver<Arc<ClusterView>>,
    debounce: Duration,
    blocking: BlockingMode,
    shutdown: CancellationToken,
) {
    let mut written: Option<Vec<StoredMember>> = None;
    loop {
        let current = view.borrow_and_update().clone();
        let key = persisted_key(&current);
        if !current.rejoining && written.as_ref() != Some(&key) {
            let saved = match blocking {
                // The simulation: extra threads would make a run non-deterministic.
                BlockingMode::Inline => save(store.as_ref(), &current.members),
                // redb's commit blocks on fsync: off the runtime's threads.
                BlockingMode::Threaded => {
                    let (store, members) = (store.clone(), current.members.clone());
                    tokio::task::spawn_blocking(move || save(store.as_ref(), &members))
                        .await
                        .unwrap_or_else(|e| Err(PersistError::Panicked(e.to_string())))
                }
            };
            match saved {
                Ok(()) => {
                    tracing::debug!(members = key.len(), "membership persisted");
                    written = Some(key);
                }
                Err(e) => tracing::warn!(error = %e, "persisting the membership failed"),
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(debounce) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn member(id: u64, state: MemberState, vnodes: u16) -> Member {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Member {
            id: NodeId(id),
            http_addr: addr(1000 + id as u16),
            rpc_addr: addr(2000 + id as u16),
            gossip_addr: addr(3000 + id as u16),
            state,
            live: true,
            vnodes,
            to_move: Some(3),
            writable: true,
        }
    }

    #[test]
    fn round_trip_keeps_members_and_clears_liveness() {
        let store = MemoryStore::new();
        assert!(load(&store).is_none());
        let members: BTreeMap<_, _> = [
            member(1, MemberState::Normal, 128),
            member(2, MemberState::Joining, 64),
            member(3, MemberState::Leaving, 7),
            member(4, MemberState::Left, 128),
        ]
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
        save(&store, &members).unwrap();
        let back = load(&store).expect("a record");
        assert_eq!(back.members.len(), 3, "a member that left is not kept");
        for (id, m) in &back.members {
            let orig = &members[id];
            assert!(!m.live, "nothing is live before gossip says so");
            assert_eq!(m.to_move, None);
            assert_eq!(
                (m.http_addr, m.rpc_addr, m.gossip_addr, m.state, m.vnodes),
                (
                    orig.http_addr,
                    orig.rpc_addr,
                    orig.gossip_addr,
                    orig.state,
                    orig.vnodes
                )
            );
        }
        assert!(back.has_peers(NodeId(1)));
    }

    fn put_raw(store: &MemoryStore, raw: &[u8]) {
        store
            .write(true, &mut |txn| txn.put(Table::Meta, MEMBERSHIP, raw))
            .unwrap();
    }

    fn record_with(f: impl FnOnce(&mut Vec<StoredMember>)) -> Vec<u8> {
        let members: BTreeMap<_, _> = [member(1, MemberState::Normal, 128)]
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let mut rec = Record {
            version: VERSION,
            members: stored(&members),
        };
        f(&mut rec.members);
        rmp_serde::to_vec(&rec).unwrap()
    }

    #[tokio::test]
    async fn views_are_persisted_once_confirmed_and_the_task_stops_on_shutdown() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let me = member(1, MemberState::Normal, 128);
        let p = Persisted {
            members: [
                member(1, MemberState::Normal, 128),
                member(2, MemberState::Normal, 128),
            ]
            .into_iter()
            .map(|m| (m.id, m))
            .collect(),
        };
        let rejoining = ClusterView::rejoining(me.clone(), &p);
        let (tx, rx) = watch::channel(Arc::new(rejoining.clone()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_persisted(
            store.clone(),
            rx,
            Duration::from_millis(5),
            BlockingMode::Inline,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            load(store.as_ref()).is_none(),
            "a view still rejoining is not written"
        );
        let mut confirmed = rejoining;
        confirmed.rejoining = false;
        confirmed
            .members
            .insert(NodeId(3), member(3, MemberState::Joining, 64));
        tx.send(Arc::new(confirmed)).unwrap();
        let mut written = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            written = load(store.as_ref());
            if written.is_some() {
                break;
            }
        }
        let written = written.expect("the confirmed view is written");
        assert_eq!(
            written.members.keys().copied().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );
        assert_eq!(written.members[&NodeId(3)].state, MemberState::Joining);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops on shutdown")
            .unwrap();
    }

    #[test]
    fn bad_records_are_ignored_not_fatal() {
        let store = MemoryStore::new();
        put_raw(&store, b"\xff\x00garbage");
        assert!(load(&store).is_none(), "garbage");
        put_raw(&store, &record_with(|m| m[0].vnodes = 0));
        assert!(load(&store).is_none(), "zero vnodes");
        put_raw(&store, &record_with(|m| m[0].vnodes = MAX_VNODES + 1));
        assert!(load(&store).is_none(), "too many vnodes");
        put_raw(&store, &record_with(|m| m[0].state = "weird".into()));
        assert!(load(&store).is_none(), "unknown state");
        put_raw(&store, &record_with(|m| m.push(m[0].clone())));
        assert!(load(&store).is_none(), "duplicate id");
        put_raw(
            &store,
            &record_with(|m| {
                let one = m[0].clone();
                m.extend((0..MAX_MEMBERS as u64).map(|i| StoredMember {
                    id: i + 10,
                    ..one.clone()
                }));
            }),
        );
        assert!(load(&store).is_none(), "too many members");
        put_raw(&store, &record_with(|_| {}));
        assert!(load(&store).is_some(), "a good record after bad ones");
    }
}
