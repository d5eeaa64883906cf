//! Quorum reads and read repair.
//!
//! A read asks R replicas, not all N: this node first when it is one, then the peers
//! [`PeerLatencies`] ranks fastest. It asks one more only when a reply fails, or when the
//! ones asked are slower than the speculative-retry delay (their high latency estimate,
//! clamped between a floor and the RPC timeout). R = N asks every replica, and so does a
//! read drawn by `--read-repair-chance` (the way Cassandra and Riak do): that is what lets
//! read repair find a stale replica that ordinary reads do not ask. Anti-entropy covers
//! the rest.
//!
//! The calls run in the request's own task (`FuturesUnordered`, no task per replica). The
//! answer goes back as soon as R replied. A background task is spawned only when there is
//! work left: replicas to repair (every reply that lacks something the merge has), or, on
//! a read that asked everyone, the slower replies still to collect for repair.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::latency::PeerLatencies;
use super::{CoordError, CoordinatorParts as Inner};
use crate::cluster::membership::ClusterView;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::quorum::Tracker;
use crate::rpc::{Request, Response};
use crate::version::SiblingSet;

type Reply = (NodeId, Result<Option<SiblingSet>, String>);
type Replies = Vec<(NodeId, Option<SiblingSet>)>;
type InFlight = FuturesUnordered<BoxFuture<'static, Reply>>;

/// The share of reads that ask every replica (`--read-repair-chance`), drawn from the
/// node's seeded RNG so that a simulation seed replays the same reads.
#[derive(Debug)]
pub struct RepairChance {
    chance: f64,
    // A std mutex: held for one draw, never across an await.
    rng: Mutex<StdRng>,
}

impl RepairChance {
    /// `chance` outside `0.0..=1.0` (or NaN) is clamped into it; the CLI refuses such
    /// values before they get here.
    pub fn new(chance: f64, seed: Option<u64>) -> Self {
        let chance = if chance.is_nan() {
            0.0
        } else {
            chance.clamp(0.0, 1.0)
        };
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ 0x7265_6164_7265_7061),
            None => StdRng::from_entropy(),
        };
        RepairChance {
            chance,
            rng: Mutex::new(rng),
        }
    }

    /// Whether this read asks every replica.
    pub fn roll(&self) -> bool {
        if self.chance <= 0.0 {
            return false;
        }
        if self.chance >= 1.0 {
            return true;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.gen_bool(self.chance)
    }
}

pub(super) async fn quorum_read(
    inner: &Arc<Inner>,
    view: &Arc<ClusterView>,
    key: &Key,
    r: usize,
    timeout: Duration,
) -> Result<Option<SiblingSet>, CoordError> {
    let prefs = inner.policy().read_nodes(view, key.as_bytes());
    let healthy: Vec<NodeId> = prefs
        .iter()
        .copied()
        .filter(|id| view.is_healthy(*id))
        .collect();
    if healthy.len() < r {
        // Fail fast: waiting cannot help while the failure detector says they are down.
        return Err(CoordError::QuorumFailed {
            needed: r,
            replied: 0,
            failed: prefs.len() - healthy.len(),
            write: false,
        });
    }
    // Only this node's copy is wanted: no call at all.
    if healthy == [view.self_id] {
        return Ok(inner.local.read(key)?);
    }
    let started = Instant::now();
    let all = r >= healthy.len() || inner.repair_chance.roll();
    let mut round = Round::new(inner, view, key, r, order(inner, view.self_id, healthy));
    let first = if all { round.untried.len() } else { r };
    if all {
        inner.stats.reads_asking_all.inc();
    }
    let asked: Vec<NodeId> = round.untried.iter().take(first).copied().collect();
    for _ in 0..first {
        round.launch();
    }
    let delay = inner
        .latencies
        .speculative_delay(&asked, inner.peers.rpc_timeout);
    let deadline = started + timeout;
    let mut speculate_at = started + delay;
    while !round.tracker.is_met() {
        while round.tracker.is_lost() && !round.untried.is_empty() {
            round.launch();
        }
        if round.tracker.is_lost() {
            return Err(CoordError::QuorumFailed {
                needed: r,
                replied: round.tracker.succeeded(),
                failed: round.tracker.failed(),
                write: false,
            });
        }
        tokio::select! {
            reply = round.in_flight.next() => match reply {
                Some(reply) => {
                    if !round.record(reply) {
                        // A failed replica is replaced at once, if one is left.
                        round.launch();
                    }
                }
                None => round.launch(),
            },
            _ = tokio::time::sleep_until(speculate_at), if !round.untried.is_empty() => {
                tracing::debug!(key = %key, after = ?delay, "speculative read retry");
                inner.stats.read_speculative_retries.inc();
                round.launch();
                speculate_at = Instant::now() + delay;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(CoordError::timed_out(started, r, round.tracker.succeeded(), false));
            }
        }
    }
    let merged = merge(&round.replies);
    let Round {
        in_flight, replies, ..
    } = round;
    let stale = merged
        .as_ref()
        .is_some_and(|m| replies.iter().any(|(_, s)| !is_current(s, m)));
    if all && !in_flight.is_empty() {
        // A read that asked everyone is for repair: the slower replies are the point.
        let until = started + inner.peers.rpc_timeout + inner.config.repair_wait;
        tokio::spawn(crate::telemetry::carry(collect_and_repair(
            inner.clone(),
            view.clone(),
            key.clone(),
            in_flight,
            replies,
            until,
        )));
    } else if stale {
        // Calls still in flight (a speculative retry's straggler) are dropped: whatever
        // they would show, anti-entropy repairs.
        let (inner, view, key) = (inner.clone(), view.clone(), key.clone());
        tokio::spawn(crate::telemetry::carry(async move {
            repair(&inner, &view, &key, &replies).await
        }));
    }
    Ok(merged)
}

