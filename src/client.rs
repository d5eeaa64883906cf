//! A client for the HTTP API, over a pooled keep-alive connection set (reqwest).
//!
//! One [`Client`] is cheap to clone and shares its pool: the CLI makes one per command,
//! `ringkv bench` one per node shared by all its workers.

use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::StatusCode;
use serde::Deserialize;

const TOKEN_HEADER: &str = "x-causality-token";
/// Everything but RFC 3986's unreserved characters is escaped, `/` included, so a key
/// always travels as one path segment.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer: HTTP {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("the auth token cannot be sent: a token is printable ASCII without spaces")]
    BadAuthToken,
    #[error("reading the CA certificate {path}: {source}")]
    CaCert {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The node refused the request's credentials: no token, a wrong one (401), or a
    /// client token on an admin route that needs an admin token (403).
    pub fn is_auth_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::Api {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// A bearer token for the API. Its `Debug` does not show it, so options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(pub String);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    pub value: String,
    pub encoding: String,
    pub content_type: String,
}

/// A successful read.
#[derive(Debug, Clone)]
pub enum ReadResult {
    Value {
        data: Bytes,
        content_type: String,
        token: String,
    },
    Siblings {
        siblings: Vec<Sibling>,
        token: String,
        /// The JSON body as the server sent it.
        raw: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListItem {
    pub key: String,
    pub siblings: Vec<Sibling>,
    pub causality_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListPage {
    pub items: Vec<ListItem>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

#[derive(Deserialize)]
struct SiblingsBody {
    siblings: Vec<Sibling>,
}

/// How a [`Client`] talks to its node.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The whole request, connect to last body byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept for reuse: at least the number of requests the
    /// caller has in flight, or every burst past it dials anew.
    pub max_idle_connections: usize,
    /// Sent as `?r=` on reads and `?w=` on writes (`2`, `one`, `quorum`, `all`); the
    /// node's defaults when `None`.
    pub r: Option<String>,
    pub w: Option<String>,
    /// Sent as `Authorization: Bearer …` on every request (a node started with
    /// `--auth-token-file`).
    pub auth_token: Option<AuthToken>,
    /// A PEM file of CA certificates: an `https://` node is verified against these alone,
    /// instead of the built-in public roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_idle_connections: 64,
            r: None,
            w: None,
            auth_token: None,
            ca_cert: None,
        }
    }
}

impl ClientOptions {
    /// The reqwest client these options describe: timeouts, pool, token, CA. Shared with
    /// whatever else talks to the node for the same caller (the bench's `/metrics` reads).
    pub fn http_client(&self) -> Result<reqwest::Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(self.max_idle_connections)
            // Under the node's idle close (`--idle-timeout`, 60 s): a pooled connection is
            // retired here before the node closes it, so a request never races that close.
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .tcp_nodelay(true);
        if let Some(AuthToken(token)) = &self.auth_token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadAuthToken)?;
            // Kept out of reqwest's debug output.
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaCert {
                path: path.clone(),
                source,
            })?;
            // Only the given CA: a node's private CA is what the caller means to trust.
            builder = builder.tls_built_in_root_certs(false);
            let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
            if certs.is_empty() {
                return Err(ClientError::CaCert {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "it holds no PEM certificate",
                    ),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder.build()?)
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `?r=…` and `?w=…`, or empty.
    read_query: String,
    write_query: String,
}

impl Client {
    /// A client for the node at `base` (`http://host:port` or `https://host:port`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_options(base, &ClientOptions::default())
    }

    /// A client whose every request, connecting included, ends after `timeout`.
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_options(
            base,
            &ClientOptions {
                timeout,
                connect_timeout: timeout,
                ..ClientOptions::default()
            },
        )
    }

    pub fn with_options(base: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        let http = options.http_client()?;
        let query = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| format!("?{name}={}", utf8_percent_encode(v, KEY_ESCAPES)))
                .unwrap_or_default()
        };
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            read_query: query("r", &options.r),
            write_query: query("w", &options.w),
        })
    }

    /// The node this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn key_url(&self, key: &str) -> String {
        format!("{}/kv/{}", self.base, utf8_percent_encode(key, KEY_ESCAPES))
    }

    fn read_url(&self, key: &str) -> String {
        let mut url = self.key_url(key);
        url.push_str(&self.read_query);
        url
    }

    fn write_url(&self, key: &str) -> String {
        let mut url = self.key_url(key);
        url.push_str(&self.write_query);
        url
    }

    /// Whether `key` has a live value, without reading the body into a result: the read
    /// of a load generator, which must not measure its own parsing.
    pub async fn exists(&self, key: &str) -> Result<bool, ClientError> {
        let resp = self.http.get(self.read_url(key)).send().await?;
        match resp.status() {
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
                resp.bytes().await?;
                Ok(true)
            }
            StatusCode::NOT_FOUND => {
                resp.bytes().await?;
                Ok(false)
            }
            _ => Err(api_error(resp).await),
        }
    }

    /// A blind write that does not keep the new token.
    pub async fn put_blind(&self, key: &str, value: Bytes) -> Result<(), ClientError> {
        let resp = self
            .http
            .put(self.write_url(key))
            .body(value)
            .send()
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(api_error(resp).await),
        }
    }

    /// Reads a key; `None` when it has no live value.
    pub async fn get(&self, key: &str) -> Result<Option<ReadResult>, ClientError> {
        let resp = self.http.get(self.read_url(key)).send().await?;
        let token = header(&resp, TOKEN_HEADER);
        match resp.status() {
            StatusCode::OK => {
                let content_type = header(&resp, "content-type");
                Ok(Some(ReadResult::Value {
                    data: resp.bytes().await?,
                    content_type,
                    token,
                }))
            }
            StatusCode::MULTIPLE_CHOICES => {
                let raw = resp.text().await?;
                let body: SiblingsBody =
                    serde_json::from_str(&raw).map_err(|e| ClientError::Unexpected {
                        status: 300,
                        body: e.to_string(),
                    })?;
                Ok(Some(ReadResult::Siblings {
                    siblings: body.siblings,
                    token,
                    raw,
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(api_error(resp).await),
        }
    }

    /// Writes a value; returns the new causality token.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: Option<&str>,
        token: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut req = self.http.put(self.write_url(key)).body(value);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        let resp = req.send().await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(header(&resp, TOKEN_HEADER)),
            _ => Err(api_error(resp).await),
        }
    }

    /// Deletes a key; `false` when there was no live value.
    pub async fn delete(&self, key: &str, token: Option<&str>) -> Result<bool, ClientError> {
        let mut req = self.http.delete(self.write_url(key));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        let resp = req.send().await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(api_error(resp).await),
        }
    }

    pub async fn list(
        &self,
        prefix: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ListPage, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(p) = prefix {
            query.push(("prefix", p.to_owned()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        let resp = self
            .http
            .get(format!("{}/kv", self.base))
            .query(&query)
            .send()
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(resp).await);
        }
        Ok(resp.json().await?)
    }
}

impl Client {
    /// `POST` to an admin route; returns the JSON answer.
    pub async fn admin(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(resp.json().await?)
    }

    /// `POST /admin/remove/{id}`: takes a member out of the ring. A live one is refused
    /// (409 `member_live`) unless `force`.
    pub async fn remove(&self, id: &str, force: bool) -> Result<serde_json::Value, ClientError> {
        let id = utf8_percent_encode(id, KEY_ESCAPES);
        let query = if force { "?force=true" } else { "" };
        self.admin(&format!("/admin/remove/{id}{query}")).await
    }

    /// `GET /ready`: `Ok` once the node serves requests, its error (`not_ready`) before.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.get_json("/ready").await.map(|_| ())
    }

    /// `GET /cluster`, as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/cluster").await
    }

    /// Whether this node itself stores `key` (`GET /debug/local/{key}`), tombstones
    /// included.
    pub async fn stores(&self, key: &str) -> Result<bool, ClientError> {
        Ok(self.local(key).await?.is_some())
    }

    /// This node's own sibling set for `key` (`GET /debug/local/{key}`), tombstones
    /// included; `None` when it stores nothing for the key.
    pub async fn local(&self, key: &str) -> Result<Option<serde_json::Value>, ClientError> {
        let path = format!("/debug/local/{}", utf8_percent_encode(key, KEY_ESCAPES));
        match self.get_json(&path).await {
            Ok(set) => Ok(Some(set)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET` any route that answers JSON (`/debug/replication`, `/debug/keys?…`); the
    /// path includes its query string.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(resp).await);
        }
        Ok(resp.json().await?)
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn api_error(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Unexpected { status, body },
    }
}
