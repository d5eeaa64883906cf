//! Per-peer read latency estimates: which replicas a read asks first, and how long it
//! waits for one before asking another (the speculative-retry delay).
//!
//! Each estimate is the smoothed mean and mean deviation of TCP's retransmit timer
//! (Jacobson/Karels, RFC 6298): two integers per peer, updated in O(1), no histogram to
//! sort on the hot path. Mean + 4 deviations stands in for a high percentile; it is an
//! estimate, and the speculative delay clamps it between a floor and the RPC timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::cluster::NodeId;

/// One peer's latency, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    mean_us: u64,
    dev_us: u64,
}

/// Samples are clamped here: a peer cannot make its estimate overflow, and an hour is past
/// any RPC timeout.
const SAMPLE_MAX_US: u64 = 3_600_000_000;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(SAMPLE_MAX_US)
}

impl Estimate {
    /// The first sample: the deviation starts at half of it, as RFC 6298 does, so that a
    /// single sample does not look precise.
    pub fn first(sample: Duration) -> Self {
        let s = micros(sample);
        Estimate {
            mean_us: s,
            dev_us: s / 2,
        }
    }

    /// Folds in one sample: mean gains 1/8 of the error, deviation 1/4 of its change.
    pub fn observe(&mut self, sample: Duration) {
        let s = micros(sample);
        let err = self.mean_us.abs_diff(s);
        self.dev_us = self.dev_us - self.dev_us / 4 + err / 4;
        self.mean_us = self.mean_us - self.mean_us / 8 + s / 8;
    }

    pub fn mean(&self) -> Duration {
        Duration::from_micros(self.mean_us)
    }

    /// Mean + 4 deviations: the latency few replies exceed.
    pub fn high(&self) -> Duration {
        Duration::from_micros(self.mean_us.saturating_add(self.dev_us.saturating_mul(4)))
    }
}

/// Peers tracked at most: past it, the table starts over (estimates relearn in a few
/// reads). Member ids are bounded by gossip's own bound; this only keeps the table from
/// growing with ids that come and go.
const MAX_PEERS: usize = 1024;

/// Used for the delay while no peer asked has an estimate yet (a node that just started).
pub const COLD_DELAY: Duration = Duration::from_millis(50);

/// Below this, a speculative retry would fire on ordinary scheduling noise of a busy
/// machine and double the reads for nothing.
pub const SPECULATIVE_FLOOR: Duration = Duration::from_millis(10);

/// The estimates of every peer this node reads from.
#[derive(Debug, Default)]
pub struct PeerLatencies {
    // A std mutex: held for a map lookup and two integer updates, never across an await.
    peers: Mutex<HashMap<NodeId, Estimate>>,
}

impl PeerLatencies {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<NodeId, Estimate>) -> T) -> T {
        // A panic elsewhere while holding the lock cannot leave an estimate half-updated
        // in a harmful way: the worst is a stale estimate.
        let mut guard = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A reply from `peer` after `took`.
    pub fn observe(&self, peer: NodeId, took: Duration) {
        self.with(|m| {
            if let Some(e) = m.get_mut(&peer) {
                e.observe(took);
                return;
            }
            if m.len() >= MAX_PEERS {
                m.clear();
            }
            m.insert(peer, Estimate::first(took));
        });
    }

    /// A call to `peer` that failed: counted as a reply that took `penalty` (the RPC
    /// timeout), so a failing peer ranks behind the ones that answer.
    pub fn observe_failure(&self, peer: NodeId, penalty: Duration) {
        self.observe(peer, penalty);
    }

    /// A call abandoned after `waited` without a reply (the read was answered by others):
    /// the peer took at least that long. Counted only when it says more than the estimate
    /// already does, so calls cut short by a quick quorum do not drag estimates down.
    pub fn observe_at_least(&self, peer: NodeId, waited: Duration) {
        let known_high = self.estimate(peer).map(|e| e.high());
        if known_high.is_none_or(|high| waited > high) {
            self.observe(peer, waited);
        }
    }

    pub fn estimate(&self, peer: NodeId) -> Option<Estimate> {
        self.with(|m| m.get(&peer).copied())
    }

    /// Sorts `peers` fastest first by mean latency, in whole milliseconds so that peers
    /// about as fast keep their order (the preference list's, which spreads the load over
    /// keys) instead of all reads chasing whichever was a few µs faster last. A peer
    /// without an estimate goes first: asking it is how it gets one.
    pub fn rank(&self, peers: &mut [NodeId]) {
        self.with(|m| {
            peers.sort_by_key(|id| m.get(id).map_or(0, |e| e.mean_us / 1000));
        });
    }

