//! Request latencies of this node's HTTP API, by operation and status class.
//!
//! [`RequestStats::window`] gives the last [`WINDOW_SECS`] complete seconds of the KV
//!   operations (ops/s, p50, p99, per operation) and a per-second history of the last
//!   [`HISTORY_SECS`], for the dashboard's charts (`/debug/dashboard`).
//!
//! Operations are a closed set ([`Op::ALL`], shared with `/metrics`' `stats::http_requests`,
//! which counts every request since start): a key name never becomes a map key here. Memory is fixed: [`WINDOW_SECS`] histograms and
//! [`HISTORY_SECS`] summaries, whatever the request rate.
//!
//! Time is `tokio::time`, which the simulation controls. The latency recorded is until
//! the response head is ready (`http::record_request`), not until a streamed body (a long
//! listing) is sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// The seconds the rolling ops/s and percentiles cover.
pub const WINDOW_SECS: u64 = 10;
/// The per-second summaries kept for the charts.
pub const HISTORY_SECS: usize = 60;
/// Latencies above this are recorded as this: a request that slow is a timeout anyway.
const MAX_MICROS: u64 = 60_000_000;
/// Two significant digits: a percentile is within 1% of the true value, and each
/// histogram is about 10 KiB.
const SIGFIG: u8 = 2;

pub use super::http_requests::Op;

/// A response status, in three classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusClass {
    /// Below 400.
    Ok,
    /// 4xx: the client's mistake (a 404 over a missing key is one too).
    ClientError,
    /// 5xx: the node's or the cluster's (quorum failed, overloaded, storage).
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 3] = [
        StatusClass::Ok,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: u16) -> StatusClass {
        match status {
            0..=399 => StatusClass::Ok,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    /// The label an exporter uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Ok => "ok",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// One complete second of KV requests, as the charts draw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SecondJson {
    pub count: u64,
    /// Answered 5xx.
    pub errors: u64,
    /// `None` in a second without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The rolling window of KV requests ([`RequestStats::window`]).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RequestWindow {
    /// The seconds covered: [`WINDOW_SECS`], fewer just after the node started.
    pub window_secs: u64,
    pub ops_per_sec: f64,
    /// 5xx answers per second.
    pub errors_per_sec: f64,
    /// `None` when the window holds no request.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests per second by operation (`get`, `put`, …), every KV operation listed.
    pub by_op: BTreeMap<String, f64>,
    /// The last complete seconds, oldest first, at most [`HISTORY_SECS`].
    pub history: Vec<SecondJson>,
}

/// One second's slot of the window.
struct Slot {
    /// The second (since the recorder started) the slot holds; `u64::MAX` for none yet.
    second: u64,
    latency: Histogram<u32>,
    by_op: [u64; Op::ALL.len()],
    errors: u64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: u64::MAX,
            latency: histogram(),
            by_op: [0; Op::ALL.len()],
            errors: 0,
        }
    }

    fn reset(&mut self, second: u64) {
        self.second = second;
        self.latency.reset();
        self.by_op = [0; Op::ALL.len()];
        self.errors = 0;
    }

    fn summary(&self) -> SecondJson {
        let count = self.latency.len();
        SecondJson {
            count,
            errors: self.errors,
            p50_ms: quantile_ms(&self.latency, 0.5),
            p99_ms: quantile_ms(&self.latency, 0.99),
        }
    }
}

struct Window {
    /// Indexed by second modulo [`WINDOW_SECS`].
    slots: Vec<Slot>,
    /// Every second before this one is summarised in `history`.
    closed_until: u64,
    history: VecDeque<SecondJson>,
}

impl Window {
    /// Summarises every second before `now` not summarised yet. A second's slot is only
    /// reused [`WINDOW_SECS`] later, by a request of that later second, which calls this
    /// first: a second is always summarised from its own slot.
    fn close_until(&mut self, now: u64) {
        if now <= self.closed_until {
            return;
        }
        // Seconds older than the history would be dropped at once: skip them.
        let from = self
            .closed_until
            .max(now.saturating_sub(HISTORY_SECS as u64));
        for second in from..now {
            let slot = &self.slots[slot_index(second)];
            let summary = if slot.second == second {
                slot.summary()
            } else {
                SecondJson::default()
            };
            if self.history.len() == HISTORY_SECS {
                self.history.pop_front();
            }
            self.history.push_back(summary);
        }
        self.closed_until = now;
    }
}

