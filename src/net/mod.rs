//! The network seam: everything a node needs from the outside world — listeners, outbound
//! connections, the gossip transport and the clock — comes through [`Network`]. Production
//! uses [`TokioNetwork`]; the simulation (`sim/`) implements the same trait over turmoil, so
//! the same node code runs in both. Node code never names `tokio::net`.

mod limit;
pub mod signed_gossip;
mod signed_udp;
pub mod tls;
mod tokio_net;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

pub use limit::{ConnectionSlots, LimitedIo, LimitedListener, Slot};
pub use signed_gossip::{GossipAuth, GossipDrops};
pub use signed_udp::SignedUdpSocket;
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

/// A byte stream between two nodes.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub trait Network: Send + Sync + 'static {
    /// A TCP-like listener. axum's `Listener` trait serves for the HTTP API and for the
    /// internode RPC alike: accept, and the bound address.
    type Listener: axum::serve::Listener<Addr = SocketAddr>;
    /// An outbound connection.
    type Stream: Stream;

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// A bound datagram socket for chitchat's gossip. Binding here, before chitchat starts,
    /// lets a node bind port 0 and advertise the port it got. With `auth`, every datagram
    /// is sealed on the way out and checked on the way in ([`signed_gossip`]); the network
    /// applies it because only it sees the datagrams' bytes.
    fn bind_gossip(
        &self,
        addr: SocketAddr,
        auth: Option<Arc<GossipAuth>>,
    ) -> impl Future<Output = io::Result<Box<dyn chitchat::transport::Socket>>> + Send;

    fn clock(&self) -> Arc<dyn Clock>;
}
