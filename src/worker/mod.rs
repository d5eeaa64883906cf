//! Background work as named workers (garage's shape): a [`Worker`] runs until its
//! shutdown token is cancelled, and says in one line what it is doing for
//! `/debug/workers`. The [`supervisor`] starts workers in [`Phase`]s and stops them phase
//! by phase, each phase within a deadline.

pub mod supervisor;

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use supervisor::{Registry, Stopped, Supervisor, WorkerInfo};

/// One job of a node that runs beside the requests it serves.
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// A fixed name, unique on a node: what `/debug/workers` and the logs call it.
    fn name(&self) -> &'static str;

    /// One line on what the worker is doing or did last (`/debug/workers`). Called while
    /// it runs, so it reads shared state (counters, atomics), never what `run` holds.
    fn status(&self) -> String;

    /// Does the work until `shutdown` is cancelled, or until there is none left. It must
    /// notice `shutdown` at every wait: its phase stops within a deadline, and a worker
    /// past it is cut off.
    async fn run(&self, shutdown: CancellationToken);
}

/// When a worker starts and stops. Phases start in this order and stop in the reverse
/// one: what serves clients stops first (HTTP drains), then the work that may still
/// write or call peers, then the RPC server and gossip, and the writer last, after
/// everything that could still submit a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The storage writer.
    Writer,
    /// The RPC server and gossip: peers reach this node through them.
    Network,
    /// Hints, anti-entropy, data movement, membership chores.
    Background,
    /// The HTTP API.
    Http,
}

impl Phase {
    /// The order phases start in; they stop in the reverse.
    pub const START_ORDER: [Phase; 4] = [
        Phase::Writer,
        Phase::Network,
        Phase::Background,
        Phase::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Writer => "writer",
            Phase::Network => "network",
            Phase::Background => "background",
            Phase::Http => "http",
        }
    }
}
