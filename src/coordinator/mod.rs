//! The coordinator: what a KV request does across the cluster, beneath the HTTP layer.
//!
//! - A write is coordinated by a replica in the key's preference list (others forward it):
//!   apply locally, send the resulting set to the other replicas, answer at W.
//! - A read asks R healthy replicas (this node first, then the fastest peers; more only on
//!   a failure, a slow reply, or a read drawn to ask all), answers once R replied, and
//!   repairs stale ones. `latency` keeps the per-peer estimates it ranks peers by.
//! - A replica that is down gets a hint on a stand-in instead (sloppy quorum).
//!
//! With one member, every factor clamps to 1 and all of this is a local call.

mod latency;
mod list;
mod read;
mod write;

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::membership::ClusterView;
use crate::cluster::policy::ReplicationPolicy;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::kv::{KeyedSet, KvError, ListRange, LocalKv};
use crate::peers::Peers;
use crate::quorum::{Quorum, Replication};
use crate::rpc::client::RpcError;
use crate::rpc::{ForwardedWrite, RemoteError, Request, Response};
use crate::stats::quorum::Missed;
use crate::stats::ReplicationStats;
use crate::version::{Dot, Payload, SiblingSet, VersionVector};

pub use latency::PeerLatencies;
pub use read::RepairChance;

#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum CoordError {
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Dynamo semantics: a write that missed its quorum may still be applied.
    #[error("{needed} replica(s) needed, {replied} replied, {failed} failed{}", if *.write { "; the write may still be applied" } else { "" })]
    QuorumFailed {
        needed: usize,
        replied: usize,
        failed: usize,
        write: bool,
    },
    #[error("timed out after {after_ms} ms: {needed} replica(s) needed, {replied} replied{}", if *.write { "; the write may still be applied" } else { "" })]
    Timeout {
        after_ms: u64,
        needed: usize,
        replied: usize,
        write: bool,
    },
    #[error("{0}")]
    Remote(RemoteError),
    /// The node is still joining and knows no member that holds data.
    #[error("this node has not joined its cluster yet; retry, or ask another node")]
    NotJoined,
    /// A listing could not scan any replica of some ring ranges: a page without them
    /// would silently miss keys.
    #[error("listing incomplete: {uncovered} of {ranges} ring range(s) have no replica that answered (unreachable: {unreachable}); retry once they are back")]
    ListingIncomplete {
        uncovered: usize,
        ranges: usize,
        unreachable: String,
    },
    /// A broken invariant of this node's own code (a 500), not a storage failure.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl CoordError {
    /// A request that ran out of time: `after_ms` is how long it ran since `started` (not
    /// what was left of its budget, which is zero by then), and `replied` what had
    /// answered by then.
    fn timed_out(
        started: tokio::time::Instant,
        needed: usize,
        replied: usize,
        write: bool,
    ) -> Self {
        CoordError::Timeout {
            after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            needed,
            replied,
            write,
        }
    }
}

/// Per-request options, as parsed from the query string.
#[derive(Clone, Copy, Debug)]
pub struct RequestOpts {
    pub r: Option<Quorum>,
    pub w: Option<Quorum>,
    pub timeout: Duration,
}

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// Whether a live value was found (and is now covered by the tombstone).
    pub found: bool,
    pub set: SiblingSet,
    /// The tombstone's dot, when one was written.
    pub dot: Option<Dot>,
}

/// A coordinated write's outcome: the key's set after it, and the new version's dot
/// (`None` when a delete found nothing and wrote nothing).
#[derive(Debug, Clone)]
pub struct Written {
    pub found: bool,
    pub set: SiblingSet,
    pub dot: Option<Dot>,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// Keys with at least one live value, in key order.
    pub items: Vec<KeyedSet>,
    /// The last key looked at, when there may be more after it.
    pub resume_after: Option<Key>,
}

/// The replication policy and the timings of the replication machinery.
#[derive(Clone, Copy, Debug)]
pub struct CoordinatorConfig {
    pub replication: ReplicationPolicy,
    /// How long a read keeps waiting, after it answered, for the slower replicas it will
    /// repair.
    pub repair_wait: Duration,
}

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<CoordinatorParts>,
}

