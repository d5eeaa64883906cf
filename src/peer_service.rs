//! Answers peers' RPCs: what this node does when a peer calls it. Reads, merges, hints,
//! scans and anti-entropy comparisons go to this node's replica ([`LocalKv`]); only a
//! forwarded write goes to the coordinator, which coordinates it here.
//! Requests arrive already clamped into their bounds (`rpc::bounds::admit`), and are
//! checked against this node's limits (`rpc::bounds::check`) before anything else, each
//! refusal counted; replies that carry many rows stop at a byte budget (`rpc::batch`) and
//! say there is more.

use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::cluster::membership::ClusterView;
use crate::cluster::NodeId;
use crate::coordinator::Coordinator;
use crate::key::Key;
use crate::kv::{KvError, ListRange, LocalKv};
use crate::net::Clock;
use crate::rpc::batch::{encoded_len, BatchLimit, Batcher};
use crate::rpc::bounds::{self, PeerLimits};
use crate::rpc::server::RpcHandler;
use crate::rpc::{RemoteError, Request, Response, ScanRange};
use crate::stats::ReplicationStats;

pub struct PeerService {
    pub node_id: NodeId,
    /// This node's replica: what peers read, merge into, scan and compare.
    pub local: LocalKv,
    /// Departures, and whether this node is still rejoining (see [`Self::rejoin_gate`]).
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Only for writes forwarded here: they are coordinated, not merely stored.
    pub coordinator: Coordinator,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<ReplicationStats>,
    /// A node the cluster removed refuses data requests (see [`Self::fenced`]).
    pub readiness: Arc<crate::readiness::Readiness>,
    /// How much one reply of many rows (`Scan`, `Digests`, `ReadMany`) may carry.
    pub batch: BatchLimit,
    /// What a peer's request is held to (`--max-value-bytes`, `--max-siblings`).
    pub limits: PeerLimits,
}

fn bad_key(e: impl std::fmt::Display) -> Response {
    Response::Error(RemoteError::BadRequest(format!("bad key: {e}")))
}

/// A local storage failure, as the peer sees it (the table is in `rpc::remote_error`).
fn kv_error(e: KvError) -> Response {
    Response::Error(e.into())
}

#[async_trait]
impl RpcHandler for PeerService {
    async fn handle(&self, request: Request) -> Response {
        let request = match bounds::check(request, &self.limits) {
            Ok(request) => request,
            Err(e) => return self.refused(e),
        };
        if self.fenced(&request) {
            return Response::Error(RemoteError::Unavailable(format!(
                "node {} was removed from the cluster and serves no data",
                self.node_id
            )));
        }
        let local = &self.local;
        if let Some(refused) = self.rejoin_gate(&request) {
            return refused;
        }
        match request {
            Request::Ping => Response::Pong {
                node_id: self.node_id.0,
            },
            Request::Departed { node } => {
                Response::Departed(self.view.borrow().departed.contains(&NodeId(node)))
            }
            Request::Read { key } => match Key::new(key) {
                Err(e) => bad_key(e),
                Ok(key) => match local.read(&key) {
                    Ok(set) => Response::Read(set),
                    Err(e) => kv_error(e),
                },
            },
            Request::Merge { entries } => {
                let mut keyed = Vec::with_capacity(entries.len());
                for (key, set) in entries {
                    match Key::new(key) {
                        Ok(k) => keyed.push((k, set)),
                        Err(e) => return bad_key(e),
                    }
                }
                // Submitted together, they share one commit.
                let results =
                    futures::future::join_all(keyed.into_iter().map(|(k, s)| local.merge(k, s)))
                        .await;
                match results.into_iter().find_map(Result::err) {
                    None => Response::Merged,
                    Some(e) => kv_error(e),
                }
            }
            Request::Hint { target, key, set } => match Key::new(key) {
                Err(e) => bad_key(e),
                Ok(key) => match local
                    .store_hint(target, key, set, self.clock.now_ms())
                    .await
                {
                    Ok(true) => {
                        self.stats.hints_stored.inc();
                        Response::HintStored
                    }
                    Ok(false) => {
                        self.stats.hints_refused.inc();
                        Response::HintRefused {
                            reason: format!("hints for {} are at --max-hint-bytes", NodeId(target)),
                        }
                    }
                    Err(e) => kv_error(e),
                },
            },
            Request::Forward(fw) => match self.coordinator.forwarded(fw).await {
                Ok(w) => Response::Written {
                    found: w.found,
                    set: w.set,
                    dot: w.dot,
                },
                Err(e) => Response::Error(e.into()),
            },
            Request::Scan(range) => self.scan(range),
            Request::Summaries { intervals } => {
                let sums: Result<Vec<_>, _> =
                    intervals.into_iter().map(|iv| local.summary(iv)).collect();
                sums.map_or_else(kv_error, Response::Summaries)
            }
            Request::Digests {
                interval,
                after,
                limit,
            } => {
                let after = match after.map(Key::new).transpose() {
                    Ok(a) => a,
                    Err(e) => return bad_key(e),
                };
                match local.digests(interval, after.as_ref(), limit) {
                    Ok((rows, more)) => {
                        let rows = rows.into_iter().map(|(k, d)| (k.as_str().to_owned(), d));
                        let (entries, cut) = self.fill(rows);
                        Response::Digests {
                            entries,
                            more: more || cut,
                        }
                    }
                    Err(e) => kv_error(e),
                }
            }
            Request::ReadMany { keys } => {
                let mut batcher = Batcher::new(self.batch);
                for key in keys {
                    let k = match Key::new(key) {
                        Ok(k) => k,
                        Err(e) => return bad_key(e),
                    };
                    let entry = match local.read(&k) {
                        Ok(set) => (k.as_str().to_owned(), set),
                        Err(e) => return kv_error(e),
                    };
                    let size = encoded_len(&entry);
                    // The first key that does not fit ends the reply; the caller asks
                    // again from there. The first key always fits, however large.
                    if batcher.would_close(size) {
                        return Response::ReadMany {
                            entries: batcher.take().unwrap_or_default(),
                            more: true,
                        };
                    }
                    batcher.push(entry, size);
                }
                Response::ReadMany {
                    entries: batcher.take().unwrap_or_default(),
                    more: false,
                }
            }
            Request::DropIfDigest { entries } => {
                let mut dropped = 0;
                for (key, digest) in entries {
                    let k = match Key::new(key) {
                        Ok(k) => k,
                        Err(e) => return bad_key(e),
                    };
                    match local.drop_if_digest(k, digest).await {
                        Ok(true) => dropped += 1,
                        Ok(false) => {}
                        Err(e) => return kv_error(e),
                    }
                }
                Response::Dropped(dropped)
            }
        }
    }
}