/// The request recorder of one node. Cheap to call on every request: a few atomics and a
/// short critical section (one histogram record).
pub struct RequestStats {
    started: Instant,
    window: Mutex<Window>,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats::new()
    }
}

impl std::fmt::Debug for RequestStats {
    // Not derived: the histograms are kilobytes of buckets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStats").finish_non_exhaustive()
    }
}

impl RequestStats {
    pub fn new() -> RequestStats {
        RequestStats::starting_at(Instant::now())
    }

    fn starting_at(started: Instant) -> RequestStats {
        RequestStats {
            started,
            window: Mutex::new(Window {
                slots: (0..WINDOW_SECS).map(|_| Slot::new()).collect(),
                closed_until: 0,
                history: VecDeque::with_capacity(HISTORY_SECS),
            }),
        }
    }

    /// Records one answered request: its operation, its status code, and how long it took.
    pub fn record(&self, op: Op, status: u16, latency: Duration) {
        self.record_at(None, op, status, latency);
    }

    /// `now` is read under the lock unless given (tests): so seconds reach the window in
    /// order, and a second is summarised only once every request in it is recorded.
    fn record_at(&self, now: Option<Instant>, op: Op, status: u16, latency: Duration) {
        let class = StatusClass::of(status);
        if !op.is_kv() {
            return;
        }
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        let mut window = self.lock();
        let second = self.second_of(now.unwrap_or_else(Instant::now));
        window.close_until(second);
        let slot = &mut window.slots[slot_index(second)];
        if slot.second != second {
            slot.reset(second);
        }
        // Within the bounds by the clamp above; saturating all the same.
        slot.latency.saturating_record(micros);
        slot.by_op[op.index()] += 1;
        if class == StatusClass::ServerError {
            slot.errors += 1;
        }
    }

    /// The last [`WINDOW_SECS`] complete seconds of KV requests, and the history.
    pub fn window(&self) -> RequestWindow {
        self.window_at(None)
    }

    fn window_at(&self, now: Option<Instant>) -> RequestWindow {
        // The time under the lock, as in `record_at`.
        let mut window = self.lock();
        let now = self.second_of(now.unwrap_or_else(Instant::now));
        window.close_until(now);
        let from = now.saturating_sub(WINDOW_SECS);
        let covered = now - from;
        let mut latency = histogram();
        let mut by_op = [0u64; Op::ALL.len()];
        let mut errors = 0;
        for slot in window
            .slots
            .iter()
            .filter(|s| s.second >= from && s.second < now)
        {
            // Same bounds on both sides: adding cannot fail.
            let _ = latency.add(&slot.latency);
            for (sum, n) in by_op.iter_mut().zip(slot.by_op) {
                *sum += n;
            }
            errors += slot.errors;
        }
        let rate = |n: u64| {
            if covered == 0 {
                0.0
            } else {
                n as f64 / covered as f64
            }
        };
        RequestWindow {
            window_secs: covered,
            ops_per_sec: rate(latency.len()),
            errors_per_sec: rate(errors),
            p50_ms: quantile_ms(&latency, 0.5),
            p99_ms: quantile_ms(&latency, 0.99),
            by_op: Op::ALL
                .iter()
                .filter(|op| op.is_kv())
                .map(|&op| (op.name().to_owned(), rate(by_op[op.index()])))
                .collect(),
            history: window.history.iter().cloned().collect(),
        }
    }

    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding the lock leaves counts at worst half-updated: still fine
        // to report, so a poisoned lock is taken over rather than propagated.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn slot_index(second: u64) -> usize {
    // Below WINDOW_SECS, which is small: the cast cannot truncate.
    (second % WINDOW_SECS) as usize
}

fn histogram() -> Histogram<u32> {
    // Constant, valid bounds (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("valid histogram bounds")
}

