//! The HTTP API's serve loop: hyper's HTTP/1.1 connections over any [`Listener`], with
//! the bounds that keep slow or idle clients from holding the node's connections.
//!
//! - Connection slots ([`ConnectionSlots`]) are taken before `accept`: past them a client
//!   waits in the kernel backlog. A few reserved slots, used only once the ordinary ones
//!   are full, answer `/health` and `/ready` and 503 anything else.
//! - hyper's header read timeout bounds a request head's arrival. hyper starts it when the
//!   connection waits for the next request, so it also closes idle keep-alive connections.
//! - A connection that moves no byte while no request is being served is closed after the
//!   stall timeout: a client that stops reading its response frees its slot.
//! - Body bounds (declared size, read timeout, bytes in flight) are `super::overload`'s.
//!
//! hyper answers some malformed requests itself, without calling the service, and with an
//! empty body: a request line or header it cannot parse, or a bad `Content-Length` or
//! `Transfer-Encoding` (400); more than [`HYPER_MAX_HEADERS`] headers or a head over
//! [`HYPER_MAX_HEAD_BYTES`] (431); a URI over 65,534 bytes (414, though such a head is
//! over the head bound first). Below hyper's bounds sit tighter ones of our own, checked
//! before routing, that answer the same statuses with the JSON error shape:
//! [`MAX_URI_BYTES`], [`MAX_HEADERS`] and [`MAX_HEAD_BYTES`].

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::error::ApiError;
use super::overload::{is_probe, overloaded};
use crate::config::HttpLimits;
use crate::net::{ConnectionSlots, Slot};

/// The longest request target we route; a key of 1,024 bytes percent-encoded is 3 KiB.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Headers one request may carry.
pub const MAX_HEADERS: usize = 100;
/// A request's head: request line and headers, as sent.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Past these hyper answers by itself, with an empty body (see the module comment).
pub const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;
pub const HYPER_MAX_HEAD_BYTES: usize = 4 * MAX_HEAD_BYTES;
/// hyper's read buffer per connection, which grows to this while a body streams in (its
/// default, about 400 KiB, times a thousand busy connections is 400 MiB). It must hold
/// the largest head hyper parses.
const HYPER_MAX_BUF_BYTES: usize = HYPER_MAX_HEAD_BYTES + 16 * 1024;

/// What the serve loop needs to know.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub limits: HttpLimits,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets every
/// connection finish the request it is serving, and returns once all have closed (the
/// HTTP worker's phase deadline bounds that wait).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    config: ServeConfig,
    shutdown: CancellationToken,
) where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    let slots = ConnectionSlots::new(config.max_connections, config.limits.reserved_connections);
    let limits = Arc::new(config.limits);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = async {
                let slot = slots.acquire().await;
                let (io, addr) = listener.accept().await;
                (slot, io, addr)
            } => accepted,
        };
        let (slot, io, addr) = accepted;
        tracing::trace!(
            ?addr,
            reserved = slot.is_reserved(),
            "HTTP connection accepted"
        );
        connections.spawn(serve_connection(
            io,
            slot,
            router.clone(),
            limits.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, until it closes, stalls, or is drained on shutdown.
async fn serve_connection<I>(
    io: I,
    slot: Slot,
    router: Router,
    limits: Arc<HttpLimits>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        io,
        activity: activity.clone(),
    });
    let reserved = slot.is_reserved();
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let busy = service_activity.busy();
        async move {
            let _busy = busy;
            Ok::<_, Infallible>(answer(req, router, reserved).await)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_buf_size(HYPER_MAX_BUF_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    // Timeouts, resets and malformed requests: the client's doing.
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            why = activity.expired(limits.header_read_timeout, limits.idle_timeout) => {
                tracing::debug!(why, "closing an HTTP connection");
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                // Finishes the request in hand, then closes; an idle connection closes now.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
    drop(slot);
}

/// The router's answer, after the checks that come before routing.
async fn answer(req: Request<Incoming>, router: Router, reserved: bool) -> Response {
    if let Err(e) = check_head(&req) {
        return close(e.into_response());
    }
    if reserved && !is_probe(req.uri().path()) {
        return close(overloaded(
            "every HTTP connection slot is taken; this reserved connection answers only \
             /health and /ready",
        ));
    }
    match router.oneshot(req.map(Body::new)).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// The head bounds of our own (see the module comment).
fn check_head<B>(req: &Request<B>) -> Result<(), ApiError> {
    let uri_bytes = req.uri().to_string().len();
    if uri_bytes > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri_bytes} bytes; the limit is {MAX_URI_BYTES}"),
        ));
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers; the limit is {MAX_HEADERS}",
                headers.len()
            ),
        ));
    }
    // As sent: "name: value\r\n" per header, and the request line.
    let head_bytes = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + req.method().as_str().len()
        + uri_bytes
        + 11;
    if head_bytes > MAX_HEAD_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head is {head_bytes} bytes; the limit is {MAX_HEAD_BYTES}"),
        ));
    }
    Ok(())
}