/// What a coordinator works with.
pub struct CoordinatorParts {
    pub peers: Peers,
    pub local: LocalKv,
    pub stats: Arc<ReplicationStats>,
    pub config: CoordinatorConfig,
    /// What reads learned of each peer's latency: whom they ask first, and when to ask
    /// another.
    pub latencies: PeerLatencies,
    /// The share of reads that ask every replica (`--read-repair-chance`).
    pub repair_chance: RepairChance,
}

impl Coordinator {
    pub fn new(parts: CoordinatorParts) -> Self {
        Coordinator {
            inner: Arc::new(parts),
        }
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.inner.peers.view()
    }

    /// The configured factors (N, R, W).
    pub fn configured(&self) -> Replication {
        self.inner.config.replication.configured()
    }

    /// The factors in force: N, R and W clamp to the number of members.
    pub fn replication(&self) -> Replication {
        self.inner.config.replication.effective(&self.view())
    }

    /// Which nodes hold a key, and the quorums: what every replication decision asks.
    pub fn policy(&self) -> ReplicationPolicy {
        self.inner.config.replication
    }

    pub async fn get(
        &self,
        key: &Key,
        opts: &RequestOpts,
    ) -> Result<Option<SiblingSet>, CoordError> {
        let view = self.view();
        if !view.knows_holders() {
            return Err(CoordError::NotJoined);
        }
        let r = self.inner.policy().read_quorum(&view, opts.r);
        let set = read::quorum_read(&self.inner, &view, key, r, opts.timeout).await;
        let set = counted(&self.inner.stats.quorum_failures.get, set)?;
        self.inner.stats.reads_served.inc();
        Ok(set)
    }

    pub async fn put(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        opts: &RequestOpts,
    ) -> Result<Written, CoordError> {
        self.route_write(key, seen, payload, opts).await
    }

    pub async fn delete(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        opts: &RequestOpts,
    ) -> Result<Deleted, CoordError> {
        let w = self
            .route_write(key, seen, Payload::Tombstone, opts)
            .await?;
        Ok(Deleted {
            found: w.found,
            set: w.set,
            dot: w.dot,
        })
    }

    /// Coordinates here if this node replicates the key, else forwards to a replica that
    /// does: the new version's dot must come from a replica that holds the key's history.
    async fn route_write(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        opts: &RequestOpts,
    ) -> Result<Written, CoordError> {
        let view = self.view();
        // A joiner that has not yet heard of any member holding data must not coordinate
        // as a cluster of one: it would issue dots for keys whose history it does not
        // hold, and a dot issued twice for two writes loses one of them (found by the
        // simulation, seed 7022).
        if !view.knows_holders() {
            return Err(CoordError::NotJoined);
        }
        // Coordinators come from the read ring: they hold the key's history.
        let prefs = self.inner.policy().read_nodes(&view, key.as_bytes());
        // A replica whose storage refuses writes (a full disk) cannot issue the new
        // version's dot: another replica that takes writes coordinates instead, and this
        // one counts as down there. With none, the write is tried here and answers 507.
        let missed = self.missed(&payload);
        let route_around_self = !self.inner.local.write_state().takes_writes()
            && prefs
                .iter()
                .any(|id| *id != view.self_id && view.takes_writes(*id));
        let written = if (prefs.contains(&view.self_id) && !route_around_self) || prefs.is_empty() {
            self.coordinate_write(&view, key, seen, payload, opts).await
        } else {
            self.forward(&view, &prefs, key, seen, payload, opts).await
        };
        let written = counted(missed, written)?;
        self.inner.stats.writes_acknowledged.inc();
        Ok(written)
    }

