//! The histograms `/metrics` exports, with the buckets every one of a kind shares, so that
//! dashboards can add them up across nodes and operations.
//!
//! prometheus-client's [`Histogram`] records under a short lock (never held across an
//! await); the wrappers here only fix the buckets and give it a `Default`, so that the
//! stats structs that hold one stay `Default` too.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets, in seconds: half a millisecond (a local read) up to the 10 s past which
/// every request of ours has timed out.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Size buckets (items per batch): powers of two up to 4096, past `--max-batch` defaults.
pub const SIZE_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A duration in seconds, as Prometheus wants it.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A histogram of durations, in seconds, over [`LATENCY_BUCKETS`].
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Histogram::new(LATENCY_BUCKETS.into_iter()))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        self.0.observe(seconds(d));
    }

    /// For the encoder.
    pub fn histogram(&self) -> &Histogram {
        &self.0
    }
}

/// A histogram of counts (items per batch) over [`SIZE_BUCKETS`].
#[derive(Debug, Clone)]
pub struct SizeHistogram(Histogram);

impl Default for SizeHistogram {
    fn default() -> Self {
        SizeHistogram(Histogram::new(SIZE_BUCKETS.into_iter()))
    }
}

impl SizeHistogram {
    pub fn observe(&self, n: u64) {
        self.0.observe(n as f64);
    }

    pub fn histogram(&self) -> &Histogram {
        &self.0
    }
}

/// A latency histogram made on first use: a label set that never occurs costs one word
/// and is not exported (a series that never moved says nothing).
#[derive(Debug, Default)]
pub struct LazyLatency(OnceLock<LatencyHistogram>);

impl LazyLatency {
    pub fn observe(&self, d: Duration) {
        self.0.get_or_init(LatencyHistogram::default).observe(d);
    }

    /// The histogram, once anything was observed.
    pub fn get(&self) -> Option<&Histogram> {
        self.0.get().map(LatencyHistogram::histogram)
    }
}
