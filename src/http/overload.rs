//! Overload bounds of the HTTP API: requests in flight, request-body bytes in flight, and
//! each route's body (declared size, read deadline). Past a bound the answer is 503
//! `overloaded` with `Retry-After: 1` at once: nothing queues, so a burst costs the node
//! no more memory than its bounds, and the client learns at once to back off.
//!
//! `/health` and `/ready` are not counted against the request bound: they have slots of
//! their own ([`PROBE_SLOTS`]), so a probe keeps answering while the node sheds load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::HttpLimits;

/// Probes answered at once, beside the request bound.
pub const PROBE_SLOTS: usize = 64;
/// A shed request's body is read and dropped, up to this many bytes within
/// [`LINGER_TIME`], after its 503 is sent: closing on a client still sending would reset
/// the connection, and a reset can lose the 503 before the client reads it.
const LINGER_MAX_BYTES: u64 = 4 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// The paths that are never shed with the load.
pub fn is_probe(path: &str) -> bool {
    path == "/health" || path == "/ready"
}

/// 503 `overloaded`, with `Retry-After: 1`.
pub fn overloaded(message: impl Into<String>) -> Response {
    let mut resp =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The node's shared bounds: one per router.
#[derive(Debug)]
pub struct Overload {
    requests: Arc<Semaphore>,
    max_in_flight: usize,
    probes: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    shed: Arc<ShedStats>,
}

/// Requests answered 503 `overloaded`, by the bound that was full (`/metrics`).
#[derive(Debug, Default)]
pub struct ShedStats {
    /// `--max-in-flight`: no request slot was free.
    pub in_flight: AtomicU64,
    /// `--max-body-bytes-in-flight`: the body budget was spent.
    pub body_bytes: AtomicU64,
}

impl Overload {
    pub fn new(limits: &HttpLimits, shed: Arc<ShedStats>) -> Arc<Self> {
        let max_in_flight = limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let max_body_bytes = limits
            .max_body_bytes_in_flight
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Overload {
            requests: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            probes: Arc::new(Semaphore::new(PROBE_SLOTS)),
            body_bytes: Arc::new(Semaphore::new(max_body_bytes)),
            max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            shed,
        })
    }

    fn shed(&self, counter: &AtomicU64, message: String) -> Response {
        counter.fetch_add(1, Ordering::Relaxed);
        overloaded(message)
    }

    /// `limit` bytes of body for one route, read within the node's body read timeout.
    pub fn body(self: &Arc<Self>, limit: usize) -> BodyBound {
        BodyBound {
            overload: self.clone(),
            limit,
        }
    }
}

/// The router's outer layer: a request slot, or 503.
pub async fn admit(State(overload): State<Arc<Overload>>, req: Request, next: Next) -> Response {
    let slots = if is_probe(req.uri().path()) {
        &overload.probes
    } else {
        &overload.requests
    };
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        linger(req.into_body());
        return overload.shed(
            &overload.shed.in_flight,
            format!(
                "the node is serving {} requests, its limit (--max-in-flight); retry shortly or \
             through another node",
                overload.max_in_flight
            ),
        );
    };
    let mut resp = next.run(req).await;
    // Every 503 says when to come back, whichever layer made it (a quorum that timed out,
    // a node rejoining): the client backs off instead of retrying at once.
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    resp
}

/// Reads and drops what is left of a shed request's body, in the background and within
/// bounds (see [`LINGER_MAX_BYTES`]); hyper sends the 503 meanwhile.
fn linger(body: Body) {
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len() as u64);
                    if read > LINGER_MAX_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// One route's body bound (see [`read_body`]).
#[derive(Clone, Debug)]
pub struct BodyBound {
    overload: Arc<Overload>,
    limit: usize,
}