impl PeerService {
    /// A request [`bounds::check`] refused: counted, and logged at warn on the 1st, 2nd,
    /// 4th, 8th... refusal, so a peer that sends nothing else cannot flood the log.
    fn refused(&self, e: RemoteError) -> Response {
        self.stats.peer_requests_refused.inc();
        let n = self.stats.peer_requests_refused.get();
        if n.is_power_of_two() {
            tracing::warn!(refused = n, error = %e, "refused a peer's request that no correct node sends");
        } else {
            tracing::debug!(refused = n, error = %e, "refused a peer's request");
        }
        Response::Error(e)
    }

    /// Whether to refuse `request` because this node was removed: every read or write of
    /// data. A peer that has not heard of the removal yet would otherwise count this
    /// node's answer toward its quorum. Pings, departure questions and the anti-entropy
    /// comparisons still answer; they store nothing and serve no client.
    fn fenced(&self, request: &Request) -> bool {
        self.readiness.is_removed()
            && matches!(
                request,
                Request::Read { .. }
                    | Request::Merge { .. }
                    | Request::Hint { .. }
                    | Request::Forward(_)
                    | Request::Scan(_)
                    | Request::ReadMany { .. }
            )
    }

    /// The leading rows that fit one reply, and whether any were left out.
    fn fill<T: serde::Serialize>(&self, rows: impl IntoIterator<Item = T>) -> (Vec<T>, bool) {
        let mut batcher = Batcher::new(self.batch);
        for row in rows {
            let size = encoded_len(&row);
            if batcher.would_close(size) {
                return (batcher.take().unwrap_or_default(), true);
            }
            batcher.push(row, size);
        }
        (batcher.take().unwrap_or_default(), false)
    }

    /// A node still rejoining (see `cluster::agreement`) answers no read as a replica and
    /// coordinates no forwarded write: its ring is not confirmed, and a read of keys it
    /// holds but cannot yet place would look like "not found" to the coordinator. Writes
    /// it is sent (merges, hints) it takes: storing more never loses anything.
    fn rejoin_gate(&self, request: &Request) -> Option<Response> {
        let gated = matches!(
            request,
            Request::Read { .. }
                | Request::ReadMany { .. }
                | Request::Scan(_)
                | Request::Forward(_)
        );
        (gated && self.view.borrow().rejoining).then(|| {
            Response::Error(RemoteError::Unavailable(
                "node is rejoining: its ring is not confirmed yet".to_owned(),
            ))
        })
    }

    /// Up to `range.limit` keys, read a page at a time so that no more than one reply's
    /// worth of large sets is held in memory, and cut at the reply's byte budget: the
    /// smaller of the caller's `max_bytes` and the frame's batch budget.
    fn scan(&self, range: ScanRange) -> Response {
        let list = ListRange {
            start: range.start.map(String::into_bytes),
            start_exclusive: range.start_exclusive,
            end: range.end.map(String::into_bytes),
        };
        let (start, end) = list.bounds();
        let limit = BatchLimit {
            max_bytes: range.max_bytes.min(self.batch.max_bytes),
            max_items: self.batch.max_items,
        };
        let mut batcher = Batcher::new(limit);
        let mut after: Option<Key> = None;
        loop {
            if batcher.len() >= range.limit {
                // Only reached after a page that said it had more.
                return scanned(&mut batcher, true);
            }
            let lower = after
                .as_ref()
                .map_or(start, |k| Bound::Excluded(k.as_bytes()));
            let want = range.limit.saturating_sub(batcher.len()).min(SCAN_PAGE);
            let budget = limit.max_bytes.saturating_sub(batcher.bytes());
            let page = match self.local.scan(lower, end, want, budget) {
                Ok(page) => page,
                Err(e) => return kv_error(e),
            };
            for (key, set) in page.rows {
                let entry = (key.as_str().to_owned(), set);
                let size = encoded_len(&entry);
                if batcher.would_close(size) {
                    return scanned(&mut batcher, true);
                }
                batcher.push(entry, size);
                after = Some(key);
            }
            if !page.more {
                return scanned(&mut batcher, false);
            }
        }
    }
}

/// Rows read from the store at once by a `Scan`.
const SCAN_PAGE: usize = 64;

fn scanned(batcher: &mut Batcher<(String, crate::version::SiblingSet)>, more: bool) -> Response {
    Response::Scanned {
        entries: batcher.take().unwrap_or_default(),
        more,
    }
}