    /// How long a read waits for the peers in `asked` before asking one more: the highest
    /// of their high estimates ([`COLD_DELAY`] for one without), clamped to
    /// `[SPECULATIVE_FLOOR, ceiling]`.
    pub fn speculative_delay(&self, asked: &[NodeId], ceiling: Duration) -> Duration {
        let highest = self.with(|m| {
            asked
                .iter()
                .map(|id| m.get(id).map_or(COLD_DELAY, Estimate::high))
                .max()
                .unwrap_or(COLD_DELAY)
        });
        highest.min(ceiling).max(SPECULATIVE_FLOOR.min(ceiling))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_latency_converges_with_a_small_deviation() {
        let mut e = Estimate::first(ms(10));
        for _ in 0..100 {
            e.observe(ms(1));
        }
        assert!(
            e.mean() >= ms(1) && e.mean() < Duration::from_micros(1100),
            "{e:?}"
        );
        assert!(e.high() < ms(2), "{e:?}");
    }

    #[test]
    fn an_outlier_raises_the_high_estimate_more_than_the_mean() {
        let mut e = Estimate::first(ms(1));
        for _ in 0..50 {
            e.observe(ms(1));
        }
        e.observe(ms(100));
        assert!(e.mean() < ms(15), "{e:?}");
        assert!(e.high() > ms(60), "{e:?}");
    }

    #[test]
    fn a_failing_peer_ranks_behind_and_unknown_peers_first() {
        let l = PeerLatencies::default();
        for _ in 0..5 {
            l.observe(NodeId(1), ms(3));
            l.observe(NodeId(2), ms(1));
        }
        l.observe_failure(NodeId(2), ms(2000));
        let mut peers = [NodeId(1), NodeId(2), NodeId(3)];
        l.rank(&mut peers);
        assert_eq!(peers, [NodeId(3), NodeId(1), NodeId(2)]);
    }

    #[test]
    fn peers_within_a_millisecond_keep_their_order() {
        let l = PeerLatencies::default();
        l.observe(NodeId(1), Duration::from_micros(900));
        l.observe(NodeId(2), Duration::from_micros(300));
        let mut peers = [NodeId(1), NodeId(2)];
        l.rank(&mut peers);
        assert_eq!(peers, [NodeId(1), NodeId(2)]);
    }

    #[test]
    fn the_delay_is_clamped_and_cold_peers_use_the_cold_delay() {
        let l = PeerLatencies::default();
        let ceiling = ms(2000);
        assert_eq!(l.speculative_delay(&[NodeId(1)], ceiling), COLD_DELAY);
        l.observe(NodeId(1), Duration::from_micros(100));
        assert_eq!(
            l.speculative_delay(&[NodeId(1)], ceiling),
            SPECULATIVE_FLOOR
        );
        l.observe(NodeId(2), ms(10_000));
        assert_eq!(
            l.speculative_delay(&[NodeId(1), NodeId(2)], ceiling),
            ceiling
        );
        // A ceiling under the floor wins: the delay never exceeds one RPC.
        assert_eq!(l.speculative_delay(&[NodeId(1)], ms(3)), ms(3));
    }

    #[test]
    fn an_abandoned_call_only_raises_an_estimate() {
        let l = PeerLatencies::default();
        for _ in 0..20 {
            l.observe(NodeId(1), ms(5));
        }
        let before = l.estimate(NodeId(1)).unwrap();
        l.observe_at_least(NodeId(1), ms(1));
        assert_eq!(l.estimate(NodeId(1)).unwrap(), before);
        l.observe_at_least(NodeId(1), ms(500));
        assert!(l.estimate(NodeId(1)).unwrap().mean() > before.mean());
    }

    #[test]
    fn the_table_is_bounded() {
        let l = PeerLatencies::default();
        for id in 0..(MAX_PEERS as u64 * 2 + 7) {
            l.observe(NodeId(id), ms(1));
        }
        assert!(l.with(|m| m.len()) <= MAX_PEERS);
    }

    proptest! {
        /// Whatever the samples, the estimate stays within them: the mean between the
        /// smallest and largest sample, and no arithmetic overflows on extreme ones.
        #[test]
        fn the_mean_stays_within_the_samples(samples in proptest::collection::vec(0u64..u64::MAX, 1..200)) {
            let ds: Vec<Duration> = samples.iter().map(|s| Duration::from_micros(*s)).collect();
            let mut e = Estimate::first(ds[0]);
            for d in &ds[1..] {
                e.observe(*d);
            }
            let lo = ds.iter().map(|d| micros(*d)).min().unwrap();
            let hi = ds.iter().map(|d| micros(*d)).max().unwrap();
            // Integer division loses at most 1 µs per step toward zero.
            let slack = ds.len() as u64;
            prop_assert!(e.mean_us <= hi, "{e:?} hi {hi}");
            prop_assert!(e.mean_us + slack >= lo, "{e:?} lo {lo}");
            prop_assert!(e.high() >= e.mean());
        }

        /// The delay is always within [min(floor, ceiling), ceiling].
        #[test]
        fn the_delay_is_always_within_its_bounds(
            samples in proptest::collection::vec((0u64..4, 0u64..10_000_000), 0..50),
            ceiling_ms in 1u64..10_000,
        ) {
            let l = PeerLatencies::default();
            for (id, us) in &samples {
                l.observe(NodeId(*id), Duration::from_micros(*us));
            }
            let ceiling = ms(ceiling_ms);
            let d = l.speculative_delay(&[NodeId(0), NodeId(1)], ceiling);
            prop_assert!(d <= ceiling && d >= SPECULATIVE_FLOOR.min(ceiling));
        }
    }
}
