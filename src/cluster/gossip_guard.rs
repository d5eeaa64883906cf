//! A bound on the node ids gossip tracks (`--max-gossip-members`), kept at the socket:
//! chitchat starts tracking every id a peer's digest names, and has no public way to
//! forget one before its dead-node grace (an hour) has passed.
//!
//! Three rules, each counted in `/metrics` and logged at warn (on the 1st, 2nd, 4th...
//! time, so a flood cannot flood the log): a datagram naming more ids than the bound is
//! dropped (no correct peer tracks that many); when the ids tracked pass the bound anyway
//! (many datagrams of new ids each), gossip is started again to shed them
//! (`cluster::supervise`), and for [`RESTRICT_FOR`] after that only members' gossip
//! addresses are heard, so whoever sent them cannot fill the new instance at once.
//!
//! The count is not all that grows: a delta can add keys to any node state chitchat holds
//! (an invented id's, or a member's, from a buggy peer), and chitchat bounds neither the
//! keys of a node nor their sizes. So the bytes of every key and value tracked are summed
//! each round too, and past [`STATE_BYTES_PER_ID`] per allowed id they are shed the same
//! way. ringkv's own keys take well under 1 KiB per member, plus a few dozen bytes per
//! departed id on the node that removed it.
//!
//! chitchat keeps its message fields crate-private; the ids a message names are counted
//! from its `Debug` form, one `NodeDigest {` per digest entry and one `NodeDelta {` per
//! delta entry. A node id that spells either out only makes its own datagram count more.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::time::Instant;

use crate::stats::Counter;

/// The default `--max-gossip-members`: 16 times the largest N, room for every member
/// and its generations from recent restarts.
pub const DEFAULT_MAX_GOSSIP_MEMBERS: usize = 256;
/// The gossip state allowed per id of `--max-gossip-members`, in key and value bytes: 4 MiB
/// in all at the default bound.
pub const STATE_BYTES_PER_ID: usize = 16 * 1024;
/// After the ids tracked passed the bound, only members are heard for this long.
pub const RESTRICT_FOR: Duration = Duration::from_secs(60);

/// The bound, what it dropped, and the members' addresses (refreshed every round).
#[derive(Debug)]
pub struct GossipGuard {
    max_ids: usize,
    max_bytes: usize,
    members: RwLock<HashSet<SocketAddr>>,
    restricted_until: Mutex<Option<Instant>>,
    tracked: AtomicU64,
    tracked_bytes: AtomicU64,
    /// Datagrams dropped for naming more ids than the bound.
    pub dropped_too_many_ids: Counter,
    /// Datagrams from non-members dropped while restricted.
    pub dropped_not_member: Counter,
    /// Times the ids tracked passed the bound (each started gossip again).
    pub over_bound: Counter,
    /// Times the key and value bytes tracked passed theirs (each started gossip again).
    pub over_byte_bound: Counter,
}

impl Default for GossipGuard {
    fn default() -> Self {
        GossipGuard::new(DEFAULT_MAX_GOSSIP_MEMBERS)
    }
}

impl GossipGuard {
    pub fn new(max_ids: usize) -> Self {
        GossipGuard {
            max_ids,
            max_bytes: max_ids.saturating_mul(STATE_BYTES_PER_ID),
            members: RwLock::new(HashSet::new()),
            restricted_until: Mutex::new(None),
            tracked: AtomicU64::new(0),
            tracked_bytes: AtomicU64::new(0),
            dropped_too_many_ids: Counter::default(),
            dropped_not_member: Counter::default(),
            over_bound: Counter::default(),
            over_byte_bound: Counter::default(),
        }
    }

    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// The ids chitchat tracks, as of the last round.
    pub fn tracked(&self) -> u64 {
        self.tracked.load(Ordering::Relaxed)
    }

    /// The key and value bytes chitchat tracks, as of the last round.
    pub fn tracked_bytes(&self) -> u64 {
        self.tracked_bytes.load(Ordering::Relaxed)
    }