/// The connection closes after this response.
fn close(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// When a connection last moved a byte, whether a request head is arriving, and how many
/// of its requests are being served.
struct Activity {
    started: Instant,
    /// Milliseconds from `started` to the last byte read or written.
    last_ms: AtomicU64,
    /// Milliseconds from `started` to the first byte of a head not yet complete, or
    /// [`NO_HEAD`].
    head_ms: AtomicU64,
    busy: AtomicUsize,
}

const NO_HEAD: u64 = u64::MAX;

/// Counts a request as being served while it lives.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_ms: AtomicU64::new(NO_HEAD),
            busy: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Bytes came in. With no request in service they begin a head (body bytes and
    /// pipelined requests arrive while one is).
    fn read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Release);
        if self.busy.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_ms
                    .compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// hyper parsed a head and calls the service.
    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head_ms.store(NO_HEAD, Ordering::Release);
        Busy(self.clone())
    }

    /// Resolves, saying why, once no request is being served and either a head has taken
    /// longer than `header` since its first byte or no byte has moved for `idle`.
    async fn expired(&self, header: Duration, idle: Duration) -> &'static str {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1);
        let (header_ms, idle_ms) = (ms(header), ms(idle));
        loop {
            let now = self.now_ms();
            let mut wait_ms = idle_ms;
            if self.busy.load(Ordering::Acquire) == 0 {
                let head = self.head_ms.load(Ordering::Acquire);
                if head != NO_HEAD {
                    let took = now.saturating_sub(head);
                    if took >= header_ms {
                        return "the request head did not arrive within the header read timeout";
                    }
                    wait_ms = wait_ms.min(header_ms - took);
                }
                let quiet = now.saturating_sub(self.last_ms.load(Ordering::Acquire));
                if quiet >= idle_ms {
                    return "no byte moved within the idle timeout";
                }
                wait_ms = wait_ms.min(idle_ms - quiet);
            }
            // A request being served is bounded by its own timeouts: look again later.
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// The connection's IO, noting every byte that moves.
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: usize, value_bytes: usize) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for i in 0..headers {
            b = b.header(format!("x-h{i}"), "v".repeat(value_bytes));
        }
        b.body(()).expect("a valid request")
    }

    #[test]
    fn head_bounds_answer_json_statuses() {
        assert!(check_head(&req("/kv/a", 10, 10)).is_ok());
        let long = format!("/kv/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(
            check_head(&req(&long, 0, 0)).map_err(|e| e.status),
            Err(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            check_head(&req("/kv/a", MAX_HEADERS + 1, 1)).map_err(|e| e.code),
            Err("headers_too_large")
        );
        assert_eq!(
            check_head(&req("/kv/a", 4, MAX_HEAD_BYTES / 4)).map_err(|e| e.status),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[tokio::test]
    async fn a_quiet_connection_expires_only_when_nothing_is_served() {
        let header = Duration::from_millis(100);
        let idle = Duration::from_millis(300);
        let activity = Arc::new(Activity::new());
        let busy = activity.busy();
        let expired =
            tokio::time::timeout(Duration::from_millis(600), activity.expired(header, idle));
        assert!(expired.await.is_err(), "a request in service never expires");
        drop(busy);
        let started = Instant::now();
        let why = activity.expired(header, idle).await;
        assert!(why.contains("idle"), "{why}");
        assert!(started.elapsed() >= idle);
        // The first byte of a head starts the header bound, shorter than the idle one.
        activity.read();
        let started = Instant::now();
        let why = activity.expired(header, idle).await;
        assert!(why.contains("head"), "{why}");
        assert!(started.elapsed() >= header && started.elapsed() < idle);
    }
}