    /// A write forwarded to this node: coordinated here, never forwarded again, so two
    /// nodes with momentarily different views cannot bounce a request between them.
    pub async fn forwarded(&self, fw: ForwardedWrite) -> Result<Written, CoordError> {
        let key = Key::new(fw.key)
            .map_err(|e| CoordError::Remote(RemoteError::BadRequest(e.to_string())))?;
        let opts = RequestOpts {
            r: None,
            w: fw.w,
            timeout: Duration::from_millis(fw.timeout_ms),
        };
        let view = self.view();
        let missed = self.missed(&fw.payload);
        let written = self
            .coordinate_write(&view, key, fw.seen, fw.payload, &opts)
            .await;
        counted(missed, written)
    }

    /// Where a write of `payload` that misses its quorum is counted.
    fn missed(&self, payload: &Payload) -> &Missed {
        let failures = &self.inner.stats.quorum_failures;
        if payload.is_tombstone() {
            &failures.delete
        } else {
            &failures.put
        }
    }

    async fn coordinate_write(
        &self,
        view: &Arc<ClusterView>,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        opts: &RequestOpts,
    ) -> Result<Written, CoordError> {
        let policy = self.inner.policy();
        let w = policy.write_quorum(view, opts.w);
        // The read before a delete and the catch-up before a write read at the R in force,
        // whatever R the request named: a forwarded write carries none.
        let r = policy.read_quorum(view, None);
        let started = tokio::time::Instant::now();
        let deadline = started + opts.timeout;
        let (found, seen) = if payload.is_tombstone() {
            // A delete reads first, at R: the tombstone must cover what the quorum holds,
            // not only this replica's copy, and "not found" must mean not found anywhere.
            let read = read::quorum_read(&self.inner, view, &key, r, opts.timeout).await?;
            let found = read.as_ref().is_some_and(|s| s.has_live());
            if !found {
                return Ok(Written {
                    found: false,
                    set: read.unwrap_or_default(),
                    dot: None,
                });
            }
            // The writer clamps a write's token to what this replica has seen (see
            // `SiblingSet::update_above`), so the quorum's set is merged here first: then
            // the tombstone covers what the read found, not just this replica's copy.
            // Merging what replicas hold is always safe; it is what read repair does.
            let read = read.unwrap_or_default();
            self.inner.local.merge(key.clone(), read.clone()).await?;
            (true, seen.or_else(|| Some(read.context().clone())))
        } else {
            if let Some(token) = &seen {
                self.catch_up(view, &key, token, r, deadline).await;
            }
            (true, seen)
        };
        let (set, dot) = write::replicated_write(
            &self.inner,
            view,
            key,
            seen,
            payload,
            w,
            (started, deadline),
        )
        .await?;
        Ok(Written {
            found,
            set,
            dot: Some(dot),
        })
    }

