//! One anti-entropy exchange between this node and a peer over a set of ring intervals.
//!
//! Both sides summarise each interval (hash and count, `merkle`). Where the summaries
//! agree, nothing more is sent. Where they differ, the interval is split in
//! [`FANOUT`] and the parts compared, down to parts small enough to list: then the two
//! sides' key digests are compared and only the keys that differ move, in both
//! directions, each side merging with DVV sync. Both end with the same sets.
//!
//! Keys move in calls cut by bytes (`rpc::batch`): a `ReadMany` reply stops at its byte
//! budget and this side asks again for the rest; pushes are built by the batcher as the
//! sets are read, so no call exceeds a frame however large the values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::key::Key;
use crate::kv::{KvError, LocalKv};
use crate::merkle::{Interval, Summary};
use crate::rpc::batch::{self, encoded_len, BatchLimit, Batcher};
use crate::rpc::client::{RpcClient, RpcError};
use crate::rpc::{RemoteError, Request, Response};
use crate::version::SiblingSet;

/// Parts an interval splits into when its summaries differ.
const FANOUT: usize = 16;
/// An interval with at most this many keys on both sides is listed, not split further.
const LIST_BELOW: u64 = 256;
/// Keys listed per `Digests` call (their replies are small: a key and a digest each).
const BATCH: usize = 512;
/// Intervals summarised in one call.
const SUMMARY_BATCH: usize = 256;
// Summaries are a few dozen bytes per interval, so a count bounds their bytes too; the
// count must stay within what a peer admits.
const _: () = assert!(SUMMARY_BATCH <= crate::rpc::bounds::MAX_INTERVALS);
const _: () = assert!(BATCH <= crate::rpc::bounds::MAX_SCAN_ROWS);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exchanged {
    /// Keys this node took from the peer.
    pub pulled: u64,
    /// Keys this node sent to the peer.
    pub pushed: u64,
    /// Intervals whose summaries differed.
    pub differing: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The call did not get through or got no reply.
    #[error("peer call failed: {0}")]
    Rpc(#[from] RpcError),
    /// The peer answered with an error of its own.
    #[error("peer refused: {0}")]
    Remote(#[from] RemoteError),
    /// The peer answered, but not what was asked: a broken or forged peer.
    #[error("peer's answer breaks the protocol: {0}")]
    BadAnswer(String),
    #[error("local store: {0}")]
    Local(#[from] KvError),
    /// The node is stopping: the exchange ends between two calls.
    #[error("stopped: the node is shutting down")]
    Cancelled,
}

pub struct Peer<'a> {
    pub rpc: &'a RpcClient,
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// How much one `ReadMany` or `Merge` carries.
    pub limit: BatchLimit,
    /// Every call of the exchange goes through [`Peer::call`], which watches this: a
    /// catch-up over many ranges is many calls, and must not hold up a node that stops.
    pub shutdown: &'a CancellationToken,
}

impl Peer<'_> {
    async fn call(&self, request: Request) -> Result<Response, ExchangeError> {
        let answer = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(ExchangeError::Cancelled),
            answer = self.rpc.call(self.addr, request, self.timeout) => answer,
        };
        match answer {
            Ok(Response::Error(e)) => Err(e.into()),
            Ok(r) => Ok(r),
            Err(e) => Err(e.into()),
        }
    }

    async fn summaries(&self, intervals: &[Interval]) -> Result<Vec<Summary>, ExchangeError> {
        match self
            .call(Request::Summaries {
                intervals: intervals.to_vec(),
            })
            .await?
        {
            Response::Summaries(s) if s.len() == intervals.len() => Ok(s),
            other => Err(ExchangeError::BadAnswer(format!(
                "unexpected answer to Summaries of {} intervals: {other:?}",
                intervals.len()
            ))),
        }
    }

    async fn digests(&self, interval: Interval) -> Result<BTreeMap<Key, u64>, ExchangeError> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let request = Request::Digests {
                interval,
                after: after.clone(),
                limit: BATCH,
            };
            let Response::Digests { entries, more } = self.call(request).await? else {
                return Err(ExchangeError::BadAnswer(
                    "unexpected answer to Digests".into(),
                ));
            };
            after = entries.last().map(|(k, _)| k.clone());
            for (k, d) in entries {
                if let Ok(k) = Key::new(k) {
                    out.insert(k, d);
                }
            }
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }
}

