//! The result of one run: latency histograms per operation, errors by kind, the
//! efficiency figures, and how they print (a table, or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to one minute, to 3 significant
/// digits; slower answers are clamped to the top (and the timeout stops them first).
pub const LATENCY_MAX_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// What one worker saw, merged into the run's totals at the end.
pub struct Tally {
    pub get: Histogram<u64>,
    pub put: Histogram<u64>,
    /// Reads of a key that had no value: an answer, not an error.
    pub misses: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            get: new_histogram(),
            put: new_histogram(),
            misses: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.get.add(&other.get);
        let _ = self.put.add(&other.put);
        self.misses += other.misses;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// One operation's figures. Latencies in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OpStats {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl OpStats {
    pub fn from_histogram(h: &Histogram<u64>, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        OpStats {
            ops: h.len(),
            ops_per_sec: h.len() as f64 / secs,
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Where the servers' resources went, per operation. `None` when not measured (no
/// `--pids`/`--cgroup`, or a target without ringkv's `/metrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Efficiency {
    /// Server CPU time (user + system, every node summed) per operation.
    pub cpu_us_per_op: Option<f64>,
    /// Internode RPC bytes sent (every node summed) per operation, and per
    /// acknowledged write.
    pub internode_bytes_per_op: Option<f64>,
    pub internode_bytes_per_write: Option<f64>,
    /// Storage fsyncs (every node summed) per acknowledged write.
    pub fsyncs_per_write: Option<f64>,
    /// Writes acknowledged by the nodes, as their counters say.
    pub writes_acknowledged: Option<u64>,
}

/// The settings a run used, echoed so a result file says what it measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub target: String,
    pub urls: Vec<String>,
    pub concurrency: usize,
    pub read_ratio: f64,
    pub value_size: usize,
    pub keys: u64,
    pub key_dist: String,
    pub r: Option<String>,
    pub w: Option<String>,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// A name for this run (`--label`), used by the comparison.
    pub label: String,
    pub settings: Settings,
    pub elapsed_secs: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub get: OpStats,
    pub put: OpStats,
    pub misses: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub efficiency: Efficiency,
    /// Keys written before the measured phase.
    pub preloaded: u64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = writeln!(
            out,
            "{} ({}): {} workers, {:.1} s, read ratio {}, {} B values, {} keys ({})",
            self.label,
            s.target,
            s.concurrency,
            self.elapsed_secs,
            s.read_ratio,
            s.value_size,
            s.keys,
            s.key_dist
        );
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
        );
        for (name, op) in [("get", &self.get), ("put", &self.put)] {
            if op.ops == 0 {
                continue;
            }
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{:<6} {:>10} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                op.ops,
                op.ops_per_sec,
                ms(op.p50_us),
                ms(op.p90_us),
                ms(op.p99_us),
                ms(op.p999_us),
                ms(op.max_us)
            );
        }
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>11.0}",
            "total", self.ops, self.ops_per_sec
        );
        if self.misses > 0 {
            let _ = writeln!(out, "reads of keys without a value: {}", self.misses);
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {}", self.errors_total);
            for (kind, n) in &self.errors {
                let _ = writeln!(out, "  {kind}: {n}");
            }
        }
        let e = &self.efficiency;
        let fmt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(
            out,
            "server CPU µs/op: {}   internode bytes/op: {}   internode bytes/write: {}   fsyncs/write: {}",
            fmt(e.cpu_us_per_op, 1),
            fmt(e.internode_bytes_per_op, 0),
            fmt(e.internode_bytes_per_write, 0),
            fmt(e.fsyncs_per_write, 3)
        );
        out
    }
}