/// Reads a request's body before the handler runs, within three bounds: a declared
/// `Content-Length` over the route's limit is 413 before a byte is read; the bytes are
/// taken from the node's body budget (503 once it is spent) and held until the response;
/// and the whole body must arrive within the body read timeout (408).
pub async fn read_body(State(bound): State<BodyBound>, req: Request, next: Next) -> Response {
    let declared = match declared_length(&req) {
        Ok(declared) => declared,
        Err(e) => return e.into_response(),
    };
    if let Some(n) = declared.filter(|n| *n > bound.limit as u64) {
        return Refused::Declared(n, bound.limit).into_response(&bound.overload);
    }
    let (parts, body) = req.into_parts();
    let mut budget = Budget::new(&bound.overload);
    if let Some(n) = declared {
        if let Err(refused) = budget.take(n as usize) {
            linger(body);
            return refused.into_response(&bound.overload);
        }
    }
    let read = tokio::time::timeout(
        bound.overload.body_read_timeout,
        collect(body, bound.limit, declared, &mut budget),
    )
    .await
    .unwrap_or(Err(Refused::Timeout));
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(refused) => return refused.into_response(&bound.overload),
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    // The handler is done with the bytes only now.
    drop(budget);
    resp
}

/// Why a body was not read whole.
#[derive(Debug)]
enum Refused {
    /// The declared length, and the route's limit.
    Declared(u64, usize),
    /// The body passed the route's limit as it streamed.
    TooLarge(usize),
    /// The node's body budget is spent.
    Overloaded,
    Timeout,
    Unreadable(String),
}

impl Refused {
    fn into_response(self, overload: &Overload) -> Response {
        let error = match self {
            Refused::Overloaded => {
                return overload.shed(
                    &overload.shed.body_bytes,
                    format!(
                        "the node holds {} bytes of request bodies, its limit \
                     (--max-body-bytes-in-flight); retry shortly or through another node",
                        overload.max_body_bytes
                    ),
                )
            }
            Refused::Declared(n, limit) => ApiError::too_large(format!(
                "the body is declared as {n} bytes; this route takes at most {limit}"
            )),
            Refused::TooLarge(limit) => ApiError::too_large(format!(
                "the body is over {limit} bytes, the most this route takes"
            )),
            Refused::Timeout => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(overload.body_read_timeout)
                ),
            ),
            Refused::Unreadable(e) => {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
        };
        // The rest of the body is never read: the connection closes after the answer.
        let mut resp = error.into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// `Content-Length`, if the request has one. hyper has already refused a malformed one.
fn declared_length(req: &Request) -> Result<Option<u64>, ApiError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Content-Length is not a number")),
    }
}

/// The body's bytes, taking budget for each frame as it arrives when no length was
/// declared (a declared length was taken whole before reading).
async fn collect(
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
    budget: &mut Budget,
) -> Result<Bytes, Refused> {
    // A declared length is at most `limit` here, and its budget is held.
    let capacity = declared.map_or(0, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refused::Unreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len().saturating_add(data.len()) > limit {
            return Err(Refused::TooLarge(limit));
        }
        if declared.is_none() {
            if let Err(refused) = budget.take(data.len()) {
                linger(body);
                return Err(refused);
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Body bytes taken from the node's budget, given back when dropped.
struct Budget {
    overload: Arc<Overload>,
    held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    fn new(overload: &Arc<Overload>) -> Self {
        Budget {
            overload: overload.clone(),
            held: None,
        }
    }

    fn take(&mut self, bytes: usize) -> Result<(), Refused> {
        if bytes == 0 {
            return Ok(());
        }
        let taken = u32::try_from(bytes).ok().and_then(|n| {
            self.overload
                .body_bytes
                .clone()
                .try_acquire_many_owned(n)
                .ok()
        });
        match (taken, &mut self.held) {
            (Some(permit), Some(held)) => held.merge(permit),
            (Some(permit), None) => self.held = Some(permit),
            (None, _) => return Err(Refused::Overloaded),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_in_flight: usize, max_body: usize) -> HttpLimits {
        HttpLimits {
            max_in_flight,
            max_body_bytes_in_flight: max_body,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn budget_sheds_past_the_bytes_in_flight_and_gives_back_on_drop() {
        let o = Overload::new(&limits(4, 100), Arc::default());
        let mut a = Budget::new(&o);
        assert!(a.take(60).is_ok());
        assert!(a.take(30).is_ok());
        let mut b = Budget::new(&o);
        let shed = b.take(20).expect_err("over the budget").into_response(&o);
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            shed.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(o.shed.body_bytes.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(b.take(100).is_ok());
    }
}