/// Brings this node and `peer` to the same sets for every key in `intervals`.
pub async fn exchange(
    local: &LocalKv,
    peer: &Peer<'_>,
    intervals: &[Interval],
) -> Result<Exchanged, ExchangeError> {
    let mut done = Exchanged::default();
    let mut frontier: Vec<Interval> = intervals.to_vec();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(SUMMARY_BATCH) {
            let theirs = peer.summaries(chunk).await?;
            for (iv, their) in chunk.iter().zip(theirs) {
                let ours = local.summary(*iv)?;
                if ours == their {
                    continue;
                }
                done.differing += 1;
                if ours.count.max(their.count) <= LIST_BELOW || iv.lo == iv.hi {
                    let moved = exchange_keys(local, peer, *iv).await?;
                    done.pulled += moved.pulled;
                    done.pushed += moved.pushed;
                } else {
                    next.extend(iv.split(FANOUT));
                }
            }
        }
        frontier = next;
    }
    Ok(done)
}

/// Lists both sides' keys in a small interval and moves the ones that differ.
async fn exchange_keys(
    local: &LocalKv,
    peer: &Peer<'_>,
    iv: Interval,
) -> Result<Exchanged, ExchangeError> {
    let theirs = peer.digests(iv).await?;
    let mut ours = BTreeMap::new();
    let mut after = None;
    loop {
        let (rows, more) = local.digests(iv, after.as_ref(), BATCH)?;
        after = rows.last().map(|(k, _)| k.clone());
        ours.extend(rows);
        if !more || after.is_none() {
            break;
        }
    }
    // A key differs when one side lacks it or the digests differ; each side then takes
    // what the other has, and DVV sync makes both the same.
    let pull: Vec<Key> = theirs
        .iter()
        .filter(|(k, d)| ours.get(*k) != Some(d))
        .map(|(k, _)| k.clone())
        .collect();
    let push: Vec<Key> = ours
        .iter()
        .filter(|(k, d)| theirs.get(*k) != Some(d))
        .map(|(k, _)| k.clone())
        .collect();
    let mut done = Exchanged::default();
    let names = pull.iter().map(|k| k.as_str().to_owned());
    for keys in batch::split_encoded(names, peer.limit) {
        done.pulled += pull_keys(local, peer, keys).await?;
    }
    done.pushed += push_keys(local, peer, &push).await?;
    Ok(done)
}

/// Reads `keys` from the peer and merges them here. The peer's reply may stop at its
/// byte budget; then the rest is asked for again, until every key is answered.
async fn pull_keys(
    local: &LocalKv,
    peer: &Peer<'_>,
    mut keys: Vec<String>,
) -> Result<u64, ExchangeError> {
    let mut pulled = 0;
    while !keys.is_empty() {
        let request = Request::ReadMany { keys: keys.clone() };
        let Response::ReadMany { entries, more } = peer.call(request).await? else {
            return Err(ExchangeError::BadAnswer(
                "unexpected answer to ReadMany".into(),
            ));
        };
        // A reply answers a prefix of the keys, in order; anything else is a broken peer,
        // and an empty partial reply would loop forever.
        let answered = entries.len();
        let in_order = entries.iter().zip(&keys).all(|((k, _), want)| k == want);
        if answered > keys.len() || !in_order || (more && answered == 0) {
            return Err(ExchangeError::BadAnswer(
                "ReadMany reply does not answer the keys asked".into(),
            ));
        }
        let merges = entries.into_iter().filter_map(|(k, set)| {
            let key = Key::new(k).ok()?;
            set.map(|s| local.merge(key, s))
        });
        for result in futures::future::join_all(merges).await {
            result?;
            pulled += 1;
        }
        if !more && answered < keys.len() {
            return Err(ExchangeError::BadAnswer(format!(
                "ReadMany answered {answered} of {} keys without saying there is more",
                keys.len()
            )));
        }
        keys.drain(..answered);
    }
    Ok(pulled)
}

/// Sends this node's copies of `keys` to the peer, in calls the batcher cuts as the sets
/// are read (only one call's worth is held at a time).
async fn push_keys(local: &LocalKv, peer: &Peer<'_>, keys: &[Key]) -> Result<u64, ExchangeError> {
    let mut pushed = 0;
    let mut batcher: Batcher<(String, SiblingSet)> = Batcher::new(peer.limit);
    for k in keys {
        let Some(set) = local.read(k)? else {
            continue;
        };
        let entry = (k.as_str().to_owned(), set);
        let size = encoded_len(&entry);
        if let Some(full) = batcher.push(entry, size) {
            pushed += merge(peer, full).await?;
        }
    }
    if let Some(last) = batcher.take() {
        pushed += merge(peer, last).await?;
    }
    Ok(pushed)
}

