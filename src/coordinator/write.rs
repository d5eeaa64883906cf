//! Replicated writes: apply locally, send to the other replicas in parallel, answer at W.
//!
//! A replica that is down — by the failure detector, because the call to it failed, or
//! because it announces that its storage takes no writes — gets a hint on a stand-in instead: the next healthy node clockwise outside the
//! preference list, or this node when there is none. W counts distinct nodes that stored
//! the write, so a hint on a node that already holds the write as a replica adds nothing.
//! Replies that come after the answer finish in the background.
//!
//! While data moves (a member joining or leaving), a write goes to the key's owners in
//! both rings and must reach W in each: otherwise a write acknowledged by the old owners
//! alone could be missed by a read at R from the new ones once the move completes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{CoordError, CoordinatorParts as Inner};
use crate::cluster::membership::ClusterView;
use crate::cluster::policy::set_quorum;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::kv::KvError;
use crate::quorum::Tracker;
use crate::rpc::{Request, Response};
use crate::version::{Dot, Payload, SiblingSet, VersionVector};

/// What one replica's copy came to: stored at a node (for `target`), or lost.
enum Copy {
    StoredAt {
        node: NodeId,
        target: NodeId,
    },
    Failed {
        target: NodeId,
    },
    /// The coordinator's own commit could not be made durable: the write fails, as it
    /// would have had the local write come first.
    LocalFailed(KvError),
}

/// W counted in the preference list of each ring version.
struct Quorums {
    lists: Vec<(Vec<NodeId>, Tracker<NodeId>)>,
}

impl Quorums {
    fn new(lists: Vec<Vec<NodeId>>, w: usize) -> Self {
        Quorums {
            lists: lists
                .into_iter()
                .map(|l| {
                    let t = Tracker::new(set_quorum(w, l.len()), l.len());
                    (l, t)
                })
                .collect(),
        }
    }

    fn record(&mut self, copy: &Copy) {
        for (list, tracker) in &mut self.lists {
            match copy {
                Copy::StoredAt { node, target } if list.contains(target) => tracker.success(*node),
                Copy::Failed { target } if list.contains(target) => tracker.failure(),
                _ => {}
            }
        }
    }

    fn is_met(&self) -> bool {
        self.lists.iter().all(|(_, t)| t.is_met())
    }

    fn is_lost(&self) -> bool {
        self.lists.iter().any(|(_, t)| t.is_lost())
    }

    /// The counts of the list furthest from its quorum, for the error.
    fn worst(&self) -> (usize, usize, usize) {
        // By `ok - needed`, signed: compared as `ok_a + needed_b` against `ok_b + needed_a`
        // so that no subtraction saturates. Saturating at 0 made a list that just met its
        // quorum tie with one that missed it, and the error could then name the met one
        // ("1 needed, 1 replied").
        self.lists
            .iter()
            .map(|(_, t)| (t.needed(), t.succeeded(), t.failed()))
            .min_by(|(needed_a, ok_a, _), (needed_b, ok_b, _)| {
                (ok_a + needed_b).cmp(&(ok_b + needed_a))
            })
            .unwrap_or((0, 0, 0))
    }
}

