//! [`ringkv::net::Network`] over turmoil: the same node code, on simulated sockets.
//!
//! Every byte a node or client reads goes into the trace hash, tagged with the reader's
//! address, so two runs that deliver anything differently hash differently.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ringkv::net::{Clock, GossipAuth, Network};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gossip::{Envelopes, GossipSocket};

/// Wall-clock milliseconds at the simulation's epoch (fixed so that every run stamps
/// versions alike).
pub const EPOCH_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

#[derive(Clone)]
pub struct TurmoilNetwork {
    envelopes: Envelopes,
}

impl TurmoilNetwork {
    pub fn new(envelopes: Envelopes) -> Self {
        TurmoilNetwork { envelopes }
    }
}

/// A stream whose reads are recorded in the trace.
pub struct TracedStream {
    inner: turmoil::net::TcpStream,
    /// None: not traced (the workload's HTTP client traces parsed responses instead,
    /// without the `Date` header hyper stamps from the real clock).
    tag: Option<Vec<u8>>,
}

impl TracedStream {
    pub fn new(inner: turmoil::net::TcpStream) -> Self {
        let tag = match (inner.local_addr(), inner.peer_addr()) {
            (Ok(l), Ok(p)) => format!("tcp {l}<{p}").into_bytes(),
            _ => b"tcp".to_vec(),
        };
        TracedStream {
            inner,
            tag: Some(tag),
        }
    }

    pub async fn connect_untraced(addr: SocketAddr) -> io::Result<Self> {
        Ok(TracedStream {
            inner: turmoil::net::TcpStream::connect(addr).await?,
            tag: None,
        })
    }

    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(TracedStream::new(
            turmoil::net::TcpStream::connect(addr).await?,
        ))
    }
}

impl AsyncRead for TracedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(tag)) = (&poll, &this.tag) {
            crate::trace::record(tag, &buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for TracedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// turmoil's listener, as axum (and the RPC server) accept connections.
pub struct SimListener(turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = TracedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => return (TracedStream::new(stream), addr),
                // As axum's own listener does: a failed accept is retried after a pause.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Simulated wall-clock time: the fixed epoch plus the host's simulated elapsed time.
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
    }
}

impl Network for TurmoilNetwork {
    type Listener = SimListener;
    type Stream = TracedStream;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        Ok(SimListener(turmoil::net::TcpListener::bind(addr).await?))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        TracedStream::connect(addr).await
    }

    async fn bind_gossip(
        &self,
        addr: SocketAddr,
        auth: Option<Arc<GossipAuth>>,
    ) -> io::Result<Box<dyn chitchat::transport::Socket>> {
        Ok(Box::new(
            GossipSocket::bind(addr, self.envelopes.clone(), auth).await?,
        ))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SimClock)
    }
}

/// The simulated address of a host, by name.
pub fn host_ip(name: &str) -> IpAddr {
    turmoil::lookup(name)
}