    /// Before a write with a token that claims more than this replica has seen, reads the
    /// key at R and merges what the quorum holds here.
    ///
    /// The writer clamps a token to this replica's context (see
    /// `SiblingSet::update_above`): that keeps forged claims harmless, but an honest token
    /// read at replicas that are ahead of this one (replication lag) would then leave the
    /// versions it did see as siblings. Catching up first lets it supersede them. A forged
    /// token costs one extra read, and finds nothing more to supersede. Best-effort: if the
    /// read fails, the write goes on, clamped, which is safe.
    async fn catch_up(
        &self,
        view: &Arc<ClusterView>,
        key: &Key,
        token: &VersionVector,
        r: usize,
        deadline: tokio::time::Instant,
    ) {
        let behind = match self.inner.local.read(key) {
            Ok(set) => !set.unwrap_or_default().context().descends(token),
            Err(_) => false,
        };
        if !behind {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read::quorum_read(&self.inner, view, key, r, left).await {
            Ok(Some(set)) => {
                if let Err(e) = self.inner.local.merge(key.clone(), set).await {
                    tracing::debug!(key = %key, error = %e, "catching up before a write failed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(key = %key, error = %e, "catch-up read before a write failed")
            }
        }
    }

    async fn forward(
        &self,
        view: &ClusterView,
        prefs: &[NodeId],
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        opts: &RequestOpts,
    ) -> Result<Written, CoordError> {
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let request = ForwardedWrite {
            key: key.as_str().to_owned(),
            seen,
            payload,
            w: opts.w,
            timeout_ms: opts.timeout.as_millis() as u64,
        };
        let mut tried = 0;
        for id in prefs
            .iter()
            .filter(|id| **id != view.self_id && view.takes_writes(**id))
        {
            let Some(member) = view.member(*id) else {
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tried += 1;
            self.inner.stats.forwarded.inc();
            match self
                .inner
                .peers
                .rpc
                .call(member.rpc_addr, Request::Forward(request.clone()), left)
                .await
            {
                Ok(Response::Written { found, set, dot }) => {
                    return Ok(Written { found, set, dot })
                }
                Ok(Response::Error(e)) => return Err(CoordError::Remote(e)),
                Ok(other) => {
                    tracing::warn!(peer = %id, ?other, "unexpected answer to a forwarded write");
                }
                // Only a write that surely never arrived may go to the next replica: one
                // that timed out or lost its connection may have been applied there, and
                // a second coordinator would store the same value again as a sibling.
                Err(RpcError::Connect(e)) => {
                    tracing::debug!(peer = %id, error = %e, "forwarding failed; trying the next replica");
                }
                Err(e) => {
                    tracing::debug!(peer = %id, error = %e, "forwarded write unanswered; it may still apply");
                    return Err(CoordError::QuorumFailed {
                        needed: 1,
                        replied: 0,
                        failed: tried,
                        write: true,
                    });
                }
            }
        }
        Err(CoordError::QuorumFailed {
            needed: 1,
            replied: 0,
            failed: tried,
            write: true,
        })
    }

    /// A page of live keys in a range, merged across every healthy member: at most
    /// `limit` keys, `scan_budget` keys scanned per member, and `max_bytes` of values.
    pub async fn list(
        &self,
        range: &ListRange,
        limit: usize,
        scan_budget: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Page, CoordError> {
        let bounds = list::PageBounds {
            limit,
            scan_rows: scan_budget,
            max_bytes,
        };
        let page = list::merged_page(&self.inner, &self.view(), range, bounds, timeout).await;
        counted(&self.inner.stats.quorum_failures.list, page)
    }

    /// The peers this coordinator calls: the RPC client's latencies are exported from it.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }
}

/// Counts `result` in `missed` when it missed its quorum: too few replicas answered (for
/// a listing: some ranges had none), or the time ran out. Other errors are not quorum
/// failures (a bad request, a node not joined, a storage error).
fn counted<T>(missed: &Missed, result: Result<T, CoordError>) -> Result<T, CoordError> {
    match &result {
        Err(CoordError::QuorumFailed { .. } | CoordError::ListingIncomplete { .. }) => {
            missed.unavailable.inc()
        }
        Err(CoordError::Timeout { .. }) => missed.timeout.inc(),
        _ => {}
    }
    result
}

impl CoordinatorParts {
    fn policy(&self) -> ReplicationPolicy {
        self.config.replication
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use async_trait::async_trait;
    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cluster::membership::{Member, MemberState};
    use crate::cluster::ring::Ring;
    use crate::kv::writer::{self, WriterSettings};
    use crate::kv::HintLedger;
    use crate::net::{SystemClock, TokioNetwork};
    use crate::rpc::client::RpcClient;
    use crate::rpc::frame::{RpcConfig, RpcStats};
    use crate::rpc::server::RpcHandler;
    use crate::store::{MemoryStore, Store};

    /// A replica that answers reads and merges, after `delay`.
    struct Replica {
        delay: Duration,
    }

    #[async_trait]
    impl RpcHandler for Replica {
        async fn handle(&self, request: Request) -> Response {
            tokio::time::sleep(self.delay).await;
            match request {
                Request::Read { .. } => Response::Read(None),
                Request::Merge { .. } => Response::Merged,
                _ => Response::Error(RemoteError::Internal("not in this test".into())),
            }
        }
    }

    async fn replica(delay: Duration, shutdown: CancellationToken) -> SocketAddr {
        crate::rpc::server::serve_on_loopback(Arc::new(Replica { delay }), shutdown).await
    }

    fn member(id: u64, rpc_addr: SocketAddr) -> Member {
        let unused = SocketAddr::from(([127, 0, 0, 1], 9));
        Member {
            id: NodeId(id),
            http_addr: unused,
            rpc_addr,
            gossip_addr: unused,
            state: MemberState::Normal,
            live: true,
            vnodes: 16,
            to_move: None,
            writable: true,
        }
    }

    /// Node 1 with replicas 2 (prompt) and 3 (answers after 3 s), N = R = W = 3.
    async fn three_nodes(shutdown: &CancellationToken) -> Coordinator {
        let fast = replica(Duration::ZERO, shutdown.clone()).await;
        let slow = replica(Duration::from_secs(3), shutdown.clone()).await;
        let members: BTreeMap<NodeId, Member> = [
            member(1, SocketAddr::from(([127, 0, 0, 1], 9))),
            member(2, fast),
            member(3, slow),
        ]
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
        let ring = Arc::new(Ring::new(members.keys().copied(), 16));
        let view = ClusterView {
            self_id: NodeId(1),
            members,
            departed: BTreeSet::new(),
            write_ring: ring.clone(),
            ring,
            rejoining: false,
            disagreements: Vec::new(),
        };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hints = Arc::new(HintLedger::default());
        let tree: crate::kv::summary::SharedTree = Arc::default();
        let (writer, _task) = writer::spawn(
            store.clone(),
            WriterSettings {
                max_hint_bytes: 1 << 20,
                ..WriterSettings::for_test(tree.clone(), hints.clone())
            },
            shutdown.clone(),
        );
        let (_tx, view) = tokio::sync::watch::channel(Arc::new(view));
        Coordinator::new(CoordinatorParts {
            peers: Peers {
                view,
                rpc: Arc::new(RpcClient::new(
                    crate::rpc::connector_for(Arc::new(TokioNetwork)),
                    RpcConfig::default(),
                    Arc::new(RpcStats::default()),
                )),
                clock: Arc::new(SystemClock),
                rpc_timeout: Duration::from_secs(5),
            },
            local: LocalKv::new(store, writer, hints, tree),
            stats: Arc::new(ReplicationStats::default()),
            config: CoordinatorConfig {
                replication: Replication { n: 3, r: 3, w: 3 }.into(),
                repair_wait: Duration::from_millis(10),
            },
            latencies: PeerLatencies::default(),
            repair_chance: RepairChance::new(0.0, Some(1)),
        })
    }

    /// A request that times out says how long it ran and how many replicas had answered:
    /// this node and the prompt replica, not the slow one.
    #[tokio::test]
    async fn a_timeout_reports_the_time_taken_and_the_replies_that_came() {
        let shutdown = CancellationToken::new();
        let coordinator = three_nodes(&shutdown).await;
        let opts = RequestOpts {
            r: None,
            w: None,
            timeout: Duration::from_millis(300),
        };
        let key = Key::new("k").unwrap();
        let payload = Payload::Value {
            data: Bytes::from_static(b"v"),
            content_type: "text/plain".into(),
        };
        let wrote = coordinator.put(key.clone(), None, payload, &opts).await;
        let read = coordinator.get(&key, &opts).await;
        for (result, write) in [(wrote.map(|_| ()), true), (read.map(|_| ()), false)] {
            let Err(e) = result else {
                panic!("no timeout (write: {write})")
            };
            let message = e.to_string();
            match e {
                CoordError::Timeout {
                    after_ms,
                    needed,
                    replied,
                    write: w,
                } => {
                    assert!((300..3000).contains(&after_ms), "{message}");
                    assert_eq!((needed, replied, w), (3, 2, write), "{message}");
                }
                other => panic!("not a timeout: {other:?}"),
            }
            assert!(
                message.starts_with("timed out after ")
                    && message.contains("3 replica(s) needed, 2 replied"),
                "{message}"
            );
        }
        shutdown.cancel();
    }
}