pub(super) async fn replicated_write(
    inner: &Arc<Inner>,
    view: &Arc<ClusterView>,
    key: Key,
    seen: Option<VersionVector>,
    payload: Payload,
    w: usize,
    (started, deadline): (Instant, Instant),
) -> Result<(SiblingSet, Dot), CoordError> {
    let policy = inner.policy();
    let prefs = policy.storage_nodes(view, key.as_bytes());
    let lists = policy.write_sets(view, key.as_bytes());
    let timeout_error = |replied| CoordError::timed_out(started, w, replied, true);

    let others: Vec<NodeId> = prefs
        .iter()
        .copied()
        .filter(|id| *id != view.self_id)
        .collect();

    // The local write first: it issues the dot, and every other replica gets its result.
    let now = inner.peers.clock.now_ms();
    // The writer gives every client write a dot; `Applied::dot` is optional for merges.
    let no_dot = || CoordError::Internal("a client write issued no dot");
    if others.is_empty() {
        // Alone: one durable commit, nothing to overlap with its fsync.
        let applied = tokio::time::timeout_at(
            deadline,
            inner.local.update(key.clone(), seen, payload, now),
        )
        .await
        .map_err(|_| timeout_error(0))??;
        let dot = applied.dot.ok_or_else(no_dot)?;
        return Ok((applied.set, dot));
    }
    // The set goes out as soon as it is committed here; the local fsync runs meanwhile and
    // counts towards W like any replica's (see `WriterHandle::submit_staged`).
    let staged = async {
        let staged = inner
            .local
            .update_staged(key.clone(), seen, payload, now)
            .await?;
        let committed = staged.committed.await.map_err(|_| KvError::ShuttingDown)?;
        Ok::<_, KvError>((committed?, staged.durable))
    };
    let (applied, durable) = tokio::time::timeout_at(deadline, staged)
        .await
        .map_err(|_| timeout_error(0))??;
    let set = applied.set;
    let dot = applied.dot.ok_or_else(no_dot)?;
    let local_durable = async move {
        durable
            .await
            .map_err(|_| KvError::ShuttingDown)?
            .map(|_| ())
    };

    let mut quorums = Quorums::new(lists, w);

    let stand_ins = Arc::new(StandIns::new(view, &key, &prefs));
    let (tx, mut rx) = mpsc::channel(others.len() + 1);
    let self_id = view.self_id;
    let local_tx = tx.clone();
    tokio::spawn(async move {
        let copy = match local_durable.await {
            Ok(()) => Copy::StoredAt {
                node: self_id,
                target: self_id,
            },
            Err(e) => Copy::LocalFailed(e),
        };
        let _ = local_tx.send(copy).await;
    });
    for target in others {
        // Carried: the replicas log their part under the client request's id.
        tokio::spawn(crate::telemetry::carry(replicate_one(
            inner.clone(),
            view.clone(),
            key.clone(),
            set.clone(),
            target,
            stand_ins.clone(),
            tx.clone(),
        )));
    }
    drop(tx);

    while !quorums.is_met() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timeout_error(quorums.worst().1)),
            Ok(None) => break,
            Ok(Some(Copy::LocalFailed(e))) => return Err(e.into()),
            Ok(Some(copy)) => quorums.record(&copy),
        }
        if quorums.is_lost() {
            break;
        }
    }
    if quorums.is_met() {
        Ok((set, dot))
    } else {
        let (needed, replied, failed) = quorums.worst();
        Err(CoordError::QuorumFailed {
            needed,
            replied,
            failed,
            write: true,
        })
    }
}

/// Sends the set to `target`, or, if it is down or does not answer, a hint for it to a
/// stand-in.
async fn replicate_one(
    inner: Arc<Inner>,
    view: Arc<ClusterView>,
    key: Key,
    set: SiblingSet,
    target: NodeId,
    stand_ins: Arc<StandIns>,
    tx: mpsc::Sender<Copy>,
) {
    let rpc_timeout = inner.peers.rpc_timeout;
    // A replica that announces it takes no writes (its disk is full) is down for writes:
    // its copy goes to a stand-in as a hint, handed back once it takes writes again.
    if view.takes_writes(target) {
        if let Some(m) = view.member(target) {
            let request = Request::Merge {
                entries: vec![(key.as_str().to_owned(), set.clone())],
            };
            match inner.peers.rpc.call(m.rpc_addr, request, rpc_timeout).await {
                Ok(Response::Merged) => {
                    let _ = tx
                        .send(Copy::StoredAt {
                            node: target,
                            target,
                        })
                        .await;
                    return;
                }
                Ok(other) => tracing::warn!(peer = %target, ?other, "replica refused a write"),
                Err(e) => {
                    tracing::debug!(peer = %target, error = %e, "replica write failed; hinting")
                }
            }
        }
    }
    inner.stats.replica_write_failures.inc();
    let copy = hint(&inner, &view, &key, set, target, &stand_ins).await;
    let _ = tx.send(copy).await;
}

