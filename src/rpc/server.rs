//! The RPC server: accepts internode connections and answers each request through an
//! [`RpcHandler`], many at once per connection.
//!
//! Per connection, one reader decodes request frames and spawns a task per request; the
//! tasks hand their responses, tagged with the request's id, to one writer through a
//! bounded channel. Everything is bounded: connections by a semaphore held per
//! connection, requests in flight per connection by another (when it is full the reader
//! stops reading, and TCP pushes back on the peer).
//!
//! With a cluster secret, a connection first passes the handshake ([`super::handshake`]);
//! one that fails is closed before any frame is read. Frames are read under a deadline
//! and the node's byte budget ([`super::reader`]).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use super::bounds;
use super::frame::{self, write_loop, FrameCodec, FrameError, RpcConfig, RpcStats};
use super::handshake::Role;
use super::message::{Envelope, Request, Response};
use super::reader::FrameReader;
use super::remote_error::RemoteError;
use crate::net::LimitedListener;

/// The answering side of the protocol: what this node does for its peers (in a node,
/// `peer_service::PeerService`).
#[async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    async fn handle(&self, request: Request) -> Response;
}

/// For unit tests: serves `handler` on a fresh loopback port with the default config until
/// `shutdown`, and returns the port's address.
#[cfg(test)]
pub(crate) async fn serve_on_loopback(
    handler: Arc<dyn RpcHandler>,
    shutdown: CancellationToken,
) -> SocketAddr {
    use crate::net::{Network, TokioNetwork};
    let listener = TokioNetwork
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind a loopback port");
    let addr = axum::serve::Listener::local_addr(&listener).expect("a bound address");
    tokio::spawn(serve(
        listener,
        handler,
        RpcConfig::default(),
        Arc::new(RpcStats::default()),
        shutdown,
    ));
    addr
}

