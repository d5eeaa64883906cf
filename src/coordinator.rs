//! The coordinator: what a KV request does, beneath the HTTP layer.
//!
//! On one node the coordinator is the only replica. Clustering (issue 3) adds the
//! preference list, replication to N nodes and the R/W quorums here, so the HTTP layer
//! and the batch endpoint stay as they are.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use crate::key::Key;
use crate::kv::{KeyedSet, KvError, LocalKv, Mutation};
use crate::net::Clock;
use crate::quorum::{Quorum, Replication};
use crate::version::{Payload, SiblingSet, VersionVector};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordError {
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The request ran out of time. Dynamo semantics: a write may still be applied.
    #[error("timed out after {after_ms} ms waiting for {needed} replica(s), {replied} replied{}", if *.write { "; the write may still be applied" } else { "" })]
    Timeout {
        after_ms: u64,
        needed: usize,
        replied: usize,
        write: bool,
    },
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
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// Keys with at least one live value, in key order.
    pub items: Vec<KeyedSet>,
    /// The last key looked at, when there may be more after it.
    pub resume_after: Option<Key>,
}

pub struct Coordinator {
    kv: LocalKv,
    replication: Replication,
    clock: Arc<dyn Clock>,
}

impl Coordinator {
    pub fn new(kv: LocalKv, replication: Replication, clock: Arc<dyn Clock>) -> Self {
        Coordinator {
            kv,
            replication,
            clock,
        }
    }

    /// The factors in force now; one member until the cluster layer exists.
    pub fn replication(&self) -> Replication {
        self.replication.effective(1)
    }

    pub fn local(&self) -> &LocalKv {
        &self.kv
    }

    pub async fn get(
        &self,
        key: &Key,
        opts: &RequestOpts,
    ) -> Result<Option<SiblingSet>, CoordError> {
        let _r = self.needed(opts.r, self.replication().r);
        Ok(self.kv.read(key)?)
    }

    pub async fn put(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        payload: Payload,
        opts: &RequestOpts,
    ) -> Result<SiblingSet, CoordError> {
        let mutation = Mutation::Update {
            key,
            seen,
            payload,
            written_at_ms: self.clock.now_ms(),
        };
        Ok(self.write(mutation, opts).await?.set)
    }

    pub async fn delete(
        &self,
        key: Key,
        seen: Option<VersionVector>,
        opts: &RequestOpts,
    ) -> Result<Deleted, CoordError> {
        let mutation = Mutation::Delete {
            key,
            seen,
            written_at_ms: self.clock.now_ms(),
        };
        let applied = self.write(mutation, opts).await?;
        Ok(Deleted {
            found: applied.had_live,
            set: applied.set,
        })
    }

    async fn write(
        &self,
        mutation: Mutation,
        opts: &RequestOpts,
    ) -> Result<crate::kv::Applied, CoordError> {
        let needed = self.needed(opts.w, self.replication().w);
        match tokio::time::timeout(opts.timeout, self.kv.apply(mutation)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CoordError::Timeout {
                after_ms: opts.timeout.as_millis() as u64,
                needed,
                replied: 0,
                write: true,
            }),
        }
    }

    fn needed(&self, asked: Option<Quorum>, default: usize) -> usize {
        let n = self.replication().n;
        asked.map_or(default, |q| q.resolve(n))
    }

    /// Up to `limit` live keys in `(start, end)`. Looks at no more than `scan_budget`
    /// stored keys, so a range full of tombstones cannot make one request unbounded; the
    /// caller pages on with `resume_after`.
    pub fn list(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        scan_budget: usize,
    ) -> Result<Page, CoordError> {
        // One extra row tells whether anything follows the page.
        let rows = self.kv.scan(start, end, scan_budget + 1)?;
        let more = rows.len() > scan_budget;
        let mut items = Vec::with_capacity(limit);
        let mut last_seen = None;
        for (key, set) in rows.into_iter().take(scan_budget) {
            if items.len() == limit {
                return Ok(Page {
                    items,
                    resume_after: last_seen,
                });
            }
            last_seen = Some(key.clone());
            if set.has_live() {
                items.push((key, set));
            }
        }
        Ok(Page {
            items,
            resume_after: if more { last_seen } else { None },
        })
    }
}
