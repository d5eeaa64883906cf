//! The production gossip socket with signed datagrams: chitchat's own UDP socket as the
//! codec, relayed over loopback, and a public UDP socket that carries sealed datagrams.
//!
//! chitchat's `Socket` trait hands over envelopes, and the envelope's wire encoding is
//! crate-private: the only code that turns an envelope into bytes (and back) is
//! chitchat's `UdpSocket`. So this socket keeps one, the *codec*, bound on loopback, with
//! a *tap* beside it. To send, the codec sends the envelope to the tap; the tap's bytes
//! are sealed ([`GossipAuth::seal`]) and go out of the public socket. To receive, a sealed
//! datagram is opened ([`GossipAuth::open`]) and its payload handed from the tap to the
//! codec, which decodes it; the envelope is returned as from the datagram's real sender.
//!
//! A loopback send is delivered (or dropped, with a full buffer) before `send_to` returns,
//! so the tap's read right after the codec's send needs no wait: nothing there means the
//! datagram was lost, as a UDP datagram may be. Datagrams that reach the codec or the tap
//! from anywhere but each other are ignored.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket};
use chitchat::ChitchatEnvelope;

use super::signed_gossip::{GossipAuth, MAX_DATAGRAM_BYTES};

/// How long the codec may take to decode a payload that is already in its buffer. A
/// payload that passed the tag but does not decode (a keyed peer speaking another
/// chitchat version) is dropped after it, instead of blocking the receive loop.
const DECODE_WAIT: Duration = Duration::from_millis(200);

pub struct SignedUdpSocket {
    public: tokio::net::UdpSocket,
    codec: chitchat::transport::UdpSocket,
    codec_addr: SocketAddr,
    /// Non-blocking std socket: every read of it follows a loopback send that has
    /// completed, so it never needs to wait.
    tap: std::net::UdpSocket,
    tap_addr: SocketAddr,
    auth: Arc<GossipAuth>,
    buf: Vec<u8>,
    sealed: Vec<u8>,
    /// A payload handed to the codec whose envelope has not been taken yet (the receive
    /// was cancelled in between): its real sender.
    pending: Option<SocketAddr>,
}

impl SignedUdpSocket {
    pub async fn open(addr: SocketAddr, auth: Arc<GossipAuth>) -> io::Result<Self> {
        let public = tokio::net::UdpSocket::bind(addr).await?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = chitchat::transport::UdpSocket::open(loopback)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, format!("{e:#}")))?;
        let codec_addr = codec
            .local_addr()
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        let tap = std::net::UdpSocket::bind(loopback)?;
        tap.set_nonblocking(true)?;
        let tap_addr = tap.local_addr()?;
        Ok(SignedUdpSocket {
            public,
            codec,
            codec_addr,
            tap,
            tap_addr,
            auth,
            buf: vec![0; MAX_DATAGRAM_BYTES],
            sealed: Vec::with_capacity(MAX_DATAGRAM_BYTES),
            pending: None,
        })
    }

    /// The next datagram the codec sent the tap, if one is there now.
    fn tap_read(&mut self) -> io::Result<Option<usize>> {
        loop {
            match self.tap.recv_from(&mut self.buf) {
                Ok((n, from)) if from == self.codec_addr => return Ok(Some(n)),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait::async_trait]
impl Socket for SignedUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Whatever an earlier, cancelled send left in the tap is not this envelope.
        while self.tap_read()?.is_some() {}
        self.codec.send(self.tap_addr, envelope).await?;
        let Some(n) = self.tap_read()? else {
            tracing::debug!("gossip datagram lost on loopback");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let payload = self.buf.get(..n).unwrap_or_default();
        if !self.auth.seal(payload, &mut self.sealed) {
            tracing::warn!(
                bytes = n,
                "gossip datagram too large to sign; not sent (the cluster state outgrows one datagram)"
            );
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let num_bytes_sent = self
            .public
            .send_to(&self.sealed, to)
            .await
            .context("failed to send a gossip datagram")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel safe, as chitchat needs: every await is a socket read that is, and a
    /// payload handed to the codec is remembered in `pending`.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(from) = self.pending {
                match tokio::time::timeout(DECODE_WAIT, self.codec.recv()).await {
                    Ok(Ok(outcome)) if outcome.from_addr == self.tap_addr => {
                        self.pending = None;
                        return Ok(RecvOutcome {
                            from_addr: from,
                            ..outcome
                        });
                    }
                    // Sent to the codec's port by someone else: not ours, ignored.
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        tracing::debug!(from = %from, "signed gossip payload did not decode");
                        self.pending = None;
                    }
                }
            }
            let (n, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(received) => received,
                // As chitchat's own socket does: these say nothing about this socket.
                Err(e) if is_transient(&e) => {
                    tracing::debug!(error = %e, "transient gossip recv error");
                    continue;
                }
                Err(e) => return Err(e).context("fatal gossip recv error"),
            };
            let datagram = self.buf.get(..n).unwrap_or_default();
            match self.auth.open(datagram) {
                Ok(payload) => {
                    match self.tap.send_to(payload, self.codec_addr) {
                        Ok(_) => self.pending = Some(from),
                        // A full loopback buffer: a lost datagram.
                        Err(e) => tracing::debug!(error = %e, "gossip payload lost on loopback"),
                    }
                }
                Err(why) => tracing::debug!(from = %from, ?why, "dropped a gossip datagram"),
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}