    /// The bound on [`GossipGuard::tracked_bytes`].
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Called every round with chitchat's id count, the bytes of its keys and values, and
    /// the members' gossip addresses; true when either is past its bound: the caller
    /// starts gossip again, and from now on only members are heard for [`RESTRICT_FOR`].
    pub(crate) fn round(
        &self,
        tracked: usize,
        tracked_bytes: usize,
        members: HashSet<SocketAddr>,
    ) -> bool {
        self.tracked.store(tracked as u64, Ordering::Relaxed);
        self.tracked_bytes
            .store(tracked_bytes as u64, Ordering::Relaxed);
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        if tracked > self.max_ids {
            self.over_bound.inc();
            tracing::warn!(
                tracked,
                max = self.max_ids,
                times = self.over_bound.get(),
                "gossip tracks more node ids than --max-gossip-members; starting it again to forget them, and hearing only members for {RESTRICT_FOR:?}"
            );
        } else if tracked_bytes > self.max_bytes {
            self.over_byte_bound.inc();
            tracing::warn!(
                tracked_bytes,
                max = self.max_bytes,
                times = self.over_byte_bound.get(),
                "gossip holds more key and value bytes than --max-gossip-members allows ({STATE_BYTES_PER_ID} per id); starting it again to forget them, and hearing only members for {RESTRICT_FOR:?}"
            );
        } else {
            return false;
        }
        *self
            .restricted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + RESTRICT_FOR);
        true
    }

    fn restricted(&self) -> bool {
        self.restricted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether to hand `received` to chitchat.
    fn admit(&self, received: &RecvOutcome) -> bool {
        let from = received.from_addr;
        if self.restricted()
            && !self
                .members
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&from)
        {
            self.dropped_not_member.inc();
            let n = self.dropped_not_member.get();
            if n.is_power_of_two() {
                tracing::warn!(%from, dropped = n, "dropped gossip from a non-member while the id bound is restricted");
            }
            return false;
        }
        let ids = ids_named(&received.envelope);
        if ids > self.max_ids {
            self.dropped_too_many_ids.inc();
            let n = self.dropped_too_many_ids.get();
            if n.is_power_of_two() {
                tracing::warn!(%from, ids, max = self.max_ids, dropped = n, "dropped a gossip datagram naming more node ids than --max-gossip-members");
            }
            return false;
        }
        true
    }
}

/// How many node ids a message names (see the module doc).
pub fn ids_named(envelope: &ChitchatEnvelope) -> usize {
    let count = |text: String, marker: &str| text.matches(marker).count();
    match &envelope.message {
        ChitchatMessage::Syn { digest, .. } => count(format!("{digest:?}"), "NodeDigest {"),
        ChitchatMessage::SynAck { digest, delta } => {
            count(format!("{digest:?}"), "NodeDigest {")
                + count(format!("{delta:?}"), "NodeDelta {")
        }
        ChitchatMessage::Ack { delta } => count(format!("{delta:?}"), "NodeDelta {"),
        _ => 0,
    }
}

/// The gossip socket, behind the guard.
pub struct GuardedSocket {
    inner: Box<dyn Socket>,
    guard: Arc<GossipGuard>,
}

impl GuardedSocket {
    pub fn new(inner: Box<dyn Socket>, guard: Arc<GossipGuard>) -> Self {
        GuardedSocket { inner, guard }
    }
}

#[async_trait]
impl Socket for GuardedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    /// Cancellable as the inner `recv` is: a dropped datagram leaves nothing half read.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let received = self.inner.recv().await?;
            if self.guard.admit(&received) {
                return Ok(received);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn past_the_bound_only_members_are_heard_for_a_while() {
        let guard = GossipGuard::new(16);
        let members: HashSet<SocketAddr> = [addr(1)].into_iter().collect();
        assert!(!guard.round(16, 0, members.clone()));
        assert!(!guard.restricted());
        assert_eq!(guard.tracked(), 16);
        assert!(guard.round(17, 0, members.clone()));
        assert_eq!(guard.over_bound.get(), 1);
        assert!(guard.restricted());
        assert!(guard.members.read().expect("lock").contains(&addr(1)));
        // Once the window has passed, everyone is heard again.
        *guard.restricted_until.lock().expect("lock") = Some(Instant::now());
        assert!(!guard.restricted());
        // Back within the bound, it stays open.
        assert!(!guard.round(3, 0, members));
        assert!(!guard.restricted());
    }

    #[tokio::test]
    async fn past_the_byte_bound_gossip_is_shed_too() {
        let guard = GossipGuard::new(16);
        let max = guard.max_bytes();
        assert_eq!(max, 16 * STATE_BYTES_PER_ID);
        assert!(!guard.round(2, max, HashSet::new()));
        assert_eq!(guard.tracked_bytes(), max as u64);
        assert!(!guard.restricted());
        assert!(guard.round(2, max + 1, HashSet::new()));
        assert_eq!(guard.over_byte_bound.get(), 1);
        assert_eq!(guard.over_bound.get(), 0, "counted once, as bytes");
        assert!(guard.restricted());
    }
}
