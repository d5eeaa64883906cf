//! The network seam: everything a node needs from the outside world — listeners, and the
//! clock — comes through [`Network`]. Production uses [`TokioNetwork`]; the simulation
//! (`sim/`) implements the same trait over turmoil, so the same node code runs in both.

mod limit;
mod tokio_net;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use limit::{LimitedIo, LimitedListener};
pub use tokio_net::TokioNetwork;

/// Wall-clock time, for the timestamps versions carry. Intervals and timeouts use
/// `tokio::time`, which the simulation controls already.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

pub trait Network: Send + Sync + 'static {
    type HttpListener: axum::serve::Listener<Addr = SocketAddr>;

    fn bind_http(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::HttpListener>> + Send;

    fn clock(&self) -> Arc<dyn Clock>;
}
