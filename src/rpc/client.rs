//! The RPC client: one multiplexed connection per peer, many calls in flight on it, and a
//! timeout on every call.
//!
//! A call takes a fresh request id, registers a oneshot under it, and queues its frame for
//! the connection's writer; the connection's reader completes calls by id. One task per
//! connection runs the reader and the writer and, when the connection ends for any
//! reason, fails every waiting call with [`RpcError::Closed`] and removes the connection
//! from the pool, so the next call dials again.
//!
//! Reconnecting after a timeout (docs/design.md §5): under a partition turmoil drops TCP segments
//! and never retransmits them, so a connection can stay stuck after the partition heals.
//! A call that times out therefore drops its connection when nothing at all arrived on it
//! while the call waited: that is what a stuck connection looks like. A connection that
//! kept delivering other replies is alive (the peer is just slow on this one request),
//! and closing it would fail every other call multiplexed on it, so it stays.
//!
//! With a cluster secret, a new connection passes the handshake ([`super::handshake`])
//! before its first call goes out: a peer that cannot prove the secret gets no request.
//! Replies are read under the frame deadline and the node's read budget
//! ([`super::reader`]). What one peer may hold of this node is bounded by count (calls in
//! flight per connection) and by bytes (`RpcConfig::peer_queue_bytes`): a slow peer makes
//! callers time out, and writes fall back to hints, instead of queueing without bound.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use super::frame::{self, write_loop, FrameCodec, FrameError, RpcConfig, RpcStats};
use super::handshake::{HandshakeError, Role};
use super::message::{Envelope, Request, Response};
use super::reader::FrameReader;
use crate::net::{Network, Stream};
use crate::stats::RpcLatency;

/// Dials a peer. Boxed, so that the node's network type does not leak into the client.
pub type Connector =
    Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> + Send + Sync>;

