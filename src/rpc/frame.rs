//! The internode wire format, and what both ends of a connection share: limits, counters,
//! and the loop that writes frames.
//!
//! A frame is `[u32 big-endian length][u8 PROTOCOL_VERSION][msgpack Envelope]`; the length
//! covers the version byte and the body. Bodies are encoded with `rmp_serde::to_vec`-style
//! compact arrays (structs as arrays, enum variants by name) on both sides.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::{
    Decoder, Encoder, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError,
};

use super::handshake::Authenticator;
use super::message::{Envelope, PROTOCOL_VERSION};
use super::reader::ReadBudget;
use crate::net::GossipDrops;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The default frame limit: a sibling set can hold 64 values of 1 MiB, and a frame must
/// carry a whole one with room to spare for keys, contexts and encoding overhead.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 96 * 1024 * 1024;

/// How many queued frames the writer hands to the socket before it flushes. Batching
/// saves syscalls when many calls are in flight; the cap keeps one flush bounded.
const MAX_WRITE_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    WrongVersion(u8),
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("undecodable frame body: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error("the rest of a frame did not arrive within {0:?}")]
    FrameTimeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Limits and timeouts of the RPC layer, for the server and the client alike.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// The largest frame either end sends or accepts (version byte + body).
    pub max_frame_bytes: usize,
    /// Requests one connection may have in flight. The server stops reading a connection
    /// that has this many handlers running; the client makes further calls wait.
    pub max_in_flight_per_conn: usize,
    /// Inbound connections the server holds open at once; the next accept waits.
    pub max_connections: usize,
    /// How long the client waits for a dial (the call's own timeout still applies).
    pub connect_timeout: Duration,
    /// The server closes an inbound connection that has nothing in flight and sends
    /// nothing for this long. A peer that vanished without closing (power loss, a cut
    /// network) would otherwise hold one of `max_connections` forever. The client dials
    /// again on its next call.
    pub idle_timeout: Duration,
    /// Proves the cluster secret on every new connection, before any frame; `None` is
    /// open mode.
    pub auth: Option<Arc<Authenticator>>,
    /// Once a frame's first byte arrived, the rest must arrive within this, on either
    /// end; else the connection is closed.
    pub frame_read_timeout: Duration,
    /// Bytes of frames being read at once, shared by every connection of a node (server
    /// and client): a frame's length is taken from it before its body is buffered.
    pub read_budget: ReadBudget,
    /// Bytes of calls in flight to one peer; past it, further calls wait (and time out)
    /// rather than queue, so a slow peer costs timeouts and hints, not memory.
    pub peer_queue_bytes: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        let security = crate::config::SecurityConfig::default();
        RpcConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight_per_conn: 256,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: security.rpc_idle_timeout,
            auth: None,
            frame_read_timeout: security.frame_read_timeout,
            read_budget: ReadBudget::new(security.read_budget_bytes),
            peer_queue_bytes: security.peer_queue_bytes,
        }
    }
}

/// Counters of the RPC layer, shared (in an `Arc`) by a node's client and server.
///
/// `bytes_sent` and `bytes_received` count every frame this node wrote or read on an
/// internode connection, prefix included, in both roles: summed over the cluster,
/// `bytes_sent` is the internode traffic.
#[derive(Debug, Default)]
pub struct RpcStats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Calls this node's client made, and those that failed (any `RpcError`).
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// Failed calls that ran out of time.
    pub timeouts: AtomicU64,
    /// Outbound connections the client opened.
    pub dials: AtomicU64,
    /// Inbound connections the server accepted, and the requests it answered.
    pub accepted: AtomicU64,
    pub requests_served: AtomicU64,
    /// Connections closed because the peer sent something that is not a valid frame.
    pub protocol_errors: AtomicU64,
    /// Inbound connections closed for idleness (`RpcConfig::idle_timeout`).
    pub idle_closed: AtomicU64,
    /// Inbound connections refused by the handshake (no secret, a wrong one, silence).
    pub auth_refused: AtomicU64,
    /// Outbound connections whose peer failed the handshake.
    pub auth_failed_dials: AtomicU64,
    /// Connections closed because a frame's rest did not arrive in time.
    pub frame_timeouts: AtomicU64,
    /// Gossip datagrams dropped by the signature check (`net::signed_gossip`): they are
    /// internode traffic too, and `/metrics` reads them from here.
    pub gossip: GossipDrops,
}