/// Stores a hint for `target` on the next stand-in that takes it.
async fn hint(
    inner: &Inner,
    view: &ClusterView,
    key: &Key,
    set: SiblingSet,
    target: NodeId,
    stand_ins: &StandIns,
) -> Copy {
    let rpc_timeout = inner.peers.rpc_timeout;
    while let Some(stand_in) = stand_ins.next() {
        if stand_in == view.self_id {
            let now = inner.peers.clock.now_ms();
            return match inner
                .local
                .store_hint(target.0, key.clone(), set, now)
                .await
            {
                Ok(true) => {
                    inner.stats.hints_stored.inc();
                    Copy::StoredAt {
                        node: stand_in,
                        target,
                    }
                }
                Ok(false) => {
                    inner.stats.hints_refused.inc();
                    Copy::Failed { target }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "storing a hint failed");
                    Copy::Failed { target }
                }
            };
        }
        let Some(m) = view.member(stand_in) else {
            continue;
        };
        let request = Request::Hint {
            target: target.0,
            key: key.as_str().to_owned(),
            set: set.clone(),
        };
        match inner.peers.rpc.call(m.rpc_addr, request, rpc_timeout).await {
            Ok(Response::HintStored) => {
                return Copy::StoredAt {
                    node: stand_in,
                    target,
                }
            }
            Ok(Response::HintRefused { reason }) => {
                tracing::debug!(peer = %stand_in, reason, "stand-in refused a hint");
                return Copy::Failed { target };
            }
            Ok(other) => tracing::warn!(peer = %stand_in, ?other, "unexpected answer to a hint"),
            Err(e) => {
                tracing::debug!(peer = %stand_in, error = %e, "stand-in failed; trying the next")
            }
        }
    }
    Copy::Failed { target }
}

/// Stand-ins for one write, handed out once each: the healthy nodes clockwise past the
/// preference list, then this node, which is always there.
struct StandIns(Mutex<VecDeque<NodeId>>);

impl StandIns {
    fn new(view: &ClusterView, key: &Key, prefs: &[NodeId]) -> Self {
        let mut order: VecDeque<NodeId> = view
            .ring
            .walk(key.as_bytes())
            .filter(|id| !prefs.contains(id) && view.takes_writes(*id) && *id != view.self_id)
            .collect();
        order.push_back(view.self_id);
        StandIns(Mutex::new(order))
    }

    /// The next stand-in. This node is handed out to every target once the others are
    /// used up: it can hold hints for several.
    fn next(&self) -> Option<NodeId> {
        let mut order = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match order.len() {
            0 => None,
            1 => order.front().copied(),
            _ => order.pop_front(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::cluster::membership::{rings_of, Member, MemberState};
    use crate::cluster::policy::ReplicationPolicy;
    use crate::quorum::Replication;

    fn state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Joining),
            Just(MemberState::Normal),
            Just(MemberState::Leaving),
        ]
    }

    /// A view of 1..9 members in any state, each live or not and writable or not, seen
    /// from the member at `self_pick` (modulo their number).
    fn view() -> impl Strategy<Value = ClusterView> {
        (
            proptest::collection::btree_map(
                1u64..24,
                (state(), 1u16..6, any::<bool>(), any::<bool>()),
                1..9,
            ),
            any::<usize>(),
        )
            .prop_map(|(members, self_pick)| {
                let unused = SocketAddr::from(([127, 0, 0, 1], 9));
                let members: BTreeMap<NodeId, Member> = members
                    .into_iter()
                    .map(|(id, (state, vnodes, live, writable))| {
                        let member = Member {
                            id: NodeId(id),
                            http_addr: unused,
                            rpc_addr: unused,
                            gossip_addr: unused,
                            state,
                            live,
                            vnodes,
                            to_move: None,
                            writable,
                        };
                        (NodeId(id), member)
                    })
                    .collect();
                let ids: Vec<NodeId> = members.keys().copied().collect();
                let self_id = ids[self_pick % ids.len()];
                let (read, write) = rings_of(members.values().map(|m| (m.id, m.state, m.vnodes)));
                ClusterView {
                    self_id,
                    members,
                    departed: BTreeSet::new(),
                    ring: Arc::new(read),
                    write_ring: Arc::new(write),
                    rejoining: false,
                    disagreements: Vec::new(),
                }
            })
    }

