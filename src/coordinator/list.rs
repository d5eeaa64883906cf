//! Listings merged across members: each healthy member scans its own keys, and the pages
//! are merged in key order with DVV sync per key. A page is served only when, for every
//! ring range, at least one of its replicas answered: otherwise it would silently miss
//! that range's keys, and the listing fails with `ListingIncomplete` (503).
//!
//! A page is bounded in bytes as well as keys (`--max-list-bytes`): each member's scan
//! gets an equal share of the budget, so what the coordinator holds for one page is about
//! the budget, however many members answer, and the page itself stops before the value
//! that would take it past the budget (a single larger key still comes, alone). A member
//! cut short by bytes is one that stopped early, which the horizon below already handles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{CoordError, CoordinatorParts as Inner, Page};
use crate::cluster::membership::ClusterView;
use crate::cluster::NodeId;
use crate::key::Key;
use crate::kv::ListRange;
use crate::rpc::{Request, Response, ScanRange};
use crate::version::SiblingSet;

/// How much one page may hold and cost.
#[derive(Clone, Copy, Debug)]
pub struct PageBounds {
    /// Live keys on the page.
    pub limit: usize,
    /// Stored keys each member scans (tombstoned ones count): bounds the work of a page.
    pub scan_rows: usize,
    /// Bytes of values on the page, and of records the members' scans read together.
    pub max_bytes: usize,
}

/// The `Scan` request for `range`. Keys are UTF-8 by construction; a bound that is not
/// stays out of the RPC.
fn scan_request(range: &ListRange, limit: usize, max_bytes: usize) -> ScanRange {
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    ScanRange {
        start: range.start.as_ref().map(text),
        start_exclusive: range.start_exclusive,
        end: range.end.as_ref().map(text),
        limit,
        max_bytes,
    }
}

/// The bytes a key counts for on a page: the key and its live values with their content
/// types, which is what the page renders.
fn item_bytes(key: &Key, set: &SiblingSet) -> usize {
    set.live().fold(key.as_bytes().len(), |b, v| {
        b.saturating_add(v.payload.data_len())
    })
}

/// One member's scan: its rows in key order, and whether it has more past the last.
type Scan = (Vec<(Key, SiblingSet)>, bool);

pub(super) async fn merged_page(
    inner: &Arc<Inner>,
    view: &ClusterView,
    range: &ListRange,
    bounds: PageBounds,
    timeout: Duration,
) -> Result<Page, CoordError> {
    let members: Vec<_> = view
        .members
        .values()
        .filter(|m| view.is_healthy(m.id))
        .collect();
    let budget = bounds.scan_rows;
    let member_bytes = (bounds.max_bytes / members.len().max(1)).max(1);
    let scans = futures::future::join_all(members.iter().map(|m| async move {
        if m.id == view.self_id {
            let (start, end) = range.bounds();
            let page = inner.local.scan(start, end, budget, member_bytes)?;
            Ok::<Scan, CoordError>((page.rows, page.more))
        } else {
            let request = Request::Scan(scan_request(range, budget, member_bytes));
            match tokio::time::timeout(timeout, inner.peers.rpc.call(m.rpc_addr, request, timeout))
                .await
            {
                Ok(Ok(Response::Scanned { entries, more })) => Ok((
                    entries
                        .into_iter()
                        .filter_map(|(k, s)| Key::new(k).ok().map(|k| (k, s)))
                        .collect(),
                    more,
                )),
                _ => Err(CoordError::QuorumFailed {
                    needed: 1,
                    replied: 0,
                    failed: 1,
                    write: false,
                }),
            }
        }
    }))
    .await;

    let answered: Vec<NodeId> = members
        .iter()
        .zip(&scans)
        .filter(|(_, scan)| scan.is_ok())
        .map(|(m, _)| m.id)
        .collect();
    check_coverage(inner, view, &answered)?;

    // Merge what answered. A member that failed is skipped: every range it holds was
    // scanned on another replica (checked above). Keys past the first member that stopped
    // early are left for the next page, so no member's unseen keys are skipped.
    let mut merged: BTreeMap<Key, SiblingSet> = BTreeMap::new();
    let mut horizon: Option<Key> = None;
    for scan in scans {
        let Ok((rows, more)) = scan else { continue };
        if more {
            if let Some((last, _)) = rows.last() {
                if horizon.as_ref().is_none_or(|h| last < h) {
                    horizon = Some(last.clone());
                }
            }
        }
        for (key, set) in rows {
            merged
                .entry(key)
                .and_modify(|s| *s = s.sync(&set))
                .or_insert(set);
        }
    }
    if answered.is_empty() {
        return Err(CoordError::QuorumFailed {
            needed: 1,
            replied: 0,
            failed: members.len(),
            write: false,
        });
    }
    let mut items = Vec::with_capacity(bounds.limit.min(merged.len()));
    let mut bytes = 0usize;
    let mut last_seen: Option<Key> = None;
    for (key, set) in merged {
        let size = if set.has_live() {
            item_bytes(&key, &set)
        } else {
            0
        };
        let over_bytes = !items.is_empty() && bytes.saturating_add(size) > bounds.max_bytes;
        if horizon.as_ref().is_some_and(|h| key > *h) || items.len() == bounds.limit || over_bytes {
            // `key` is not looked at: the next page starts at it.
            return Ok(Page {
                items,
                resume_after: last_seen,
            });
        }
        last_seen = Some(key.clone());
        if set.has_live() {
            bytes = bytes.saturating_add(size);
            items.push((key, set));
        }
    }
    Ok(Page {
        items,
        resume_after: horizon.and(last_seen),
    })
}

/// Fails unless every range of the read ring has a replica among `answered`. A member
/// that is down (not scanned) or whose scan failed is covered only by the other replicas
/// of its ranges: with N=1 nothing covers it.
fn check_coverage(
    inner: &Inner,
    view: &ClusterView,
    answered: &[NodeId],
) -> Result<(), CoordError> {
    let ring = &view.ring;
    if ring.is_empty() {
        // A node that knows no ring yet holds everything it has itself.
        return Ok(());
    }
    let policy = inner.policy();
    let ranges = ring.ranges();
    let uncovered = ranges
        .iter()
        .filter(|range| {
            !policy
                .range_owners(ring, range)
                .iter()
                .any(|o| answered.contains(o))
        })
        .count();
    if uncovered == 0 {
        return Ok(());
    }
    let unreachable: Vec<String> = ring
        .members()
        .iter()
        .filter(|id| !answered.contains(id))
        .map(|id| id.to_string())
        .collect();
    Err(CoordError::ListingIncomplete {
        uncovered,
        ranges: ranges.len(),
        unreachable: unreachable.join(", "),
    })
}
