//! What one simulated run does: the cluster, the workload, the faults and the timings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::sabotage::Sabotage;

/// The nemesis: which faults a run suffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// No faults: the baseline.
    None,
    /// Random halves, then heal.
    Partition,
    /// One node cut off from the others.
    Isolate,
    /// A non-transitive partition: two sides that only one node connects.
    Bridge,
    /// Clog nodes one at a time, then unclog them in random order.
    Clog,
    /// Crash and restart with the disk kept; sometimes several or all nodes at once.
    Crash,
    /// Links drop messages at a rate.
    Loss,
    /// A node joins and another leaves during the load.
    Churn,
    /// A random mix of the faults above (partition to churn).
    All,
    /// Operator mistakes: a forced remove of a live member, then a restart of the removed
    /// node on its old data dir (which must refuse to start).
    Operator,
    /// The fault mix of `all`, with values large enough that bulk messages (hints, data
    /// movement, anti-entropy) must be split by bytes to fit a frame.
    LargeValues,
    /// The fault mix of `all`, with one client sending forged causality tokens.
    Hostile,
}

impl Scenario {
    /// Every named scenario a sweep of `all` covers.
    pub const EVERY: [Scenario; 11] = [
        Scenario::Partition,
        Scenario::Isolate,
        Scenario::Bridge,
        Scenario::Clog,
        Scenario::Crash,
        Scenario::Loss,
        Scenario::Churn,
        Scenario::All,
        Scenario::Operator,
        Scenario::LargeValues,
        Scenario::Hostile,
    ];

    /// The network and process faults that `all` (and the workload scenarios) mix.
    pub const FAULTS: [Scenario; 7] = [
        Scenario::Partition,
        Scenario::Isolate,
        Scenario::Bridge,
        Scenario::Clog,
        Scenario::Crash,
        Scenario::Loss,
        Scenario::Churn,
    ];

    /// Bytes of each value the clients write: large in `large-values`, small otherwise.
    pub fn value_bytes(self) -> usize {
        match self {
            Scenario::LargeValues => LARGE_VALUE_BYTES,
            _ => 0,
        }
    }

    /// Whether one client forges causality tokens.
    pub fn hostile(self) -> bool {
        self == Scenario::Hostile
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Partition => "partition",
            Scenario::Isolate => "isolate",
            Scenario::Bridge => "bridge",
            Scenario::Clog => "clog",
            Scenario::Crash => "crash",
            Scenario::Loss => "loss",
            Scenario::Churn => "churn",
            Scenario::All => "all",
            Scenario::Operator => "operator",
            Scenario::LargeValues => "large-values",
            Scenario::Hostile => "hostile",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Scenario::None]
            .into_iter()
            .chain(Scenario::EVERY)
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                format!("unknown scenario {s:?}: none, partition, isolate, bridge, clog, crash, loss, churn, all, operator, large-values, hostile")
            })
    }
}

/// The size of a value in `large-values`. With [`LARGE_VALUES_FRAME_BYTES`] as the nodes'
/// frame limit, a dozen such values fill a frame, so any bulk message that is bounded by
/// count rather than by bytes overflows it within one run.
pub const LARGE_VALUE_BYTES: usize = 96 * 1024;
/// The nodes' internode frame limit in `large-values`.
pub const LARGE_VALUES_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// redb on turmoil's simulated disk: crashes lose what was not synced.
    Disk,
    /// The in-memory store, kept across restarts: faster, and crashes lose nothing.
    Memory,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes at the start (churn adds one more).
    pub nodes: usize,
    /// How long the load and the faults last.
    pub duration: Duration,
    pub scenario: Scenario,
    pub clients: usize,
    /// The key space: small, so that conflicts are frequent.
    pub keys: usize,
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub storage: Storage,
    pub sabotage: Sabotage,
    /// Simulated time per step.
    pub tick: Duration,
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// Per-step chance that a link drops what is in flight, in the `loss` scenario.
    pub loss_rate: f64,
    /// Mean pause between two faults.
    pub fault_interval: Duration,
    /// Mean length of one fault.
    pub fault_length: Duration,
    /// After the final heal: time for hints, read repair and anti-entropy to converge.
    pub settle: Duration,
    pub gossip_interval: Duration,
    pub anti_entropy_interval: Duration,
    pub handoff_interval: Duration,
    pub rpc_timeout: Duration,
    /// The node's default request timeout.
    pub request_timeout: Duration,
    /// How long a client waits for an answer.
    pub client_timeout: Duration,
    /// A client's pause between two operations.
    pub think: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 5,
            duration: Duration::from_secs(20),
            scenario: Scenario::All,
            clients: 4,
            keys: 6,
            n: 3,
            r: 2,
            w: 2,
            storage: Storage::Disk,
            sabotage: Sabotage::None,
            tick: Duration::from_millis(2),
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(20),
            loss_rate: 0.01,
            fault_interval: Duration::from_secs(2),
            fault_length: Duration::from_secs(3),
            settle: Duration::from_secs(30),
            gossip_interval: Duration::from_millis(200),
            anti_entropy_interval: Duration::from_secs(3),
            handoff_interval: Duration::from_millis(500),
            rpc_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_secs(2),
            client_timeout: Duration::from_secs(4),
            think: Duration::from_millis(40),
        }
    }
}
