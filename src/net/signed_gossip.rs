//! Gossip datagram authentication: every datagram carries a timestamp and an
//! HMAC-SHA256 tag over (cluster id, timestamp, bytes); a datagram too short to carry
//! one, badly signed, or stamped too far from our clock is dropped and counted.
//!
//! This is the pure part, shared by the production socket (`signed_udp`) and the
//! simulation's: each seals and opens the bytes it puts on its wire.
//!
//! Replay: a captured datagram verifies again within `max_skew` of its stamp. chitchat's
//! messages are state deltas keyed by (node, version) and a digest of versions; applying
//! one a second time changes nothing that its first delivery did not, and an older one is
//! ignored as stale by version. What a replay can do is cost the receiver the work of
//! processing it, make a node answer a replayed SYN with a reply to its real sender
//! (bounded by what the attacker sends), and refresh a node's heartbeat sample with an old
//! one, which delays, by at most the window, the failure detector marking a node that has
//! just died as dead.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Clock;
use crate::config::ClusterSecret;
use crate::rpc::RpcStats;

type HmacSha256 = Hmac<Sha256>;

const STAMP_BYTES: usize = 8;
const TAG_BYTES: usize = 32;
/// What sealing adds to a datagram: the stamp (ms, big-endian) and the tag.
pub const TRAILER_BYTES: usize = STAMP_BYTES + TAG_BYTES;
/// The largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP): chitchat fills datagrams up
/// to exactly this, so a sealed one can exceed it; see [`GossipAuth::seal`].
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// Separates these tags from any other use of the secret (the RPC handshake).
const DOMAIN: &[u8] = b"ringkv gossip v1";

/// Gossip datagrams dropped, by reason.
#[derive(Debug, Default)]
pub struct GossipDrops {
    /// Too short to carry a stamp and a tag (an unsigned probe, a truncated datagram).
    pub short: AtomicU64,
    /// The tag does not verify: no secret, another secret, another cluster, or altered.
    pub bad_tag: AtomicU64,
    /// Well signed, but stamped more than `max_skew` from this node's clock.
    pub stale: AtomicU64,
    /// Outbound: chitchat filled a datagram so close to the UDP limit that the trailer
    /// does not fit. It is not sent (chitchat gossips again next round).
    pub oversize: AtomicU64,
}

/// Seals and opens gossip datagrams with the cluster secret.
pub struct GossipAuth {
    secret: ClusterSecret,
    cluster_id: String,
    clock: Arc<dyn Clock>,
    max_skew: Duration,
    stats: Arc<RpcStats>,
}

/// Why an inbound datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Short,
    BadTag,
    Stale,
}

impl GossipAuth {
    pub fn new(
        secret: ClusterSecret,
        cluster_id: String,
        clock: Arc<dyn Clock>,
        max_skew: Duration,
        stats: Arc<RpcStats>,
    ) -> Self {
        GossipAuth {
            secret,
            cluster_id,
            clock,
            max_skew,
            stats,
        }
    }

    /// The node's gossip authentication, or `None` in open mode.
    pub fn for_node(
        config: &crate::config::NodeConfig,
        clock: Arc<dyn Clock>,
        stats: Arc<RpcStats>,
    ) -> Option<Arc<GossipAuth>> {
        let security = &config.security;
        let secret = security.cluster_secret.clone()?;
        Some(Arc::new(GossipAuth::new(
            secret,
            config.cluster.cluster_id.clone(),
            clock,
            security.gossip_max_skew,
            stats,
        )))
    }