async fn merge(peer: &Peer<'_>, entries: Vec<(String, SiblingSet)>) -> Result<u64, ExchangeError> {
    let n = entries.len() as u64;
    match peer.call(Request::Merge { entries }).await? {
        Response::Merged => Ok(n),
        other => Err(ExchangeError::BadAnswer(format!(
            "unexpected answer to Merge: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::kv::writer::{self, WriterSettings};
    use crate::kv::HintLedger;
    use crate::net::TokioNetwork;
    use crate::rpc::frame::{RpcConfig, RpcStats};
    use crate::rpc::server::RpcHandler;
    use crate::store::{MemoryStore, Store};
    use crate::version::{Actor, Payload};

    fn set_of(key: &str) -> SiblingSet {
        let value = Payload::Value {
            data: Bytes::from(format!("value of {key}")),
            content_type: "text/plain".into(),
        };
        SiblingSet::new()
            .update(None, Actor { node: 9, epoch: 0 }, value, 1)
            .expect("a fresh counter")
            .0
    }

    /// A peer whose `ReadMany` replies answer one key at a time and say there is more, as
    /// a reply cut at its byte budget does; or, `broken`, claim more and answer nothing.
    struct OneAtATime {
        broken: bool,
    }

    #[async_trait]
    impl RpcHandler for OneAtATime {
        async fn handle(&self, request: Request) -> Response {
            let Request::ReadMany { keys } = request else {
                return Response::Error(crate::rpc::RemoteError::Internal("unexpected".into()));
            };
            if self.broken {
                return Response::ReadMany {
                    entries: Vec::new(),
                    more: true,
                };
            }
            Response::ReadMany {
                more: keys.len() > 1,
                entries: keys
                    .first()
                    .map(|k| (k.clone(), Some(set_of(k))))
                    .into_iter()
                    .collect(),
            }
        }
    }

    fn local_kv() -> LocalKv {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hints = Arc::new(HintLedger::default());
        let tree = Arc::default();
        let (writer, _task) = writer::spawn(
            store.clone(),
            WriterSettings::for_test(Arc::clone(&tree), hints.clone()),
            CancellationToken::new(),
        );
        LocalKv::new(store, writer, hints, tree)
    }

    async fn peer_server(broken: bool, shutdown: CancellationToken) -> SocketAddr {
        crate::rpc::server::serve_on_loopback(Arc::new(OneAtATime { broken }), shutdown).await
    }

    #[tokio::test]
    async fn a_cut_read_many_reply_is_followed_up_until_every_key_is_answered() {
        let shutdown = CancellationToken::new();
        let local = local_kv();
        let rpc = RpcClient::new(
            crate::rpc::connector_for(Arc::new(TokioNetwork)),
            RpcConfig::default(),
            Arc::new(RpcStats::default()),
        );
        for broken in [false, true] {
            let peer = Peer {
                rpc: &rpc,
                addr: peer_server(broken, shutdown.clone()).await,
                timeout: Duration::from_secs(5),
                limit: BatchLimit::default(),
                shutdown: &shutdown,
            };
            let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
            let pulled =
                tokio::time::timeout(Duration::from_secs(10), pull_keys(&local, &peer, keys))
                    .await
                    .expect("pull_keys is bounded");
            if broken {
                // A reply that claims more but answers nothing would loop forever.
                assert!(
                    matches!(pulled, Err(ExchangeError::BadAnswer(_))),
                    "{pulled:?}"
                );
                continue;
            }
            assert_eq!(pulled.expect("pulled"), 3);
            for k in ["a", "b", "c"] {
                let stored = local
                    .read(&Key::new(k.to_string()).expect("key"))
                    .expect("read");
                assert_eq!(stored, Some(set_of(k)), "{k}");
            }
        }
        rpc.close_all().await;
        shutdown.cancel();
    }

    /// A peer that never answers: each call would wait out its whole timeout.
    struct Silent;

    #[async_trait]
    impl RpcHandler for Silent {
        async fn handle(&self, _request: Request) -> Response {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::Merged
        }
    }

    #[tokio::test]
    async fn an_exchange_stops_on_shutdown_rather_than_wait_for_its_calls() {
        let servers = CancellationToken::new();
        let rpc = RpcClient::new(
            crate::rpc::connector_for(Arc::new(TokioNetwork)),
            RpcConfig::default(),
            Arc::new(RpcStats::default()),
        );
        let addr = crate::rpc::server::serve_on_loopback(Arc::new(Silent), servers.clone()).await;
        let shutdown = CancellationToken::new();
        let peer = Peer {
            rpc: &rpc,
            addr,
            timeout: Duration::from_secs(600),
            limit: BatchLimit::default(),
            shutdown: &shutdown,
        };
        let local = local_kv();
        let stop = shutdown.clone();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(&local, &peer, &[Interval::FULL]),
        )
        .await
        .expect("the exchange ends on shutdown, not after its calls' timeout");
        assert!(matches!(done, Err(ExchangeError::Cancelled)), "{done:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        stopper.await.expect("stopper");
        rpc.close_all().await;
        servers.cancel();
    }
}