/// A plain copy of [`RpcStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RpcStatsSnapshot {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub calls: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub dials: u64,
    pub accepted: u64,
    pub requests_served: u64,
    pub protocol_errors: u64,
    pub idle_closed: u64,
    pub auth_refused: u64,
    pub auth_failed_dials: u64,
    pub frame_timeouts: u64,
    pub gossip_short: u64,
    pub gossip_bad_tag: u64,
    pub gossip_stale: u64,
    pub gossip_oversize: u64,
}

impl RpcStats {
    pub fn snapshot(&self) -> RpcStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RpcStatsSnapshot {
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            calls: get(&self.calls),
            failures: get(&self.failures),
            timeouts: get(&self.timeouts),
            dials: get(&self.dials),
            accepted: get(&self.accepted),
            requests_served: get(&self.requests_served),
            protocol_errors: get(&self.protocol_errors),
            idle_closed: get(&self.idle_closed),
            auth_refused: get(&self.auth_refused),
            auth_failed_dials: get(&self.auth_failed_dials),
            frame_timeouts: get(&self.frame_timeouts),
            gossip_short: get(&self.gossip.short),
            gossip_bad_tag: get(&self.gossip.bad_tag),
            gossip_stale: get(&self.gossip.stale),
            gossip_oversize: get(&self.gossip.oversize),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Encodes an envelope as a frame payload: the version byte, then the msgpack body. The
/// length prefix is added by [`FrameCodec`].
pub fn encode<T: Serialize>(envelope: &Envelope<T>, max: usize) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256).writer();
    buf.get_mut().put_u8(PROTOCOL_VERSION);
    rmp_serde::encode::write(&mut buf, envelope).map_err(|e| FrameError::Encode(e.to_string()))?;
    let payload = buf.into_inner().freeze();
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    Ok(payload)
}

/// Decodes a frame payload (version byte + body), as [`FrameCodec`] yields it.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<Envelope<T>, FrameError> {
    let (&version, body) = payload.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::WrongVersion(version));
    }
    // `from_slice` reads from the bounded frame: a forged length inside the body fails
    // with an error instead of allocating.
    rmp_serde::from_slice(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Length-delimited framing with a typed, checked size limit.
///
/// Wraps `LengthDelimitedCodec` (u32 big-endian prefix) so that an oversized prefix is
/// reported as [`FrameError::TooLarge`] with its length, before any body is buffered, and
/// an empty frame as [`FrameError::Empty`].
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(LENGTH_PREFIX_BYTES)
                .big_endian()
                .max_frame_length(max_frame_bytes)
                .new_codec(),
            max: max_frame_bytes,
        }
    }
}

impl Decoder for FrameCodec {
    /// The payload: version byte + body.
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.inner.decode(src) {
            Ok(Some(payload)) if payload.is_empty() => Err(FrameError::Empty),
            Ok(payload) => Ok(payload),
            Err(e) if is_too_large(&e) => {
                // The inner codec rejects the prefix before consuming it, so it is still at
                // the front of `src`: report the length the peer claimed.
                let len = src
                    .get(..LENGTH_PREFIX_BYTES)
                    .and_then(|p| <[u8; LENGTH_PREFIX_BYTES]>::try_from(p).ok())
                    .map_or(0, |p| u32::from_be_bytes(p) as usize);
                Err(FrameError::TooLarge { len, max: self.max })
            }
            Err(e) => Err(FrameError::Io(e)),
        }
    }
}

fn is_too_large(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.max {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max,
            });
        }
        Ok(self.inner.encode(payload, dst)?)
    }
}

