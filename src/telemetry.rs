//! Logging: tracing-subscriber to stderr, as text or JSON, every line naming the node;
//! and the request id that ties one client request's lines together on every node.
//!
//! A request id comes from the HTTP edge (`http::request_id`): the client's
//! `X-Request-Id` if it is a sane one, else a fresh one. It lives in a task-local for the
//! request's duration, so that the RPC client picks it up for every call the request
//! makes (`rpc::client`) and a replica answers those calls inside the same
//! `request{id=…}` span (`rpc::server`). Work a request spawns takes it along through
//! [`carry`]. Grepping one id over every node's log then shows the request's whole path.

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use futures::future::Either;
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `ringkv serve` asks of its logging.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A level or a filter; `RUST_LOG` overrides it.
    pub level: String,
    /// One info line per HTTP request (`--access-log`).
    pub access_log: bool,
}

/// The node id, once the data dir gave it: the formatter puts it on every line. One per
/// process: the binary runs one node (an in-process cluster, like the simulation, does
/// not install this formatter, and its nodes' ids do not show here).
static NODE_ID: OnceLock<String> = OnceLock::new();
static ACCESS_LOG: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber.
pub fn init(settings: &LogSettings) {
    ACCESS_LOG.store(settings.access_log, Ordering::Relaxed);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests calling in twice) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Text => builder
            .map_event_format(|inner| WithNode { inner, json: false })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .map_event_format(|inner| WithNode { inner, json: true })
            .try_init(),
    };
}

/// Names this process's node on every log line from now on. The first call wins.
pub fn set_node_id(id: impl fmt::Display) {
    let _ = NODE_ID.set(id.to_string());
}

/// Whether `--access-log` asked for one info line per HTTP request.
pub fn access_log() -> bool {
    ACCESS_LOG.load(Ordering::Relaxed)
}

/// Puts `node=<id>` in front of a text line, and `"node":"<id>"` first in a JSON object.
/// Lines before the data dir is open (the config, the cache size) have no id to show.
struct WithNode<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some(id) = NODE_ID.get() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "node={id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            // The id is 16 hex digits: nothing in it needs escaping.
            Some(rest) => write!(writer, "{{\"node\":\"{id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// The longest request id taken from a client or a peer.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A request's id: 1 to [`MAX_REQUEST_ID_BYTES`] visible ASCII characters (`!` to `~`),
/// so that it is a valid header value and cannot break a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: `bits` as 16 hex digits (`http::request_id::RequestIds` draws them).
    pub fn from_bits(bits: u64) -> RequestId {
        RequestId(format!("{bits:016x}"))
    }

    /// `raw` if it is a valid id; `None` otherwise (too long, empty, a space, a control
    /// or non-ASCII byte).
    pub fn parse(raw: &[u8]) -> Option<RequestId> {
        let valid = (1..=MAX_REQUEST_ID_BYTES).contains(&raw.len())
            && raw.iter().all(|b| b.is_ascii_graphic());
        // Visible ASCII is UTF-8.
        valid.then(|| RequestId(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Decodes an optional id from a peer's frame: a peer is a trust boundary. The string is
/// looked at where it lies in the frame, and copied only when it is a valid id; an
/// invalid one (too long, unprintable) is dropped, and the request is served untraced
/// rather than refused over a log field.
pub fn deserialize_peer_request_id<'de, D>(d: D) -> Result<Option<RequestId>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<RequestId>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a request id string, or nil")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(RequestId::parse(s.as_bytes()))
        }
        fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
            Ok(RequestId::parse(b))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Visit)
        }
    }
    d.deserialize_option(Visit)
}

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// The id of the request the current task works for, if any.
pub fn current_request_id() -> Option<RequestId> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The span every line of a request's work is logged in, on every node it reaches.
pub fn request_span(id: &RequestId) -> Span {
    tracing::info_span!("request", id = %id)
}

/// Runs `fut` as the work of request `id`: in its span, with its id for the RPCs it makes.
pub fn in_request<F: Future>(id: RequestId, fut: F) -> impl Future<Output = F::Output> {
    let span = request_span(&id);
    REQUEST_ID.scope(id, fut.instrument(span))
}

/// `fut` as work of the current request (its id and span), for a task it spawns: a
/// spawned task starts without the spawner's task-local and span.
pub fn carry<F: Future>(
    fut: F,
) -> Either<TaskLocalFuture<RequestId, Instrumented<F>>, Instrumented<F>> {
    match current_request_id() {
        Some(id) => Either::Left(REQUEST_ID.scope(id, fut.in_current_span())),
        None => Either::Right(fut.in_current_span()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        assert_eq!(
            RequestId::parse(b"abc-123_XYZ.:/").map(|r| r.0),
            Some("abc-123_XYZ.:/".to_owned())
        );
        let longest = vec![b'a'; MAX_REQUEST_ID_BYTES];
        assert!(RequestId::parse(&longest).is_some());
        let too_long = vec![b'a'; MAX_REQUEST_ID_BYTES + 1];
        for bad in [
            &b""[..],
            &too_long,
            b"has space",
            b"new\nline",
            b"tab\t",
            "caf\u{e9}".as_bytes(),
            b"\x7f",
        ] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?} accepted");
        }
        let fresh = RequestId::from_bits(0x00c0_ffee);
        assert_eq!(fresh.as_str(), "0000000000c0ffee");
        assert_eq!(fresh.as_str().len(), 16);
        assert!(RequestId::parse(fresh.as_str().as_bytes()).is_some());
    }

    #[tokio::test]
    async fn the_id_follows_the_request_into_spawned_work() {
        let id = RequestId::parse(b"trace-me").expect("valid");
        let seen = in_request(id.clone(), async {
            let here = current_request_id();
            let spawned = tokio::spawn(carry(async { current_request_id() }))
                .await
                .expect("join");
            let bare = tokio::spawn(async { current_request_id() })
                .await
                .expect("join");
            (here, spawned, bare)
        })
        .await;
        assert_eq!(seen, (Some(id.clone()), Some(id), None));
        assert_eq!(current_request_id(), None);
    }
}
