//! [`Client`]: its nodes, its pooled connections, and the one send loop every call goes
//! through, which decides when the next node or another attempt is safe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::wire::ErrorBody;
use crate::{CallOptions, ClientError, ClientOptions};

/// Everything but RFC 3986's unreserved characters is escaped, `/` included, so a key
/// always travels as one path segment.
pub(crate) const ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest error body kept for a message: an error is a short JSON object, and a
/// proxy's HTML page is not worth more.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client of one ringkv cluster, through any of its nodes.
///
/// Cheap to clone: clones share the connection pool. Calls start at the node that
/// answered last and move to the next one when a node cannot serve:
/// - every call moves on when it could not connect (the request never left, so even a
///   write cannot happen twice);
/// - idempotent calls (GET, HEAD, list, a batch of gets, `/ready`…) also move on after a
///   timeout, a cut connection or a 503, and after every node was tried once make
///   [`ClientOptions::retries`] more attempts with a doubling backoff;
/// - a write (PUT, DELETE, a batch with a write) that reached a node is never re-sent:
///   under dotted version vectors a second PUT with the same token is a new sibling,
///   not a repeat of the first, and a timed-out write may well have been stored.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    call: CallOptions,
}

#[derive(Debug)]
struct Shared {
    http: reqwest::Client,
    /// `scheme://host:port[/path]`, without a trailing slash.
    nodes: Vec<String>,
    /// The node the next call starts at: the last one that answered.
    preferred: AtomicUsize,
    options: ClientOptions,
}

/// Whether a call may be sent again once it reached a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotent {
    Yes,
    No,
}

impl Client {
    /// A client of the node at `url`, with default options. `host:port` without a scheme
    /// means `http://host:port`.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_options(url, &ClientOptions::default())
    }

    /// A client whose every request, connecting included, ends after `timeout`.
    pub fn with_timeout(url: &str, timeout: std::time::Duration) -> Result<Self, ClientError> {
        Self::with_options(
            url,
            &ClientOptions {
                timeout,
                connect_timeout: timeout,
                ..ClientOptions::default()
            },
        )
    }

    pub fn with_options(url: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        Self::with_nodes([url], options)
    }

    /// A client of a cluster through several of its nodes, tried in turn (see
    /// [`Client`]). Every URL is checked here: a bad one fails now, not at a call.
    pub fn with_nodes<I, S>(urls: I, options: &ClientOptions) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|u| normalise_url(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        Ok(Client {
            shared: Arc::new(Shared {
                http: options.http_client()?,
                nodes,
                preferred: AtomicUsize::new(0),
                options: options.clone(),
            }),
            call: CallOptions {
                r: options.r.clone(),
                w: options.w.clone(),
                timeout: None,
            },
        })
    }

    /// This client with `call`'s `r`, `w` or timeout for the calls made through it; what
    /// `call` leaves unset stays as it was. Shares the pool.
    ///
    /// ```
    /// # use ringkv_client::{Client, CallOptions};
    /// # use std::time::Duration;
    /// let client = Client::new("127.0.0.1:7070")?;
    /// let strict = client.with(CallOptions::new().r("all").timeout(Duration::from_secs(1)));
    /// # Ok::<(), ringkv_client::ClientError>(())
    /// ```
    pub fn with(&self, call: CallOptions) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            call: CallOptions {
                r: call.r.or_else(|| self.call.r.clone()),
                w: call.w.or_else(|| self.call.w.clone()),
                timeout: call.timeout.or(self.call.timeout),
            },
        }
    }

    /// The first node this client was given.
    pub fn base(&self) -> &str {
        // `with_nodes` refuses an empty list.
        self.shared.nodes.first().map_or("", String::as_str)
    }

    /// Every node, in the order given.
    pub fn nodes(&self) -> &[String] {
        &self.shared.nodes
    }

    /// This client's `r`, for calls that pass it among other parameters.
    pub(crate) fn call_r(&self) -> Option<&str> {
        self.call.r.as_deref()
    }

    /// `?r=…` or `?w=…` (or nothing) for this client's call options.
    pub(crate) fn quorum_query(&self, name: &str) -> String {
        let value = match name {
            "r" => self.call.r.as_deref(),
            _ => self.call.w.as_deref(),
        };
        value
            .map(|v| format!("?{name}={}", utf8_percent_encode(v, ESCAPES)))
            .unwrap_or_default()
    }

    /// Sends the request `build` makes for a node's base URL, moving across nodes and
    /// retrying as [`Client`] describes. On success, the node's answer (any status but
    /// a retried 503).
    pub(crate) async fn send<F>(
        &self,
        idempotent: Idempotent,
        build: F,
    ) -> Result<Response, ClientError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let nodes = &self.shared.nodes;
        let options = &self.shared.options;
        let extra = match idempotent {
            Idempotent::Yes => options.retries,
            Idempotent::No => 0,
        };
        let attempts = nodes.len().saturating_add(extra as usize);
        let start = self.shared.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..attempts {
            if let Some(extra) = attempt.checked_sub(nodes.len()) {
                let extra = u32::try_from(extra).unwrap_or(u32::MAX).saturating_add(1);
                tokio::time::sleep(options.backoff_before(extra)).await;
            }
            let index = start.wrapping_add(attempt) % nodes.len();
            let mut request = build(&self.shared.http, &nodes[index]);
            if let Some(timeout) = self.call.timeout {
                request = request.timeout(timeout);
            }
            let error = match request.send().await {
                Ok(resp)
                    if resp.status() == StatusCode::SERVICE_UNAVAILABLE
                        && idempotent == Idempotent::Yes
                        && attempt + 1 < attempts =>
                {
                    api_error(resp).await
                }
                Ok(resp) => {
                    self.shared.preferred.store(index, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => ClientError::Transport(e),
            };
            let next = match idempotent {
                Idempotent::Yes => true,
                Idempotent::No => error.is_connect(),
            };
            if !next {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or(ClientError::NoNodes))
    }

    /// The body, read up to [`ClientOptions::max_response_bytes`].
    pub(crate) async fn body(&self, resp: Response) -> Result<Bytes, ClientError> {
        read_capped(resp, self.shared.options.max_response_bytes).await
    }

    /// The body as JSON of type `T`.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: Response,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let body = self.body(resp).await?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { what, source })
    }
}