/// Serves internode RPC on `listener` until `shutdown` is cancelled. Then it stops
/// accepting, ends every connection (in-flight handlers are aborted; their callers see the
/// connection close) and returns once all connection tasks have exited.
pub async fn serve<L>(
    listener: L,
    handler: Arc<dyn RpcHandler>,
    config: RpcConfig,
    stats: Arc<RpcStats>,
    shutdown: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    // The accepted connection carries its slot and frees it when it is dropped.
    let mut listener = LimitedListener::new(listener, config.max_connections);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set only holds live ones.
            Some(_) = connections.join_next() => {}
            // `Listener::accept` retries errors itself; it only ever yields a connection.
            (io, peer) = axum::serve::Listener::accept(&mut listener) => {
                RpcStats::add(&stats.accepted, 1);
                connections.spawn(connection(
                    io,
                    peer,
                    handler.clone(),
                    config.clone(),
                    stats.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    drop(listener);
    // Every connection task watches `shutdown` at each await, so this ends promptly.
    while connections.join_next().await.is_some() {}
}

/// Why a connection's reader stopped.
enum End {
    /// The peer closed its side: answer what is in flight, then close.
    Eof,
    /// Nothing in flight and nothing received for `RpcConfig::idle_timeout`.
    Idle,
    /// The peer sent something that is not a valid frame.
    Protocol(FrameError),
    /// A frame's rest did not arrive within `RpcConfig::frame_read_timeout`.
    FrameTimeout(FrameError),
    /// The socket failed.
    Io(FrameError),
    Shutdown,
}

async fn connection<S>(
    mut io: S,
    peer: SocketAddr,
    handler: Arc<dyn RpcHandler>,
    config: RpcConfig,
    stats: Arc<RpcStats>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if let Some(auth) = &config.auth {
        // Bounded by the handshake's own timeout; nothing of the peer's is decoded first.
        let proved = tokio::select! {
            proved = auth.server(&mut io) => proved,
            _ = shutdown.cancelled() => return,
        };
        if let Err(e) = proved {
            RpcStats::add(&stats.auth_refused, 1);
            auth.warn_refused(peer, Role::Server, &e);
            return;
        }
    }
    let (rd, wr) = tokio::io::split(io);
    let mut frames = FrameReader::new(
        rd,
        config.max_frame_bytes,
        config.frame_read_timeout,
        &config.read_budget,
    );
    let in_flight = config.max_in_flight_per_conn.max(1);
    // Each request holds a slot until its response is queued, so the channel never holds
    // more than `in_flight` responses and a handler never waits on it for long.
    let (tx, rx) = mpsc::channel(in_flight);
    let writer = write_loop(
        FramedWrite::new(wr, FrameCodec::new(config.max_frame_bytes)),
        rx,
        &stats,
    );
    tokio::pin!(writer);
    let mut handlers = JoinSet::new();

    let end = tokio::select! {
        end = read_requests(&mut frames, &handler, &config, &stats, tx, &mut handlers) => end,
        written = &mut writer => match written {
            Ok(()) => End::Eof,
            Err(e) => End::Io(e),
        },
        _ = shutdown.cancelled() => End::Shutdown,
    };
    match end {
        End::Eof | End::Idle => {
            // The writer ends once every handler has queued its response and dropped its
            // sender (the reader's sender is gone already).
            let drain = async {
                tokio::join!(
                    async { while handlers.join_next().await.is_some() {} },
                    writer
                )
            };
            tokio::select! {
                _ = drain => {}
                _ = shutdown.cancelled() => {}
            }
            if matches!(end, End::Idle) {
                RpcStats::add(&stats.idle_closed, 1);
                tracing::debug!(peer = %peer, "closed an idle RPC connection");
            } else {
                tracing::debug!(peer = %peer, "RPC peer closed the connection");
            }
        }
        End::Protocol(e) => {
            RpcStats::add(&stats.protocol_errors, 1);
            tracing::warn!(peer = %peer, error = %e, "closing RPC connection: bad frame");
        }
        End::FrameTimeout(e) => {
            RpcStats::add(&stats.frame_timeouts, 1);
            tracing::debug!(peer = %peer, error = %e, "closing RPC connection: slow frame");
        }
        End::Io(e) => {
            tracing::debug!(peer = %peer, error = %e, "RPC connection failed");
        }
        End::Shutdown => {}
    }
    // Aborts whatever is still running and waits until those tasks are gone.
    handlers.shutdown().await;
}

/// Reads request frames and spawns a handler for each, until the peer stops or errs.
async fn read_requests<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    handler: &Arc<dyn RpcHandler>,
    config: &RpcConfig,
    stats: &Arc<RpcStats>,
    tx: mpsc::Sender<Bytes>,
    handlers: &mut JoinSet<()>,
) -> End {
    let slots = Arc::new(Semaphore::new(config.max_in_flight_per_conn.max(1)));
    loop {
        // Backpressure: with every slot taken, stop reading until a handler finishes.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => unreachable!("the slot semaphore is never closed"),
            },
            Some(_) = handlers.join_next() => continue,
        };
        // The idle clock runs only while no handler runs (a slow request is not
        // idleness) and no frame is half read (that one has its own deadline).
        let idle = tokio::time::sleep(config.idle_timeout);
        tokio::pin!(idle);
        let next = loop {
            let quiet = handlers.is_empty() && !frames.in_frame();
            tokio::select! {
                next = frames.next() => break next,
                Some(_) = handlers.join_next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                }
                _ = &mut idle, if quiet => {
                    if !frames.in_frame() {
                        return End::Idle;
                    }
                }
            }
        };
        let frame = match next {
            None => return End::Eof,
            Some(Err(e @ FrameError::Io(_))) => return End::Io(e),
            Some(Err(e @ FrameError::FrameTimeout(_))) => return End::FrameTimeout(e),
            Some(Err(e)) => return End::Protocol(e),
            Some(Ok(frame)) => frame,
        };
        let payload = &frame.payload;
        RpcStats::add(
            &stats.bytes_received,
            (payload.len() + frame::LENGTH_PREFIX_BYTES) as u64,
        );
        let request: Envelope<Request> = match frame::decode(payload) {
            Ok(request) => request,
            Err(e) => return End::Protocol(e),
        };
        // Decoded: the frame's bytes, and its share of the read budget, go.
        drop(frame);
        let handler = handler.clone();
        let tx = tx.clone();
        let stats = stats.clone();
        let max = config.max_frame_bytes;
        let Envelope { id, body, trace } = request;
        let work = async move {
            let response = answer(handler.as_ref(), body).await;
            if let Some(payload) = encode_response(id, response, max) {
                RpcStats::add(&stats.requests_served, 1);
                // Fails only when the connection is closing; the caller sees that.
                let _ = tx.send(payload).await;
            }
            drop(slot);
        };
        match trace {
            // A client request's call: answered in its span, with its id for any call
            // the answer makes in turn (a forwarded write coordinates one here).
            Some(trace) => handlers.spawn(crate::telemetry::in_request(trace, work)),
            None => handlers.spawn(work),
        };
    }
}