/// A [`Connector`] that dials through `net`.
pub fn connector_for<N: Network>(net: Arc<N>) -> Connector {
    Arc::new(move |addr| {
        let net = net.clone();
        Box::pin(async move {
            let stream = net.connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    })
}

/// A [`Connector`] that dials through `net` and, given `tls`, shakes hands on the new
/// connection before it carries a frame (`net::tls`, internode mutual TLS).
pub fn connector_with_tls<N: Network>(
    net: Arc<N>,
    tls: Option<tokio_rustls::TlsConnector>,
) -> Connector {
    let Some(tls) = tls else {
        return connector_for(net);
    };
    Arc::new(move |addr| {
        let (net, tls) = (net.clone(), tls.clone());
        Box::pin(async move {
            let stream = net.connect(addr).await?;
            let stream = crate::net::tls::dial(&tls, addr, stream).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    })
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error("connecting: {0}")]
    Connect(#[source] io::Error),
    #[error("the call timed out")]
    Timeout,
    #[error("the connection closed before the reply came")]
    Closed,
    #[error("the peer failed the cluster handshake: {0}")]
    Handshake(#[source] HandshakeError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Calls to peers over pooled connections. Dropping the client (or [`close_all`]) closes
/// every connection and stops their tasks.
///
/// [`close_all`]: RpcClient::close_all
pub struct RpcClient {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    config: RpcConfig,
    stats: Arc<RpcStats>,
    /// How long answered calls took, by peer and message (`/metrics`).
    latency: RpcLatency,
    /// One entry per peer ever called; the cluster's members bound it. A std mutex: it is
    /// only held to look up or insert, never across an await.
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    next_id: AtomicU64,
    /// Cancelled by `close_all` or drop; every connection's token is a child of it.
    closed: CancellationToken,
    /// The connection tasks, so that `close_all` can wait for them to exit.
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Default)]
struct Peer {
    /// The pooled connection. Only cloned or swapped under the lock.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while dialing (and only then), so that concurrent first calls share one new
    /// connection instead of each opening their own.
    dialing: tokio::sync::Mutex<()>,
}

struct Conn {
    /// Frames for the writer; as deep as the in-flight bound, so sends rarely wait.
    tx: mpsc::Sender<Bytes>,
    /// Calls waiting for their reply, by id. `None` once the connection has closed, so a
    /// call that arrives late fails at once instead of waiting for a reply that cannot
    /// come. Dropping a sender wakes its call with `Closed`.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>,
    /// Bounds the calls in flight on this connection, and with it `pending`.
    slots: Arc<Semaphore>,
    /// Bounds the bytes of those calls' requests (`RpcConfig::peer_queue_bytes`).
    queued_bytes: Arc<Semaphore>,
    queue_limit: u32,
    /// Bytes read from the socket so far: a timed-out call reads it to tell a stuck
    /// connection from a slow one. Bytes, not frames, so that a large reply still
    /// arriving counts as progress.
    received: AtomicU64,
    /// Cancel to close the connection.
    close: CancellationToken,
    /// When it opened, and when a call last went out on it (ms after `opened`): what the
    /// server's idle timeout counts from.
    opened: tokio::time::Instant,
    last_sent_ms: AtomicU64,
}

impl RpcClient {
    pub fn new(connector: Connector, config: RpcConfig, stats: Arc<RpcStats>) -> RpcClient {
        RpcClient {
            shared: Arc::new(Shared {
                connector,
                config,
                stats,
                latency: RpcLatency::default(),
                peers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                closed: CancellationToken::new(),
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    pub fn stats(&self) -> &Arc<RpcStats> {
        &self.shared.stats
    }

    /// How long the calls that got a reply took, by peer and message.
    pub fn latency(&self) -> &RpcLatency {
        &self.shared.latency
    }

    /// How many pooled connections are open.
    pub fn connections(&self) -> usize {
        let peers: Vec<Arc<Peer>> = lock(&self.shared.peers).values().cloned().collect();
        peers.iter().filter(|p| p.is_open()).count()
    }

    /// Sends `request` to `addr` and waits for the response. `timeout` covers everything:
    /// dialing if needed, waiting for a slot, sending and the reply.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let stats = &self.shared.stats;
        RpcStats::add(&stats.calls, 1);
        let mut used = None;
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout, self.exchange(addr, &request, &mut used)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                if let Some((conn, received)) = used {
                    self.shared.drop_if_stuck(addr, &conn, received);
                }
                RpcStats::add(&stats.timeouts, 1);
                Err(RpcError::Timeout)
            }
        };
        match &result {
            Ok(_) => self
                .shared
                .latency
                .observe(addr, &request, started.elapsed()),
            Err(_) => RpcStats::add(&stats.failures, 1),
        }
        result
    }

    /// One call without its deadline. Leaves in `used` the connection it went out on and
    /// how many bytes that connection had received then.
    async fn exchange(
        &self,
        addr: SocketAddr,
        request: &Request,
        used: &mut Option<(Arc<Conn>, u64)>,
    ) -> Result<Response, RpcError> {
        let shared = &self.shared;
        if shared.closed.is_cancelled() {
            return Err(RpcError::Closed);
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // The client request this call works for, if any: the peer logs under its id.
        let envelope = Envelope {
            id,
            body: request,
            trace: crate::telemetry::current_request_id(),
        };
        let payload = frame::encode(&envelope, shared.config.max_frame_bytes)?;
        let conn = shared.connection(addr).await?;
        *used = Some((conn.clone(), conn.received.load(Ordering::SeqCst)));
        let _slot = tokio::select! {
            slot = conn.slots.clone().acquire_owned() => slot.map_err(|_| RpcError::Closed)?,
            _ = conn.close.cancelled() => return Err(RpcError::Closed),
        };
        // Held until the call ends: a request larger than the whole limit takes all of it.
        let bytes = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .min(conn.queue_limit);
        let _bytes = tokio::select! {
            held = conn.queued_bytes.clone().acquire_many_owned(bytes) => {
                held.map_err(|_| RpcError::Closed)?
            }
            _ = conn.close.cancelled() => return Err(RpcError::Closed),
        };
        let reply = conn.register(id).ok_or(RpcError::Closed)?;
        // Abandoned on timeout: the entry must not outlive the call.
        let _registered = Registered { conn: &conn, id };
        conn.touch();
        conn.tx.send(payload).await.map_err(|_| RpcError::Closed)?;
        reply.await.map_err(|_| RpcError::Closed)
    }

    /// Closes every connection, waits for their tasks to exit, and refuses further calls
    /// (they fail with `Closed`).
    pub async fn close_all(&self) {
        self.shared.closed.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        while tasks.join_next().await.is_some() {}
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        // The tasks see this at their next poll and exit; they hold no strong reference
        // back to the client.
        self.shared.closed.cancel();
    }
}

impl Shared {
    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        lock(&self.peers).entry(addr).or_default().clone()
    }

    /// The pooled connection to `addr`, dialing one if there is none.
    async fn connection(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<Conn>, RpcError> {
        let peer = self.peer(addr);
        let retire_after = self.config.idle_timeout / 2;
        if let Some(conn) = peer.live(retire_after) {
            return Ok(conn);
        }
        let _dialing = peer.dialing.lock().await;
        // Whoever held the lock before may have dialed already.
        if let Some(conn) = peer.live(retire_after) {
            return Ok(conn);
        }
        if self.closed.is_cancelled() {
            return Err(RpcError::Closed);
        }
        RpcStats::add(&self.stats.dials, 1);
        let mut stream =
            match tokio::time::timeout(self.config.connect_timeout, (self.connector)(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(RpcError::Connect(e)),
                Err(_) => {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                    return Err(RpcError::Connect(e));
                }
            };
        if let Some(auth) = &self.config.auth {
            if let Err(e) = auth.client(&mut stream).await {
                RpcStats::add(&self.stats.auth_failed_dials, 1);
                auth.warn_refused(addr, Role::Client, &e);
                return Err(RpcError::Handshake(e));
            }
        }
        let conn = self.start(addr, stream);
        *lock(&peer.conn) = Some(conn.clone());
        tracing::debug!(peer = %addr, "RPC connection opened");
        Ok(conn)
    }

    fn start(self: &Arc<Self>, addr: SocketAddr, stream: Box<dyn Stream>) -> Arc<Conn> {
        let in_flight = self.config.max_in_flight_per_conn.max(1);
        let (tx, rx) = mpsc::channel(in_flight);
        let queue_limit = u32::try_from(self.config.peer_queue_bytes.max(1)).unwrap_or(u32::MAX);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            slots: Arc::new(Semaphore::new(in_flight)),
            queued_bytes: Arc::new(Semaphore::new(queue_limit as usize)),
            queue_limit,
            received: AtomicU64::new(0),
            close: self.closed.child_token(),
            opened: tokio::time::Instant::now(),
            last_sent_ms: AtomicU64::new(0),
        });
        let task = run_connection(
            Arc::downgrade(self),
            addr,
            conn.clone(),
            stream,
            rx,
            self.config.clone(),
            self.stats.clone(),
        );
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
        conn
    }

    /// After a timeout on `conn`: close it if it received nothing since the call began.
    fn drop_if_stuck(&self, addr: SocketAddr, conn: &Arc<Conn>, received_before: u64) {
        if conn.received.load(Ordering::SeqCst) != received_before {
            return;
        }
        tracing::debug!(peer = %addr, "RPC call timed out on a silent connection; redialing next time");
        self.forget(addr, conn);
        conn.close.cancel();
    }

    /// Takes `conn` out of the pool, unless it was replaced already.
    fn forget(&self, addr: SocketAddr, conn: &Arc<Conn>) {
        let peer = lock(&self.peers).get(&addr).cloned();
        if let Some(peer) = peer {
            let mut pooled = lock(&peer.conn);
            if pooled.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *pooled = None;
            }
        }
    }
}

impl Peer {
    fn is_open(&self) -> bool {
        lock(&self.conn)
            .as_ref()
            .is_some_and(|c| !c.close.is_cancelled())
    }

    /// The pooled connection, unless it closed, or it has been quiet for `retire_after`.
    /// The server closes a connection quiet for its idle timeout (`RpcConfig::idle_timeout`);
    /// the client retires one at half of that, so that no call goes out on a connection
    /// the server is about to close and fails with `Closed` in that race.
    fn live(&self, retire_after: Duration) -> Option<Arc<Conn>> {
        let mut pooled = lock(&self.conn);
        let conn = pooled.as_ref()?.clone();
        if conn.close.is_cancelled() {
            return None;
        }
        if conn.quiet_for(retire_after) {
            *pooled = None;
            conn.close.cancel();
            return None;
        }
        // Handed out, it is about to carry a call: counted as busy from now, so that
        // another caller cannot retire it before this one has sent.
        conn.touch();
        Some(conn)
    }
}

impl Conn {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes that a call went out now.
    fn touch(&self) {
        self.last_sent_ms.store(self.elapsed_ms(), Ordering::SeqCst);
    }

    /// No call waiting on it, and none sent for `d`.
    fn quiet_for(&self, d: Duration) -> bool {
        let idle = lock(&self.pending).as_ref().is_some_and(HashMap::is_empty);
        let since = self
            .elapsed_ms()
            .saturating_sub(self.last_sent_ms.load(Ordering::SeqCst));
        idle && u128::from(since) >= d.as_millis()
    }

    fn register(&self, id: u64) -> Option<oneshot::Receiver<Response>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).as_mut()?.insert(id, tx);
        Some(rx)
    }

    fn complete(&self, id: u64, response: Response) {
        let waiter = lock(&self.pending).as_mut().and_then(|p| p.remove(&id));
        // No waiter: the call gave up (timed out) before the reply came.
        if let Some(waiter) = waiter {
            let _ = waiter.send(response);
        }
    }
}

/// Removes a call's pending entry when the call ends, however it ends.
struct Registered<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(pending) = lock(&self.conn.pending).as_mut() {
            pending.remove(&self.id);
        }
    }
}

/// Runs one connection until it fails, the peer closes it, or it is closed; then fails
/// the calls still waiting on it and takes it out of the pool.
async fn run_connection(
    shared: Weak<Shared>,
    addr: SocketAddr,
    conn: Arc<Conn>,
    stream: Box<dyn Stream>,
    rx: mpsc::Receiver<Bytes>,
    config: RpcConfig,
    stats: Arc<RpcStats>,
) {
    let (rd, wr) = tokio::io::split(stream);
    let rd = Progress {
        inner: rd,
        conn: conn.clone(),
    };
    let frames = FrameReader::new(
        rd,
        config.max_frame_bytes,
        config.frame_read_timeout,
        &config.read_budget,
    );
    let writer = write_loop(
        FramedWrite::new(wr, FrameCodec::new(config.max_frame_bytes)),
        rx,
        &stats,
    );
    let ended: Result<&str, FrameError> = tokio::select! {
        read = read_responses(frames, &conn, &stats) => read.map(|()| "the peer closed it"),
        written = writer => written.map(|()| "the writer stopped"),
        _ = conn.close.cancelled() => Ok("closed"),
    };
    conn.close.cancel();
    // Dropping the senders wakes every waiting call with `Closed`.
    let waiting = lock(&conn.pending).take();
    drop(waiting);
    if let Some(shared) = shared.upgrade() {
        shared.forget(addr, &conn);
    }
    match ended {
        Ok(why) => tracing::debug!(peer = %addr, why, "RPC connection closed"),
        Err(e @ FrameError::Io(_)) => {
            tracing::debug!(peer = %addr, error = %e, "RPC connection failed")
        }
        Err(e @ FrameError::FrameTimeout(_)) => {
            RpcStats::add(&stats.frame_timeouts, 1);
            tracing::debug!(peer = %addr, error = %e, "closing RPC connection: slow reply frame")
        }
        Err(e) => {
            RpcStats::add(&stats.protocol_errors, 1);
            tracing::warn!(peer = %addr, error = %e, "closing RPC connection: bad frame");
        }
    }
}

async fn read_responses<R: AsyncRead + Unpin>(
    mut frames: FrameReader<R>,
    conn: &Conn,
    stats: &RpcStats,
) -> Result<(), FrameError> {
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        RpcStats::add(
            &stats.bytes_received,
            (frame.payload.len() + frame::LENGTH_PREFIX_BYTES) as u64,
        );
        let response: Envelope<Response> = frame::decode(&frame.payload)?;
        // Decoded: the frame's share of the read budget goes back.
        drop(frame);
        conn.complete(response.id, response.body);
    }
    Ok(())
}