/// `url` as a base: `http://` assumed without a scheme; http or https, a host, no query
/// or fragment; no trailing slash.
fn normalise_url(url: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = url.trim();
    let full = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let parsed = reqwest::Url::parse(&full).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a node URL takes no query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "credentials go in ClientOptions::auth_token, not the URL",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Reads `resp`'s body, failing past `limit` bytes instead of growing without bound.
async fn read_capped(mut resp: Response, limit: usize) -> Result<Bytes, ClientError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ClientError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(ClientError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The node's JSON error, or the status and (the start of) the body when it is not one.
pub(crate) async fn api_error(resp: Response) -> ClientError {
    let status = resp.status().as_u16();
    let body = match read_capped(resp, MAX_ERROR_BODY).await {
        Ok(body) => body,
        Err(ClientError::TooLarge { .. }) => Bytes::from_static(b"(an error body over 64 KiB)"),
        Err(e) => return e,
    };
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Unexpected {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
    }
}

pub(crate) fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_scheme_is_http() {
        assert_eq!(
            normalise_url("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(normalise_url("node-1:7070/").unwrap(), "http://node-1:7070");
        assert_eq!(
            normalise_url("https://a.example:443/").unwrap(),
            "https://a.example"
        );
        assert_eq!(
            normalise_url(" http://h:1/prefix/ ").unwrap(),
            "http://h:1/prefix"
        );
    }

    #[test]
    fn bad_urls_are_refused_when_the_client_is_built() {
        for url in [
            "",
            "ftp://h:1",
            "http://",
            "http://h:1/?a=b",
            "http://u:p@h:1",
            "h:99999",
        ] {
            let err = Client::new(url).expect_err(url);
            assert!(matches!(err, ClientError::BadUrl { .. }), "{url}: {err}");
        }
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::with_nodes(none, &ClientOptions::default()),
            Err(ClientError::NoNodes)
        ));
    }

    #[test]
    fn call_options_override_only_what_they_set() {
        let base = Client::with_options(
            "h:1",
            &ClientOptions {
                r: Some("one".into()),
                w: Some("all".into()),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let c = base.with(CallOptions::new().r("quorum"));
        assert_eq!(c.quorum_query("r"), "?r=quorum");
        assert_eq!(c.quorum_query("w"), "?w=all");
        assert_eq!(base.quorum_query("r"), "?r=one");
    }
}