/// This node first (its read costs no message), then the peers fastest first.
fn order(inner: &Inner, self_id: NodeId, healthy: Vec<NodeId>) -> VecDeque<NodeId> {
    let mut peers: Vec<NodeId> = healthy
        .iter()
        .copied()
        .filter(|id| *id != self_id)
        .collect();
    inner.latencies.rank(&mut peers);
    let mut order = VecDeque::with_capacity(healthy.len());
    if healthy.contains(&self_id) {
        order.push_back(self_id);
    }
    order.extend(peers);
    order
}

/// One read's calls: who is left to ask, what is in flight, what came back.
struct Round<'a> {
    inner: &'a Arc<Inner>,
    view: &'a ClusterView,
    key: &'a Key,
    untried: VecDeque<NodeId>,
    in_flight: InFlight,
    tracker: Tracker<NodeId>,
    replies: Replies,
}

impl<'a> Round<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        view: &'a ClusterView,
        key: &'a Key,
        r: usize,
        untried: VecDeque<NodeId>,
    ) -> Self {
        Round {
            inner,
            view,
            key,
            tracker: Tracker::new(r, 0),
            in_flight: FuturesUnordered::new(),
            replies: Vec::with_capacity(untried.len()),
            untried,
        }
    }

    /// Asks the next replica, if one is left.
    fn launch(&mut self) {
        let Some(id) = self.untried.pop_front() else {
            return;
        };
        self.tracker.retry();
        let inner = self.inner.clone();
        let key = self.key.clone();
        let call: BoxFuture<'static, Reply> = if id == self.view.self_id {
            // Polled after the calls pushed before it (the queue is FIFO), so the peers'
            // requests are on their way while this one reads the local copy.
            Box::pin(async move { (id, inner.local.read(&key).map_err(|e| e.to_string())) })
        } else {
            match self.view.member(id).map(|m| m.rpc_addr) {
                None => Box::pin(async move { (id, Err("not a member".to_owned())) }),
                Some(addr) => {
                    self.inner.stats.read_rpcs_sent.inc();
                    Box::pin(ask_peer(inner, id, addr, key))
                }
            }
        };
        self.in_flight.push(call);
    }

    /// Counts a reply; false when it failed.
    fn record(&mut self, (id, result): Reply) -> bool {
        match result {
            Ok(set) => {
                self.tracker.success(id);
                self.replies.push((id, set));
                true
            }
            Err(e) => {
                tracing::debug!(peer = %id, error = %e, key = %self.key, "replica read failed");
                self.tracker.failure();
                false
            }
        }
    }
}

