//! The production [`Network`]: tokio sockets, chitchat's UDP transport, the system clock.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Clock, GossipAuth, Network, SignedUdpSocket, SystemClock};

#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

impl Network for TokioNetwork {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        // Internode calls are small request/response frames: Nagle only adds latency.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn bind_gossip(
        &self,
        addr: SocketAddr,
        auth: Option<Arc<GossipAuth>>,
    ) -> io::Result<Box<dyn chitchat::transport::Socket>> {
        if let Some(auth) = auth {
            return Ok(Box::new(SignedUdpSocket::open(addr, auth).await?));
        }
        let socket = chitchat::transport::UdpSocket::open(addr)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, format!("{e:#}")))?;
        Ok(Box::new(socket))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}
