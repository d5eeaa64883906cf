//! The scrub: checks the records nobody reads, a bounded slice per round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::kv::LocalKv;
use crate::worker::Worker;

/// Records checked per scrub round: a bounded read, a small share of a round's work.
const SCRUB_ROWS: usize = 4096;

/// Walks the data table [`SCRUB_ROWS`] records per `interval`, round and round, checking
/// each (see [`LocalKv::scrub`]). Reads check records as they go; this checks the ones
/// nobody reads, at the pace of anti-entropy, which then restores what it dropped. So an
/// interval of zero turns it off, as it does anti-entropy.
pub struct Scrub {
    pub local: LocalKv,
    pub interval: Duration,
    /// Corrupt records found since start.
    corrupt: AtomicU64,
}

impl Scrub {
    pub fn new(local: LocalKv, interval: Duration) -> Self {
        Scrub {
            local,
            interval,
            corrupt: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Worker for Scrub {
    fn name(&self) -> &'static str {
        "scrub"
    }

    fn status(&self) -> String {
        if self.interval.is_zero() {
            return "off (it runs at --anti-entropy-interval, which is 0)".to_owned();
        }
        format!(
            "every {}: {} corrupt record(s) found",
            humantime::format_duration(self.interval),
            self.corrupt.load(Ordering::Relaxed)
        )
    }

    async fn run(&self, shutdown: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let mut cursor: Option<Vec<u8>> = None;
        let mut timer = tokio::time::interval(self.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.local.scrub(cursor.as_deref(), SCRUB_ROWS) {
                Ok((next, corrupt)) => {
                    if corrupt > 0 {
                        self.corrupt.fetch_add(corrupt as u64, Ordering::Relaxed);
                        tracing::warn!(
                            corrupt,
                            "scrub found corrupt records; anti-entropy restores them"
                        );
                    }
                    cursor = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scrub failed; starting over next round");
                    cursor = None;
                }
            }
        }
    }
}