/// Clamps the request into its bounds ([`bounds::admit`]), then runs the handler; a
/// panic becomes an error response instead of a silent timeout.
async fn answer(handler: &dyn RpcHandler, request: Request) -> Response {
    if crate::telemetry::current_request_id().is_some() {
        tracing::debug!(call = call_name(&request), "peer call");
    }
    let request = match bounds::admit(request) {
        Ok(request) => request,
        Err(e) => return Response::Error(e),
    };
    match AssertUnwindSafe(handler.handle(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("RPC handler panicked");
            Response::Error(RemoteError::Internal("the handler panicked".into()))
        }
    }
}

/// The request's kind, for the log line of a traced call.
fn call_name(request: &Request) -> &'static str {
    match request {
        Request::Ping => "ping",
        Request::Read { .. } => "read",
        Request::Merge { .. } => "merge",
        Request::Hint { .. } => "hint",
        Request::Forward(_) => "forward",
        Request::Scan(_) => "scan",
        Request::Summaries { .. } => "summaries",
        Request::Digests { .. } => "digests",
        Request::ReadMany { .. } => "read_many",
        Request::DropIfDigest { .. } => "drop_if_digest",
        Request::Departed { .. } => "departed",
    }
}

fn encode_response(id: u64, response: Response, max: usize) -> Option<Bytes> {
    match frame::encode(&Envelope::new(id, response), max) {
        Ok(payload) => Some(payload),
        Err(e) => {
            // Most likely too large: tell the caller rather than leave it to time out.
            tracing::warn!(error = %e, "RPC response not sent");
            let body = Response::Error(RemoteError::Internal(format!("response not sent: {e}")));
            frame::encode(&Envelope::new(id, body), max).ok()
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A scripted handler and a server on a loopback port, for the RPC tests.

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use super::{serve, RpcHandler};
    use crate::net::{Network, TokioNetwork};
    use crate::rpc::frame::{RpcConfig, RpcStats};
    use crate::rpc::{RemoteError, Request, Response};
    use crate::version::{Actor, Payload, SiblingSet, VersionVector};

    pub fn sample_set() -> SiblingSet {
        let a = Actor { node: 1, epoch: 0 };
        let b = Actor { node: 2, epoch: 3 };
        let value = Payload::Value {
            data: Bytes::from_static(b"v\x00\xff"),
            content_type: "application/octet-stream".into(),
        };
        let (set, _) = SiblingSet::new()
            .update(None, a, value, 1_000)
            .expect("a fresh counter");
        // Written without having seen the value: the two stay siblings.
        let (set, _) = set
            .update(Some(&VersionVector::new()), b, Payload::Tombstone, 2_000)
            .expect("a fresh counter");
        set
    }

    /// The answer the scripted handler gives: a pure function of the request, so a test
    /// can compute what it expects.
    pub fn respond(request: &Request) -> Response {
        match request {
            Request::Ping => Response::Pong { node_id: 7 },
            Request::Read { key } => match key.as_str() {
                "none" => Response::Read(None),
                "err:siblings" => Response::Error(RemoteError::SiblingLimit { limit: 64 }),
                "err:unavailable" => Response::Error(RemoteError::Unavailable("down".into())),
                "err:bad" => Response::Error(RemoteError::BadRequest("bad key".into())),
                "err:internal" => Response::Error(RemoteError::Internal("oops".into())),
                k if k.starts_with("sleep:") => Response::Read(None),
                _ => Response::Read(Some(sample_set())),
            },
            Request::Merge { .. } => Response::Merged,
            Request::Hint { target: 0, .. } => Response::HintRefused {
                reason: "full".into(),
            },
            Request::Hint { .. } => Response::HintStored,
            Request::Forward(_) => Response::Written {
                found: true,
                set: sample_set(),
                dot: None,
            },
            Request::Scan(range) => Response::Scanned {
                entries: vec![(range.start.clone().unwrap_or_default(), sample_set())],
                more: range.limit == 1,
            },
            Request::Summaries { intervals } => Response::Summaries(
                intervals
                    .iter()
                    .map(|iv| crate::merkle::Summary {
                        hash: u128::from(iv.lo),
                        count: iv.hi,
                    })
                    .collect(),
            ),
            Request::Digests { interval, .. } => Response::Digests {
                entries: vec![("k".into(), interval.lo)],
                more: false,
            },
            Request::ReadMany { keys } => Response::ReadMany {
                entries: keys
                    .iter()
                    .map(|k| (k.clone(), Some(sample_set())))
                    .collect(),
                more: false,
            },
            Request::DropIfDigest { entries } => Response::Dropped(entries.len()),
            Request::Departed { .. } => Response::Departed(false),
        }
    }

    /// Answers with [`respond`]; `Read { key: "sleep:MS" }` sleeps first and
    /// `Read { key: "panic" }` panics. Records what it saw and how many ran at once.
    #[derive(Default)]
    pub struct Scripted {
        pub seen: Mutex<Vec<String>>,
        pub running: AtomicUsize,
        pub max_running: AtomicUsize,
    }

    #[async_trait]
    impl RpcHandler for Scripted {
        async fn handle(&self, request: Request) -> Response {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push(format!("{request:?}"));
            }
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            struct Leave<'a>(&'a AtomicUsize);
            impl Drop for Leave<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(&self.running);
            if let Request::Read { key } = &request {
                if let Some(ms) = key.strip_prefix("sleep:") {
                    let ms = ms.parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if key == "panic" {
                    panic!("scripted panic");
                }
            }
            respond(&request)
        }
    }

    pub struct TestServer {
        pub addr: SocketAddr,
        pub handler: Arc<Scripted>,
        pub stats: Arc<RpcStats>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl TestServer {
        /// Serves on `addr` (port 0 for any free port).
        pub async fn start(addr: SocketAddr, config: RpcConfig) -> TestServer {
            let listener = TokioNetwork.bind(addr).await.expect("bind");
            let addr = axum::serve::Listener::local_addr(&listener).expect("local addr");
            let handler = Arc::new(Scripted::default());
            let stats = Arc::new(RpcStats::default());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(
                listener,
                handler.clone(),
                config,
                stats.clone(),
                shutdown.clone(),
            ));
            TestServer {
                addr,
                handler,
                stats,
                shutdown,
                task,
            }
        }

        pub async fn any_port() -> TestServer {
            Self::start(loopback(0), RpcConfig::default()).await
        }

        /// Cancels and waits (bounded) for `serve` to return.
        pub async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("serve returns within 5s of shutdown")
                .expect("serve did not panic");
        }
    }

    pub fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Polls `predicate` every 10 ms until it holds; panics after `timeout`.
    pub async fn wait_for(what: &str, timeout: Duration, mut predicate: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !predicate() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use rand::{Rng, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::testing::{wait_for, TestServer};
    use crate::net::TokioNetwork;
    use crate::rpc::client::{connector_for, RpcClient, RpcError};
    use crate::rpc::frame::{RpcConfig, RpcStats};
    use crate::rpc::{Request, Response, PROTOCOL_VERSION};
    use std::sync::Arc;

    const CALL: Duration = Duration::from_secs(5);

    fn client() -> RpcClient {
        RpcClient::new(
            connector_for(Arc::new(TokioNetwork)),
            RpcConfig::default(),
            Arc::new(RpcStats::default()),
        )
    }

    async fn ping(client: &RpcClient, server: &TestServer) {
        let response = client
            .call(server.addr, Request::Ping, CALL)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "ping: {e:?}; client dials {}, server accepted {}, idle closed {}, served {}",
                    client.stats().dials.load(Ordering::SeqCst),
                    server.stats.accepted.load(Ordering::SeqCst),
                    server.stats.idle_closed.load(Ordering::SeqCst),
                    server.stats.requests_served.load(Ordering::SeqCst)
                )
            });
        assert!(matches!(response, Response::Pong { node_id: 7 }));
    }

    /// Writes `bytes` on a fresh connection and expects the server to close it on its own.
    async fn server_closes_after(server: &TestServer, bytes: &[u8]) {
        let mut raw = TcpStream::connect(server.addr).await.expect("connect");
        // The server may close mid-write; that is the point.
        let _ = raw.write_all(bytes).await;
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "server kept the bad connection open");
    }

    fn frame(version: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(version);
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn bad_input_closes_only_that_connection() {
        let server = TestServer::any_port().await;
        // A connection that stays up through all of it.
        let steady = client();
        ping(&steady, &server).await;

        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let random: Vec<u8> = (0..64 * 1024).map(|_| rng.gen()).collect();
        let valid_body =
            rmp_serde::to_vec(&crate::rpc::Envelope::new(1, Request::Ping)).expect("encode");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("random bytes", random),
            (
                "oversized length prefix",
                vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            ),
            ("wrong version", frame(PROTOCOL_VERSION + 1, &valid_body)),
            (
                "garbage msgpack",
                frame(PROTOCOL_VERSION, &[0xc1, 0xc1, 0xc1]),
            ),
            ("empty frame", vec![0, 0, 0, 0]),
            ("a response where a request belongs", {
                let body = rmp_serde::to_vec(&crate::rpc::Envelope::new(1, Response::Merged))
                    .expect("encode");
                frame(PROTOCOL_VERSION, &body)
            }),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            server_closes_after(&server, bytes).await;
            wait_for(what, Duration::from_secs(5), || {
                server.stats.protocol_errors.load(Ordering::SeqCst) == i as u64 + 1
            })
            .await;
            // A fresh connection is served normally, and so is the old one.
            ping(&client(), &server).await;
            ping(&steady, &server).await;
        }
        assert_eq!(steady.stats().snapshot().dials, 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_ends_busy_and_idle_connections_within_a_deadline() {
        let server = TestServer::any_port().await;
        let client = Arc::new(client());
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let client = client.clone();
                let addr = server.addr;
                tokio::spawn(async move {
                    let sleep = Request::Read {
                        key: "sleep:60000".into(),
                    };
                    client.call(addr, sleep, Duration::from_secs(30)).await
                })
            })
            .collect();
        let idle = TcpStream::connect(server.addr).await.expect("connect");
        let handler = server.handler.clone();
        wait_for("handlers running", CALL, || {
            handler.running.load(Ordering::SeqCst) == 5
        })
        .await;
        let addr = server.addr;
        let started = tokio::time::Instant::now();
        server.stop().await;
        assert!(started.elapsed() < Duration::from_secs(2));
        for call in calls {
            let result = tokio::time::timeout(CALL, call)
                .await
                .expect("call ends")
                .expect("no panic");
            assert!(matches!(result, Err(RpcError::Closed)), "{result:?}");
        }
        // Aborted handlers are gone, and nothing accepts any more.
        wait_for("handlers aborted", CALL, || {
            handler.running.load(Ordering::SeqCst) == 0
        })
        .await;
        assert!(TcpStream::connect(addr).await.is_err());
        drop(idle);
        client.close_all().await;
    }

    #[tokio::test]
    async fn in_flight_requests_per_connection_are_bounded() {
        let config = RpcConfig {
            max_in_flight_per_conn: 4,
            ..RpcConfig::default()
        };
        let server = TestServer::start(super::testing::loopback(0), config).await;
        let client = Arc::new(client());
        let calls = (0..40).map(|_| {
            let client = client.clone();
            let addr = server.addr;
            async move {
                let sleep = Request::Read {
                    key: "sleep:20".into(),
                };
                client.call(addr, sleep, CALL).await
            }
        });
        for result in futures::future::join_all(calls).await {
            assert!(matches!(result, Ok(Response::Read(None))), "{result:?}");
        }
        let max = server.handler.max_running.load(Ordering::SeqCst);
        assert!((2..=4).contains(&max), "max concurrent handlers {max}");
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_the_client_dials_again() {
        let config = RpcConfig {
            max_connections: 1,
            idle_timeout: Duration::from_millis(200),
            ..RpcConfig::default()
        };
        let server = TestServer::start(super::testing::loopback(0), config.clone()).await;
        // A peer that connects and goes silent loses its slot...
        server_closes_after(&server, &[]).await;
        // ...and a connection that was busy a while ago is closed once it goes quiet. The
        // client shares the server's settings, as every node of a cluster does.
        let client = RpcClient::new(
            connector_for(Arc::new(TokioNetwork)),
            config.clone(),
            Arc::new(RpcStats::default()),
        );
        ping(&client, &server).await;
        wait_for("the idle close", CALL, || {
            server.stats.idle_closed.load(Ordering::SeqCst) >= 2
        })
        .await;
        // The only slot is free again, and the client redials by itself: it retires a
        // connection quiet for half the idle timeout rather than race the server's close.
        ping(&client, &server).await;
        assert_eq!(client.stats().dials.load(Ordering::SeqCst), 2, "one redial");
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn connections_are_bounded() {
        let config = RpcConfig {
            max_connections: 1,
            ..RpcConfig::default()
        };
        let server = TestServer::start(super::testing::loopback(0), config).await;
        let first = client();
        let second = client();
        ping(&first, &server).await;
        let blocked = second
            .call(server.addr, Request::Ping, Duration::from_millis(300))
            .await;
        assert!(matches!(blocked, Err(RpcError::Timeout)), "{blocked:?}");
        first.close_all().await;
        ping(&second, &server).await;
        second.close_all().await;
        server.stop().await;
    }

    /// The server clamps limits (`bounds::admit`); refusals are the handler's
    /// (`bounds::check`, called by `peer_service`, which counts them).
    #[tokio::test]
    async fn peer_values_are_clamped_before_the_handler_sees_them() {
        let server = TestServer::any_port().await;
        let client = client();
        let scan = Request::Scan(crate::rpc::ScanRange {
            start: None,
            start_exclusive: false,
            end: None,
            limit: usize::MAX,
            max_bytes: usize::MAX,
        });
        client.call(server.addr, scan, CALL).await.expect("call");
        let seen = server.handler.seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let max = crate::rpc::bounds::MAX_SCAN_ROWS;
        assert!(seen[0].contains(&format!("limit: {max}")), "{seen:?}");
        client.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn only_peers_that_prove_the_secret_are_served() {
        let auth = |secret: &[u8]| {
            Some(Arc::new(crate::rpc::Authenticator::new(
                crate::config::ClusterSecret::new(secret).expect("a long enough secret"),
                "c".into(),
                Duration::from_millis(500),
                Some(1),
            )))
        };
        let with = |secret: &[u8]| RpcConfig {
            auth: auth(secret),
            ..RpcConfig::default()
        };
        let server =
            TestServer::start(super::testing::loopback(0), with(b"0123456789abcdef")).await;
        let good = RpcClient::new(
            connector_for(Arc::new(TokioNetwork)),
            with(b"0123456789abcdef"),
            Arc::new(RpcStats::default()),
        );
        ping(&good, &server).await;

        let wrong = RpcClient::new(
            connector_for(Arc::new(TokioNetwork)),
            with(b"0123456789abcdeX"),
            Arc::new(RpcStats::default()),
        );
        let refused = wrong.call(server.addr, Request::Ping, CALL).await;
        assert!(
            matches!(refused, Err(RpcError::Handshake(_))),
            "{refused:?}"
        );
        assert_eq!(wrong.stats().snapshot().auth_failed_dials, 1);
        // A client in open mode sends a frame where the hello belongs.
        let open = client();
        let refused = open.call(server.addr, Request::Ping, CALL).await;
        assert!(refused.is_err(), "{refused:?}");
        wait_for("both refusals counted", CALL, || {
            server.stats.auth_refused.load(Ordering::SeqCst) == 2
        })
        .await;
        let seen = server.handler.seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec!["Ping".to_owned()],
            "only the good client's ping ran"
        );
        good.close_all().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_with_an_error() {
        let server = TestServer::any_port().await;
        let client = client();
        let response = client
            .call(
                server.addr,
                Request::Read {
                    key: "panic".into(),
                },
                CALL,
            )
            .await;
        assert!(
            matches!(
                response,
                Ok(Response::Error(crate::rpc::RemoteError::Internal(_)))
            ),
            "{response:?}"
        );
        ping(&client, &server).await;
        client.close_all().await;
        server.stop().await;
    }
}
