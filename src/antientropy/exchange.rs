//! One anti-entropy exchange between this node and a peer over a set of ring intervals.
//!
//! Both sides summarise each interval (hash and count, `merkle`). Where the summaries
//! agree, nothing more is sent. Where they differ, the interval is split in
//! [`FANOUT`] and the parts compared, down to parts small enough to list: then the two
//! sides' key digests are compared and only the keys that differ move, in both
//! directions, each side merging with DVV sync. Both end with the same sets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::key::Key;
use crate::kv::LocalKv;
use crate::merkle::{Interval, Summary};
use crate::rpc::client::RpcClient;
use crate::rpc::{Request, Response};
use crate::version::SiblingSet;

/// Parts an interval splits into when its summaries differ.
const FANOUT: usize = 16;
/// An interval with at most this many keys on both sides is listed, not split further.
const LIST_BELOW: u64 = 256;
/// Keys listed, read or pushed in one call.
const BATCH: usize = 512;
/// Intervals summarised in one call.
const SUMMARY_BATCH: usize = 256;

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
    #[error("peer call failed: {0}")]
    Rpc(String),
    #[error("local store: {0}")]
    Local(String),
}

pub struct Peer<'a> {
    pub rpc: &'a RpcClient,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Peer<'_> {
    async fn call(&self, request: Request) -> Result<Response, ExchangeError> {
        match self.rpc.call(self.addr, request, self.timeout).await {
            Ok(Response::Error(e)) => Err(ExchangeError::Rpc(e.to_string())),
            Ok(r) => Ok(r),
            Err(e) => Err(ExchangeError::Rpc(e.to_string())),
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
            other => Err(ExchangeError::Rpc(format!("unexpected answer {other:?}"))),
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
                return Err(ExchangeError::Rpc("unexpected answer to Digests".into()));
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

fn local_err(e: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Local(e.to_string())
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
                let ours = local.summary(*iv).map_err(local_err)?;
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
        let (rows, more) = local
            .digests(iv, after.as_ref(), BATCH)
            .map_err(local_err)?;
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
    for keys in pull.chunks(BATCH) {
        let request = Request::ReadMany {
            keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
        };
        let Response::ReadMany(sets) = peer.call(request).await? else {
            return Err(ExchangeError::Rpc("unexpected answer to ReadMany".into()));
        };
        let merges = sets.into_iter().filter_map(|(k, set)| {
            let key = Key::new(k).ok()?;
            set.map(|s| local.merge(key, s))
        });
        for result in futures::future::join_all(merges).await {
            result.map_err(local_err)?;
            done.pulled += 1;
        }
    }
    for keys in push.chunks(BATCH) {
        let mut entries: Vec<(String, SiblingSet)> = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(set) = local.read(k).map_err(local_err)? {
                entries.push((k.as_str().to_owned(), set));
            }
        }
        let n = entries.len() as u64;
        match peer.call(Request::Merge { entries }).await? {
            Response::Merged => done.pushed += n,
            other => return Err(ExchangeError::Rpc(format!("unexpected answer {other:?}"))),
        }
    }
    Ok(done)
}