/// One peer's copy, timed for its latency estimate.
async fn ask_peer(inner: Arc<Inner>, id: NodeId, addr: std::net::SocketAddr, key: Key) -> Reply {
    let mut timing = Timing {
        latencies: &inner.latencies,
        id,
        started: Instant::now(),
        done: false,
    };
    let request = Request::Read {
        key: key.as_str().to_owned(),
    };
    let result = inner.peers.call(addr, request).await;
    timing.done = true;
    let result = match result {
        Ok(Response::Read(set)) => {
            inner.latencies.observe(id, timing.started.elapsed());
            Ok(set)
        }
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    };
    if result.is_err() {
        inner.latencies.observe_failure(id, inner.peers.rpc_timeout);
    }
    (id, result)
}

/// Tells the estimates about a call dropped before its reply (the read was answered
/// without it): that peer took at least this long.
struct Timing<'a> {
    latencies: &'a PeerLatencies,
    id: NodeId,
    started: Instant,
    done: bool,
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.latencies
                .observe_at_least(self.id, self.started.elapsed());
        }
    }
}

/// After a read that asked everyone answered: the remaining replies, for a bounded time,
/// then the repair of every replica that replied with less than the merge.
async fn collect_and_repair(
    inner: Arc<Inner>,
    view: Arc<ClusterView>,
    key: Key,
    mut in_flight: InFlight,
    mut replies: Replies,
    until: Instant,
) {
    while let Ok(Some((id, result))) = tokio::time::timeout_at(until, in_flight.next()).await {
        match result {
            Ok(set) => replies.push((id, set)),
            Err(e) => tracing::debug!(peer = %id, error = %e, key = %key, "replica read failed"),
        }
    }
    repair(&inner, &view, &key, &replies).await;
}

/// Whether a replica's reply already holds everything in the merge.
fn is_current(reply: &Option<SiblingSet>, merged: &SiblingSet) -> bool {
    reply.as_ref().is_some_and(|s| s.descends(merged))
}

/// DVV sync of every reply: what the quorum holds, siblings included.
fn merge(replies: &[(NodeId, Option<SiblingSet>)]) -> Option<SiblingSet> {
    replies
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .fold(None, |acc: Option<SiblingSet>, s| {
            Some(match acc {
                None => s.clone(),
                Some(a) => a.sync(s),
            })
        })
}

/// Pushes the merged set to every replica that replied with less than it.
async fn repair(
    inner: &Arc<Inner>,
    view: &ClusterView,
    key: &Key,
    replies: &[(NodeId, Option<SiblingSet>)],
) {
    let Some(merged) = merge(replies) else { return };
    for (id, set) in replies {
        if is_current(set, &merged) {
            continue;
        }
        let repaired = if *id == view.self_id {
            inner.local.merge(key.clone(), merged.clone()).await.is_ok()
        } else if let Some(m) = view.member(*id) {
            let request = Request::Merge {
                entries: vec![(key.as_str().to_owned(), merged.clone())],
            };
            matches!(
                inner.peers.call(m.rpc_addr, request).await,
                Ok(Response::Merged)
            )
        } else {
            false
        };
        if repaired {
            inner.stats.read_repairs.inc();
            tracing::debug!(peer = %id, key = %key, "read repair");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chance_is_bounded_and_seeded() {
        assert!(!(0..1000).any(|_| RepairChance::new(0.0, Some(1)).roll()));
        assert!((0..1000).all(|_| RepairChance::new(1.0, Some(1)).roll()));
        assert!(!RepairChance::new(f64::NAN, None).roll());
        let c = RepairChance::new(0.1, Some(7));
        let hits = (0..10_000).filter(|_| c.roll()).count();
        assert!((800..1200).contains(&hits), "{hits} of 10000 at 0.1");
        let a = RepairChance::new(0.5, Some(3));
        let b = RepairChance::new(0.5, Some(3));
        let draws = |c: &RepairChance| (0..64).map(|_| c.roll()).collect::<Vec<_>>();
        assert_eq!(draws(&a), draws(&b), "one seed, one sequence");
    }
}