/// Writes the payloads queued on `rx` until every sender is gone (Ok) or the socket fails.
/// Queued frames are written in batches and flushed once the queue runs dry.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut sink: FramedWrite<W, FrameCodec>,
    mut rx: mpsc::Receiver<Bytes>,
    stats: &RpcStats,
) -> Result<(), FrameError> {
    while let Some(payload) = rx.recv().await {
        let mut batch = 0;
        let mut next = Some(payload);
        while let Some(payload) = next.take() {
            RpcStats::add(
                &stats.bytes_sent,
                (payload.len() + LENGTH_PREFIX_BYTES) as u64,
            );
            sink.feed(payload).await?;
            batch += 1;
            if batch < MAX_WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        sink.flush().await?;
    }
    sink.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Request, Response};
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    #[test]
    fn envelope_round_trips_through_encode_decode() {
        let env = Envelope::new(42, Request::Read { key: "k".into() });
        let payload = encode(&env, DEFAULT_MAX_FRAME_BYTES).expect("encode");
        assert_eq!(payload[0], PROTOCOL_VERSION);
        let back: Envelope<Request> = decode(&payload).expect("decode");
        assert_eq!(back.id, 42);
        assert!(matches!(back.body, Request::Read { key } if key == "k"));
    }

    #[test]
    fn decode_rejects_bad_payloads() {
        assert!(matches!(decode::<Request>(&[]), Err(FrameError::Empty)));
        assert!(matches!(
            decode::<Request>(&[7, 0x90]),
            Err(FrameError::WrongVersion(7))
        ));
        assert!(matches!(
            decode::<Request>(&[PROTOCOL_VERSION, 0xc1, 0xc1]),
            Err(FrameError::Decode(_))
        ));
        // A bin header that claims 4 GiB inside a tiny frame must fail, not allocate.
        assert!(matches!(
            decode::<Response>(&[PROTOCOL_VERSION, 0x92, 0x01, 0xc6, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn encode_refuses_payloads_over_the_limit() {
        let env = Envelope::new(
            1,
            Request::Read {
                key: "x".repeat(100),
            },
        );
        assert!(matches!(
            encode(&env, 50),
            Err(FrameError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn codec_reports_oversized_prefix_before_the_body_arrives() {
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(
            FrameCodec::new(1024).decode(&mut empty),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn codec_reassembles_frames_delivered_a_byte_at_a_time() {
        let mut wire = BytesMut::new();
        let mut codec = FrameCodec::new(1024);
        for id in 0..3u64 {
            let env = Envelope::new(
                id,
                Request::Read {
                    key: "k".repeat(40),
                },
            );
            let payload = encode(&env, 1024).expect("encode");
            codec.encode(payload, &mut wire).expect("frame");
        }
        // Then a prefix over the limit, which must still be seen as one.
        wire.extend_from_slice(&2048u32.to_be_bytes());
        let mut src = BytesMut::new();
        let mut ids = Vec::new();
        let mut error = None;
        for byte in wire {
            src.extend_from_slice(&[byte]);
            match codec.decode(&mut src) {
                Ok(Some(payload)) => ids.push(decode::<Request>(&payload).expect("decode").id),
                Ok(None) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert_eq!(ids, vec![0, 1, 2]);
        assert!(matches!(
            error,
            Some(FrameError::TooLarge {
                len: 2048,
                max: 1024
            })
        ));
    }

    #[tokio::test]
    async fn frames_cross_a_stream_and_split_where_they_should() {
        let (a, b) = tokio::io::duplex(64);
        let (tx, rx) = mpsc::channel(8);
        let stats = RpcStats::default();
        let writer = write_loop(FramedWrite::new(a, FrameCodec::new(1024)), rx, &stats);
        let reader = async {
            let mut frames = FramedRead::new(b, FrameCodec::new(1024));
            let mut got = Vec::new();
            while let Some(frame) = frames.next().await {
                got.push(frame.expect("frame"));
            }
            got
        };
        let sender = async move {
            for id in 0..10u64 {
                let env = Envelope::new(id, Response::Merged);
                let payload = encode(&env, 1024).expect("encode");
                tx.send(payload).await.expect("send");
            }
        };
        let (w, got, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(writer, reader, sender)
        })
        .await
        .expect("bounded");
        w.expect("writer");
        assert_eq!(got.len(), 10);
        for (i, frame) in got.iter().enumerate() {
            let env: Envelope<Response> = decode(frame).expect("decode");
            assert_eq!(env.id, i as u64);
        }
        let expected: u64 = got.iter().map(|f| (f.len() + 4) as u64).sum();
        assert_eq!(stats.snapshot().bytes_sent, expected);
    }
}