/// A read half that records every byte it delivers in `conn.received`.
struct Progress<R> {
    inner: R,
    conn: Arc<Conn>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Progress<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.conn.received.fetch_add(read as u64, Ordering::SeqCst);
        }
        polled
    }
}

/// Locks a std mutex, ignoring poisoning: every critical section here leaves the data
/// consistent (single inserts, removes and swaps).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::net::TokioNetwork;
    use crate::quorum::Quorum;
    use crate::rpc::server::testing::{respond, sample_set, wait_for, TestServer};
    use crate::rpc::{ForwardedWrite, ScanRange};
    use crate::version::{Actor, Dot, Payload};

    const CALL: Duration = Duration::from_secs(5);

    /// A connector that counts its dials.
    fn counting() -> (Connector, Arc<AtomicUsize>) {
        let dials = Arc::new(AtomicUsize::new(0));
        let inner = connector_for(Arc::new(TokioNetwork));
        let counter = dials.clone();
        let connector: Connector = Arc::new(move |addr| {
            counter.fetch_add(1, Ordering::SeqCst);
            inner(addr)
        });
        (connector, dials)
    }

    fn client_with(connector: Connector) -> RpcClient {
        RpcClient::new(
            connector,
            RpcConfig::default(),
            Arc::new(RpcStats::default()),
        )
    }

    fn sleep(ms: u64) -> Request {
        Request::Read {
            key: format!("sleep:{ms}"),
        }
    }

    fn every_request() -> Vec<Request> {
        let seen = [Dot {
            actor: Actor { node: 9, epoch: 1 },
            counter: 4,
        }]
        .into_iter()
        .collect();
        let mut requests = vec![
            Request::Ping,
            Request::Merge {
                entries: vec![("a".into(), sample_set()), ("b".into(), Default::default())],
            },
            Request::Hint {
                target: 0,
                key: "k".into(),
                set: sample_set(),
            },
            Request::Hint {
                target: 0xdead_beef,
                key: "k".into(),
                set: sample_set(),
            },
            Request::Forward(ForwardedWrite {
                key: "f".into(),
                seen: Some(seen),
                payload: Payload::Value {
                    data: Bytes::from(vec![0u8, 1, 2, 255]),
                    content_type: "text/plain".into(),
                },
                w: Some(Quorum::Count(2)),
                timeout_ms: 500,
            }),
            Request::Forward(ForwardedWrite {
                key: "g".into(),
                seen: None,
                payload: Payload::Tombstone,
                w: None,
                // The smallest a peer may send: 0 would be clamped to it on the way in
                // (`rpc::bounds`), and the handler would not see what was sent.
                timeout_ms: 1,
            }),
        ];
        requests.push(Request::Scan(ScanRange {
            start: Some("a".into()),
            start_exclusive: true,
            end: Some("z".into()),
            limit: 1,
            max_bytes: 1,
        }));
        requests.push(Request::Scan(ScanRange {
            start: None,
            start_exclusive: false,
            end: None,
            limit: 100,
            max_bytes: 1 << 20,
        }));
        for key in [
            "some",
            "none",
            "err:siblings",
            "err:unavailable",
            "err:bad",
            "err:internal",
        ] {
            requests.push(Request::Read { key: key.into() });
        }
        requests
    }

    #[tokio::test]
    async fn bytes_in_flight_to_a_peer_are_bounded() {
        let server = TestServer::any_port().await;
        // Room for one small request at a time.
        let one = frame::encode(&Envelope::new(1, &sleep(400)), 1024)
            .expect("encode")
            .len();
        let client = Arc::new(RpcClient::new(
            connector_for(Arc::new(TokioNetwork)),
            RpcConfig {
                peer_queue_bytes: one + one / 2,
                ..RpcConfig::default()
            },
            Arc::new(RpcStats::default()),
        ));
        let first = tokio::spawn({
            let client = client.clone();
            let addr = server.addr;
            async move { client.call(addr, sleep(400), CALL).await }
        });
        wait_for("the first call runs", CALL, || {
            server.handler.running.load(Ordering::SeqCst) == 1
        })
        .await;
        // A slow peer: the next call waits for room, and times out, instead of queueing.
        let second = client
            .call(server.addr, sleep(0), Duration::from_millis(100))
            .await;
        assert!(matches!(second, Err(RpcError::Timeout)), "{second:?}");
        assert_eq!(server.handler.seen.lock().expect("lock").len(), 1);
        // The timed-out call saw nothing arrive while it waited, so the client took the
        // connection for stuck and closed it (see the module doc): the first call may end
        // `Closed` rather than answered. Either way it ends, and gives its bytes back.
        let first = first.await.expect("no panic");
        assert!(
            matches!(first, Ok(Response::Read(None)) | Err(RpcError::Closed)),
            "{first:?}"
        );
        // Room again once the first call ended.
        let third = client.call(server.addr, sleep(0), CALL).await;
        assert!(matches!(third, Ok(Response::Read(None))), "{third:?}");
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn every_request_and_response_variant_round_trips() {
        let server = TestServer::any_port().await;
        let (connector, _) = counting();
        let client = client_with(connector);
        let requests = every_request();
        for request in &requests {
            let response = client
                .call(server.addr, request.clone(), CALL)
                .await
                .expect("call");
            assert_eq!(format!("{response:?}"), format!("{:?}", respond(request)));
        }
        let seen = server.handler.seen.lock().expect("lock").clone();
        let sent: Vec<String> = requests.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(seen, sent);
        let stats = client.stats().snapshot();
        assert_eq!(stats.calls, requests.len() as u64);
        assert_eq!(stats.failures, 0);
        // Both ends count the same bytes, in opposite directions.
        let served = server.stats.snapshot();
        assert_eq!(served.requests_served, requests.len() as u64);
        assert_eq!(stats.bytes_sent, served.bytes_received);
        assert_eq!(stats.bytes_received, served.bytes_sent);
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn two_hundred_concurrent_calls_share_one_connection() {
        let server = TestServer::any_port().await;
        let (connector, dials) = counting();
        let client = client_with(connector);
        let started = tokio::time::Instant::now();
        let calls = (0..200).map(|_| client.call(server.addr, sleep(100), CALL));
        let results = futures::future::join_all(calls).await;
        for result in results {
            assert!(matches!(result, Ok(Response::Read(None))), "{result:?}");
        }
        // One after another, 200 calls of 100 ms would take 20 s.
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(server.handler.max_running.load(Ordering::SeqCst) > 50);
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        assert_eq!(client.stats().snapshot().dials, 1);
        assert_eq!(server.stats.snapshot().accepted, 1);
        assert_eq!(client.connections(), 1);
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_timed_out_call_drops_its_connection_and_the_next_call_redials() {
        let server = TestServer::any_port().await;
        let (connector, dials) = counting();
        let client = client_with(connector);
        let slow = client
            .call(server.addr, sleep(10_000), Duration::from_millis(200))
            .await;
        assert!(matches!(slow, Err(RpcError::Timeout)), "{slow:?}");
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        let response = client.call(server.addr, Request::Ping, CALL).await;
        assert!(
            matches!(response, Ok(Response::Pong { node_id: 7 })),
            "{response:?}"
        );
        assert_eq!(dials.load(Ordering::SeqCst), 2);
        let stats = client.stats().snapshot();
        assert_eq!((stats.calls, stats.failures, stats.timeouts), (2, 1, 1));
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_timeout_on_a_connection_that_keeps_answering_keeps_it() {
        let server = TestServer::any_port().await;
        let (connector, dials) = counting();
        let client = client_with(connector);
        let slow = client.call(server.addr, sleep(10_000), Duration::from_millis(300));
        let fast = async {
            for _ in 0..30 {
                let pong = client.call(server.addr, Request::Ping, CALL).await;
                assert!(matches!(pong, Ok(Response::Pong { .. })), "{pong:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (slow, ()) = tokio::join!(slow, fast);
        assert!(matches!(slow, Err(RpcError::Timeout)), "{slow:?}");
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_dead_server_fails_pending_calls_promptly_and_a_restarted_one_serves() {
        let server = TestServer::any_port().await;
        let addr = server.addr;
        let (connector, dials) = counting();
        let client = Arc::new(client_with(connector));
        let pending: Vec<_> = (0..5)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .call(addr, sleep(60_000), Duration::from_secs(30))
                        .await
                })
            })
            .collect();
        let handler = server.handler.clone();
        wait_for("calls in flight", CALL, || {
            handler.running.load(Ordering::SeqCst) == 5
        })
        .await;
        let killed = tokio::time::Instant::now();
        server.stop().await;
        for call in pending {
            let result = tokio::time::timeout(CALL, call)
                .await
                .expect("bounded")
                .expect("no panic");
            assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
        }
        assert!(killed.elapsed() < Duration::from_secs(2));
        wait_for("connection removed", CALL, || client.connections() == 0).await;

        let down = client.call(addr, Request::Ping, CALL).await;
        assert!(matches!(down, Err(RpcError::Connect(_))), "{down:?}");

        let server = TestServer::start(addr, RpcConfig::default()).await;
        let response = client.call(addr, Request::Ping, CALL).await;
        assert!(
            matches!(response, Ok(Response::Pong { .. })),
            "{response:?}"
        );
        assert_eq!(dials.load(Ordering::SeqCst), 3);
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn close_all_stops_every_connection_and_refuses_calls() {
        let first = TestServer::any_port().await;
        let second = TestServer::any_port().await;
        let (connector, _) = counting();
        let client = Arc::new(client_with(connector));
        for server in [&first, &second] {
            let pong = client.call(server.addr, Request::Ping, CALL).await;
            assert!(matches!(pong, Ok(Response::Pong { .. })), "{pong:?}");
        }
        assert_eq!(client.connections(), 2);
        let waiting = {
            let client = client.clone();
            let addr = first.addr;
            tokio::spawn(async move { client.call(addr, sleep(60_000), CALL).await })
        };
        let handler = first.handler.clone();
        wait_for("call in flight", CALL, || {
            handler.running.load(Ordering::SeqCst) == 1
        })
        .await;
        tokio::time::timeout(Duration::from_secs(2), client.close_all())
            .await
            .expect("close_all returns promptly");
        let result = tokio::time::timeout(CALL, waiting)
            .await
            .expect("bounded")
            .expect("no panic");
        assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
        assert_eq!(client.connections(), 0);
        let refused = client.call(first.addr, Request::Ping, CALL).await;
        assert!(matches!(refused, Err(RpcError::Closed)), "{refused:?}");
        first.stop().await;
        second.stop().await;
    }

    #[tokio::test]
    async fn an_unreachable_peer_fails_with_connect() {
        // Bind and drop, to get a port nothing listens on.
        let free = TestServer::any_port().await;
        let addr = free.addr;
        free.stop().await;
        let client = client_with(connector_for(Arc::new(TokioNetwork)));
        let result = client.call(addr, Request::Ping, CALL).await;
        assert!(matches!(result, Err(RpcError::Connect(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_request_over_the_frame_limit_fails_without_touching_the_connection() {
        let server = TestServer::any_port().await;
        let (connector, dials) = counting();
        let config = RpcConfig {
            max_frame_bytes: 1024,
            ..RpcConfig::default()
        };
        let client = RpcClient::new(connector, config, Arc::new(RpcStats::default()));
        let big = Request::Read {
            key: "x".repeat(4096),
        };
        let result = client.call(server.addr, big, CALL).await;
        assert!(
            matches!(result, Err(RpcError::Frame(FrameError::TooLarge { .. }))),
            "{result:?}"
        );
        assert_eq!(dials.load(Ordering::SeqCst), 0);
        let pong = client.call(server.addr, Request::Ping, CALL).await;
        assert!(matches!(pong, Ok(Response::Pong { .. })), "{pong:?}");
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn concurrent_first_calls_dial_once_even_when_the_dial_is_slow() {
        let server = TestServer::any_port().await;
        let dials = Arc::new(AtomicUsize::new(0));
        let inner = connector_for(Arc::new(TokioNetwork));
        let counter = dials.clone();
        let slow: Connector = Arc::new(move |addr| {
            counter.fetch_add(1, Ordering::SeqCst);
            let dial = inner(addr);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                dial.await
            })
        });
        let client = client_with(slow);
        let calls = (0..20).map(|_| client.call(server.addr, Request::Ping, CALL));
        for result in futures::future::join_all(calls).await {
            assert!(matches!(result, Ok(Response::Pong { .. })), "{result:?}");
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        client.close_all().await;
        server.stop().await;
    }
}
