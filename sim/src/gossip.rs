//! chitchat over turmoil UDP.
//!
//! chitchat's envelope encoder is crate-private, so the envelope itself stays in a table
//! shared by the simulation and only its id crosses turmoil's UDP. Partitions, loss and
//! latency still act on every datagram; a datagram that is dropped leaves its envelope in
//! the table, which is bounded and forgets the oldest first.
//!
//! With the cluster secret (the simulation's default) the id is sealed like a production
//! datagram (`ringkv::net::signed_gossip`), stamped with simulated time, and checked on
//! receipt: the signing path runs under every fault the simulation injects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chitchat::transport::{RecvOutcome, SendOutcome, Socket};
use chitchat::ChitchatEnvelope;
use ringkv::net::signed_gossip::TRAILER_BYTES;
use ringkv::net::GossipAuth;

/// Envelopes in flight, at most this many.
const MAX_IN_FLIGHT: usize = 16_384;
/// What a send reports as its size: chitchat only uses it for statistics.
const NOMINAL_BYTES: usize = 512;

/// The simulation-wide envelope table.
#[derive(Clone, Default)]
pub struct Envelopes(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    next_id: u64,
    in_flight: BTreeMap<u64, ChitchatEnvelope>,
}

impl Envelopes {
    fn put(&self, envelope: ChitchatEnvelope) -> u64 {
        let mut t = self.0.lock().expect("envelope table poisoned");
        t.next_id += 1;
        let id = t.next_id;
        t.in_flight.insert(id, envelope);
        while t.in_flight.len() > MAX_IN_FLIGHT {
            t.in_flight.pop_first();
        }
        id
    }

    fn take(&self, id: u64) -> Option<ChitchatEnvelope> {
        self.0
            .lock()
            .expect("envelope table poisoned")
            .in_flight
            .remove(&id)
    }
}

pub struct GossipSocket {
    socket: turmoil::net::UdpSocket,
    envelopes: Envelopes,
    auth: Option<Arc<GossipAuth>>,
}

impl GossipSocket {
    pub async fn bind(
        addr: SocketAddr,
        envelopes: Envelopes,
        auth: Option<Arc<GossipAuth>>,
    ) -> std::io::Result<Self> {
        let socket = turmoil::net::UdpSocket::bind(addr).await?;
        Ok(GossipSocket {
            socket,
            envelopes,
            auth,
        })
    }
}

#[async_trait::async_trait]
impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let id = self.envelopes.put(envelope).to_le_bytes();
        let mut datagram = Vec::with_capacity(id.len() + TRAILER_BYTES);
        match &self.auth {
            Some(auth) => {
                auth.seal(&id, &mut datagram);
            }
            None => datagram.extend_from_slice(&id),
        }
        // A send to an unreachable peer is a lost datagram, not a broken transport.
        if let Err(e) = self.socket.send_to(&datagram, to).await {
            tracing::trace!(%to, error = %e, "gossip datagram not sent");
        }
        Ok(SendOutcome {
            num_bytes_sent: NOMINAL_BYTES,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let mut datagram = [0u8; 8 + TRAILER_BYTES];
        loop {
            let (len, from) = self.socket.recv_from(&mut datagram).await?;
            let received = datagram.get(..len).unwrap_or_default();
            let payload = match &self.auth {
                Some(auth) => match auth.open(received) {
                    Ok(payload) => payload,
                    Err(why) => {
                        tracing::debug!(%from, ?why, "dropped a gossip datagram");
                        continue;
                    }
                },
                None => received,
            };
            let Ok(buf) = <[u8; 8]>::try_from(payload) else {
                continue;
            };
            let id = u64::from_le_bytes(buf);
            let Some(envelope) = self.envelopes.take(id) else {
                continue;
            };
            crate::trace::record(b"gossip", &[from.to_string().as_bytes(), &buf].concat());
            return Ok(RecvOutcome {
                from_addr: from,
                envelope,
                num_bytes_received: NOMINAL_BYTES,
            });
        }
    }
}