    fn mac(&self, stamp: [u8; STAMP_BYTES], payload: &[u8]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(self.secret.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(DOMAIN);
        mac.update(&(self.cluster_id.len() as u64).to_be_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(&stamp);
        mac.update(payload);
        mac
    }

    /// `payload` with its stamp and tag, into `out` (cleared first). `false`, counted as
    /// oversize, when the sealed datagram would not fit in one UDP datagram: chitchat's
    /// datagram limit is a crate constant that cannot be lowered by the trailer, so a
    /// delta that fills it is not sent rather than sent truncated.
    pub fn seal(&self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if payload.len().saturating_add(TRAILER_BYTES) > MAX_DATAGRAM_BYTES {
            RpcStats::add(&self.stats.gossip.oversize, 1);
            return false;
        }
        let stamp = self.clock.now_ms().to_be_bytes();
        let tag = self.mac(stamp, payload).finalize().into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(&stamp);
        out.extend_from_slice(&tag);
        true
    }

    /// The payload of a sealed datagram, or why it is dropped (counted).
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], Dropped> {
        let result = self.check(datagram);
        if let Err(why) = result {
            let drops = &self.stats.gossip;
            let counter = match why {
                Dropped::Short => &drops.short,
                Dropped::BadTag => &drops.bad_tag,
                Dropped::Stale => &drops.stale,
            };
            RpcStats::add(counter, 1);
        }
        result
    }

    fn check<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], Dropped> {
        let split = datagram
            .len()
            .checked_sub(TRAILER_BYTES)
            .ok_or(Dropped::Short)?;
        let (payload, trailer) = datagram.split_at(split);
        let (stamp, tag) = trailer.split_at(STAMP_BYTES);
        let stamp: [u8; STAMP_BYTES] = stamp.try_into().map_err(|_| Dropped::Short)?;
        // The tag first: an unauthenticated stamp says nothing.
        self.mac(stamp, payload)
            .verify_slice(tag)
            .map_err(|_| Dropped::BadTag)?;
        let sent_ms = u64::from_be_bytes(stamp);
        let skew_ms = self.clock.now_ms().abs_diff(sent_ms);
        if u128::from(skew_ms) > self.max_skew.as_millis() {
            return Err(Dropped::Stale);
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    struct FixedClock(AtomicU64);

    impl Clock for FixedClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn auth(secret: &[u8], cluster: &str, clock: Arc<FixedClock>) -> GossipAuth {
        GossipAuth::new(
            ClusterSecret::new(secret).expect("secret"),
            cluster.into(),
            clock,
            Duration::from_secs(30),
            Arc::new(RpcStats::default()),
        )
    }

    #[test]
    fn sealed_datagrams_open_and_everything_else_is_dropped_and_counted() {
        let clock = Arc::new(FixedClock(AtomicU64::new(1_000_000)));
        let a = auth(b"0123456789abcdef", "c", clock.clone());
        let mut sealed = Vec::new();
        assert!(a.seal(b"hello gossip", &mut sealed));
        assert_eq!(sealed.len(), 12 + TRAILER_BYTES);
        assert_eq!(a.open(&sealed), Ok(&b"hello gossip"[..]));

        assert_eq!(a.open(b"short"), Err(Dropped::Short));
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(a.open(&flipped), Err(Dropped::BadTag));
        let other_secret = auth(b"0123456789abcdeX", "c", clock.clone());
        assert_eq!(other_secret.open(&sealed), Err(Dropped::BadTag));
        let other_cluster = auth(b"0123456789abcdef", "d", clock.clone());
        assert_eq!(other_cluster.open(&sealed), Err(Dropped::BadTag));
        // The stamp is covered by the tag: moving it forward breaks the tag.
        let mut restamped = sealed.clone();
        let at = restamped.len() - TRAILER_BYTES;
        restamped[at + 7] ^= 1;
        assert_eq!(a.open(&restamped), Err(Dropped::BadTag));

        clock.0.store(1_000_000 + 30_001, Ordering::SeqCst);
        assert_eq!(a.open(&sealed), Err(Dropped::Stale));
        clock.0.store(1_000_000 - 30_001, Ordering::SeqCst);
        assert_eq!(a.open(&sealed), Err(Dropped::Stale));

        let s = a.stats.snapshot();
        assert_eq!(
            (s.gossip_short, s.gossip_bad_tag, s.gossip_stale),
            (1, 2, 2)
        );
    }

    #[test]
    fn a_datagram_the_trailer_would_push_past_the_udp_limit_is_refused() {
        let clock = Arc::new(FixedClock(AtomicU64::new(5)));
        let a = auth(b"0123456789abcdef", "c", clock);
        let mut out = Vec::new();
        assert!(a.seal(&vec![0; MAX_DATAGRAM_BYTES - TRAILER_BYTES], &mut out));
        assert_eq!(out.len(), MAX_DATAGRAM_BYTES);
        assert!(!a.seal(&vec![0; MAX_DATAGRAM_BYTES - TRAILER_BYTES + 1], &mut out));
        assert_eq!(a.stats.snapshot().gossip_oversize, 1);
    }
}