    /// What became of one target's copy, in a generated run.
    #[derive(Clone, Copy, Debug)]
    enum Outcome {
        /// Stored at the target itself.
        Stored,
        /// Stored as a hint at the node with this id (any node: a stand-in may be a
        /// replica of the key in the other ring, or this node).
        Hinted(u64),
        Failed,
        /// No reply yet.
        Pending,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Stored),
            (1u64..24).prop_map(Outcome::Hinted),
            Just(Outcome::Failed),
            Just(Outcome::Pending),
        ]
    }

    fn policy() -> impl Strategy<Value = ReplicationPolicy> {
        (1usize..6).prop_map(|n| ReplicationPolicy::new(Replication { n, r: n, w: n }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any sequence of replies, one per target at most, the write is met exactly
        /// when every write set has its quorum of distinct nodes storing copies meant for
        /// that set's members, and lost exactly when some set can no longer get there.
        /// It is never both; once every target has replied it is one of the two; and a
        /// write that is not met reports counts short of a quorum.
        #[test]
        fn quorums_meet_exactly_when_each_write_set_has_w(
            policy in policy(),
            view in view(),
            key in any::<[u8; 8]>(),
            w in 1usize..6,
            outcomes in proptest::collection::vec(outcome(), 24),
            order in proptest::collection::vec(any::<u32>(), 24),
        ) {
            let sets = policy.write_sets(&view, &key);
            let mut targets = policy.storage_nodes(&view, &key);
            // Replies come in any order.
            targets.sort_by_key(|t| order[usize::try_from(t.0).unwrap_or(0) % order.len()]);
            let mut quorums = Quorums::new(sets.clone(), w);
            let mut copies: Vec<(NodeId, Option<NodeId>)> = Vec::new();
            for (i, target) in targets.iter().copied().enumerate() {
                let copy = match outcomes[i] {
                    Outcome::Pending => continue,
                    Outcome::Stored => Copy::StoredAt { node: target, target },
                    Outcome::Hinted(at) => Copy::StoredAt { node: NodeId(at), target },
                    Outcome::Failed => Copy::Failed { target },
                };
                quorums.record(&copy);
                copies.push(match copy {
                    Copy::StoredAt { node, target } => (target, Some(node)),
                    _ => (target, None),
                });
                let per_set: Vec<(usize, usize, usize)> = sets
                    .iter()
                    .map(|set| {
                        let mine = copies.iter().filter(|(t, _)| set.contains(t));
                        let stored: BTreeSet<NodeId> =
                            mine.clone().filter_map(|(_, node)| *node).collect();
                        let needed = w.min(set.len()).max(1);
                        (needed, stored.len(), set.len() - mine.count())
                    })
                    .collect();
                let met = per_set.iter().all(|&(needed, ok, _)| ok >= needed);
                let lost = per_set
                    .iter()
                    .any(|&(needed, ok, pending)| ok < needed && ok + pending < needed);
                prop_assert_eq!(quorums.is_met(), met, "{:?}", per_set);
                prop_assert_eq!(quorums.is_lost(), lost, "{:?}", per_set);
                prop_assert!(!(met && lost));
                if !met {
                    let (needed, replied, _) = quorums.worst();
                    prop_assert!(replied < needed, "worst {:?} of {:?}", quorums.worst(), per_set);
                }
            }
            if copies.len() == targets.len() {
                prop_assert!(quorums.is_met() != quorums.is_lost());
            }
        }

        /// Stand-ins come in the ring's clockwise order from the key: every node that
        /// takes writes and is neither a preferred node nor this one, each once; then
        /// this node, for every target after that. A preferred node is never a stand-in
        /// (but this node, the last resort, may be one).
        #[test]
        fn stand_ins_are_the_healthy_outsiders_clockwise_then_this_node(
            policy in policy(),
            view in view(),
            key in "[a-z0-9]{1,12}",
        ) {
            let key = Key::new(key).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let prefs = policy.storage_nodes(&view, key.as_bytes());
            let stand_ins = StandIns::new(&view, &key, &prefs);
            let handed: Vec<NodeId> = (0..view.ring.len() + 3)
                .map(|_| stand_ins.next())
                .collect::<Option<_>>()
                .ok_or_else(|| TestCaseError::fail("ran out of stand-ins"))?;
            let cut = handed.iter().position(|id| *id == view.self_id);
            let cut = cut.ok_or_else(|| TestCaseError::fail("this node was never handed out"))?;
            let (outsiders, rest) = handed.split_at(cut);
            prop_assert!(rest.iter().all(|id| *id == view.self_id));
            let eligible: Vec<NodeId> = view
                .ring
                .walk(key.as_bytes())
                .filter(|id| !prefs.contains(id) && *id != view.self_id && view.takes_writes(*id))
                .collect();
            prop_assert_eq!(outsiders, &eligible[..]);
            for id in outsiders {
                prop_assert!(!prefs.contains(id));
                prop_assert!(view.takes_writes(*id));
            }
        }
    }
}
