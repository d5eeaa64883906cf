//! The production [`Network`]: tokio sockets and the system clock.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Clock, Network, SystemClock};

#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

impl Network for TokioNetwork {
    type HttpListener = tokio::net::TcpListener;

    async fn bind_http(&self, addr: SocketAddr) -> io::Result<Self::HttpListener> {
        tokio::net::TcpListener::bind(addr).await
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}