fn quantile_ms(h: &Histogram<u32>, q: f64) -> Option<f64> {
    // Microseconds to milliseconds, rounded to the microsecond.
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Within the histogram's precision (two significant digits).
    fn near(got: Option<f64>, want: f64, tolerance: f64) {
        let got = got.expect("a percentile");
        assert!(
            (got - want).abs() <= tolerance,
            "{got} is not {want} ± {tolerance}"
        );
    }

    #[test]
    fn statuses_fall_in_three_classes() {
        assert_eq!(StatusClass::of(200), StatusClass::Ok);
        assert_eq!(StatusClass::of(304), StatusClass::Ok);
        assert_eq!(StatusClass::of(404), StatusClass::ClientError);
        assert_eq!(StatusClass::of(503), StatusClass::ServerError);
    }

    #[test]
    fn the_window_covers_the_last_complete_seconds_of_kv_requests() {
        let t0 = Instant::now();
        let stats = RequestStats::starting_at(t0);
        let at = |s: u64, ms: u64| t0 + Duration::from_secs(s) + Duration::from_millis(ms);
        // Seconds 0..4: 10 gets a second at 1 ms, and one put at 100 ms in second 2.
        for s in 0..4 {
            for i in 0..10 {
                stats.record_at(Some(at(s, i)), Op::Get, 200, MS);
            }
            if s == 2 {
                stats.record_at(Some(at(2, 500)), Op::Put, 500, 100 * MS);
            }
        }
        // The dashboard's own polling is not load.
        stats.record_at(Some(at(3, 0)), Op::Other, 200, MS);
        // Second 4 is not complete: left out.
        stats.record_at(Some(at(4, 0)), Op::Get, 200, MS);

        let w = stats.window_at(Some(at(4, 500)));
        assert_eq!(w.window_secs, 4);
        assert!((w.ops_per_sec - 41.0 / 4.0).abs() < 1e-9, "{w:?}");
        assert!((w.errors_per_sec - 0.25).abs() < 1e-9, "{w:?}");
        assert!((w.by_op["get"] - 10.0).abs() < 1e-9, "{w:?}");
        assert!((w.by_op["put"] - 0.25).abs() < 1e-9, "{w:?}");
        assert_eq!(w.by_op.len(), 6, "every KV op, no other: {w:?}");
        near(w.p50_ms, 1.0, 0.01);
        // 41 requests: the 99th percentile is the slowest one.
        near(w.p99_ms, 100.0, 1.0);
        assert_eq!(w.history.len(), 4);
        assert_eq!(w.history[2].count, 11);
        assert_eq!(w.history[2].errors, 1);
        assert_eq!(w.history[0].count, 10);
        near(w.history[0].p99_ms, 1.0, 0.01);

        // 30 s later, with nothing in between: the window is empty, the history holds
        // the quiet seconds as zeros and still the old ones within its length.
        let w = stats.window_at(Some(at(34, 0)));
        assert_eq!(w.window_secs, WINDOW_SECS);
        assert_eq!(w.ops_per_sec, 0.0);
        assert_eq!(w.p50_ms, None);
        assert_eq!(w.history.len(), 34);
        assert_eq!(w.history[4].count, 1, "second 4's request");
        assert!(w.history[5..]
            .iter()
            .all(|s| s.count == 0 && s.p50_ms.is_none()));
    }

    #[test]
    fn memory_stays_bounded_over_a_long_run() {
        let t0 = Instant::now();
        let stats = RequestStats::starting_at(t0);
        // Two requests a second for 10 minutes, then a gap of an hour.
        for s in 0..600 {
            let now = t0 + Duration::from_secs(s);
            stats.record_at(Some(now), Op::Get, 200, MS);
            stats.record_at(Some(now), Op::Head, 200, 2 * MS);
        }
        let w = stats.window_at(Some(t0 + Duration::from_secs(600)));
        assert_eq!(w.history.len(), HISTORY_SECS);
        assert!((w.ops_per_sec - 2.0).abs() < 1e-9, "{w:?}");
        assert!(w.history.iter().all(|s| s.count == 2));
        assert_eq!(stats.lock().slots.len(), WINDOW_SECS as usize);
        let w = stats.window_at(Some(t0 + Duration::from_secs(4200)));
        assert_eq!(w.history.len(), HISTORY_SECS);
        assert!(w.history.iter().all(|s| s.count == 0));
        // A latency past the histogram's range is recorded at its top, not dropped.
        stats.record_at(
            Some(t0 + Duration::from_secs(4200)),
            Op::Get,
            200,
            Duration::from_secs(3600),
        );
        let w = stats.window_at(Some(t0 + Duration::from_secs(4201)));
        assert_eq!(w.history.last().map(|s| s.count), Some(1));
        near(w.p99_ms, 60_000.0, 600.0);
    }
}
