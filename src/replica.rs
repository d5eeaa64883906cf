//! The replica side of the internode protocol: what this node does when a peer calls it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::cluster::NodeId;
use crate::coordinator::{CoordError, Coordinator, ListRange};
use crate::key::Key;
use crate::kv::KvError;
use crate::net::Clock;
use crate::rpc::server::RpcHandler;
use crate::rpc::{RemoteError, Request, Response, ScanRange};
use crate::stats::ReplicationStats;

pub struct ReplicaService {
    pub node_id: NodeId,
    pub coordinator: Coordinator,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<ReplicationStats>,
    /// Bound on the rows one `Scan` may return.
    pub max_scan_rows: usize,
}

/// Intervals one `Summaries` call may ask about.
const MAX_INTERVALS: usize = 4096;

fn bad_key(e: impl std::fmt::Display) -> Response {
    Response::Error(RemoteError::BadRequest(format!("bad key: {e}")))
}

fn kv_error(e: KvError) -> Response {
    match e {
        KvError::SiblingLimit { limit } => Response::Error(RemoteError::SiblingLimit { limit }),
        KvError::ShuttingDown => Response::Error(RemoteError::Unavailable(e.to_string())),
        KvError::NoSpace(m) => Response::Error(RemoteError::NoSpace(m)),
        other => Response::Error(RemoteError::Internal(other.to_string())),
    }
}

impl From<CoordError> for RemoteError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Kv(KvError::SiblingLimit { limit }) => RemoteError::SiblingLimit { limit },
            CoordError::Remote(r) => r,
            CoordError::Kv(KvError::Store(m)) => RemoteError::Internal(m),
            CoordError::Kv(KvError::NoSpace(m)) => RemoteError::NoSpace(m),
            other => RemoteError::Unavailable(other.to_string()),
        }
    }
}

#[async_trait]
impl RpcHandler for ReplicaService {
    async fn handle(&self, request: Request) -> Response {
        let local = self.coordinator.local();
        match request {
            Request::Ping => Response::Pong {
                node_id: self.node_id.0,
            },
            Request::Departed { node } => {
                Response::Departed(self.coordinator.view().departed.contains(&NodeId(node)))
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
                let sums: Result<Vec<_>, _> = intervals
                    .into_iter()
                    .take(MAX_INTERVALS)
                    .map(|iv| local.summary(iv))
                    .collect();
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
                let limit = limit.clamp(1, self.max_scan_rows);
                match local.digests(interval, after.as_ref(), limit) {
                    Ok((rows, more)) => Response::Digests {
                        entries: rows
                            .into_iter()
                            .map(|(k, d)| (k.as_str().to_owned(), d))
                            .collect(),
                        more,
                    },
                    Err(e) => kv_error(e),
                }
            }
            Request::ReadMany { keys } => {
                let mut out = Vec::with_capacity(keys.len().min(self.max_scan_rows));
                for key in keys.into_iter().take(self.max_scan_rows) {
                    let k = match Key::new(key) {
                        Ok(k) => k,
                        Err(e) => return bad_key(e),
                    };
                    match local.read(&k) {
                        Ok(set) => out.push((k.as_str().to_owned(), set)),
                        Err(e) => return kv_error(e),
                    }
                }
                Response::ReadMany(out)
            }
            Request::DropIfDigest { entries } => {
                let mut dropped = 0;
                for (key, digest) in entries.into_iter().take(self.max_scan_rows) {
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

impl ReplicaService {
    fn scan(&self, range: ScanRange) -> Response {
        let list = ListRange {
            start: range.start.map(String::into_bytes),
            start_exclusive: range.start_exclusive,
            end: range.end.map(String::into_bytes),
        };
        let limit = range.limit.clamp(1, self.max_scan_rows);
        let (start, end) = list.bounds();
        match self.coordinator.local().scan(start, end, limit + 1) {
            Ok(mut rows) => {
                let more = rows.len() > limit;
                rows.truncate(limit);
                Response::Scanned {
                    entries: rows
                        .into_iter()
                        .map(|(k, s)| (k.as_str().to_owned(), s))
                        .collect(),
                    more,
                }
            }
            Err(e) => kv_error(e),
        }
    }
}
