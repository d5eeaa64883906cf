//! A client for the HTTP API, over a pooled keep-alive connection set (reqwest).

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

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for the node at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn key_url(&self, key: &str) -> String {
        format!("{}/kv/{}", self.base, utf8_percent_encode(key, KEY_ESCAPES))
    }

    /// Reads a key; `None` when it has no live value.
    pub async fn get(&self, key: &str) -> Result<Option<ReadResult>, ClientError> {
        let resp = self.http.get(self.key_url(key)).send().await?;
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
        let mut req = self.http.put(self.key_url(key)).body(value);
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
        let mut req = self.http.delete(self.key_url(key));
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

    /// `GET /cluster`, as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/cluster").await
    }

    /// Whether this node itself stores `key` (`GET /debug/local/{key}`), tombstones
    /// included.
    pub async fn stores(&self, key: &str) -> Result<bool, ClientError> {
        let path = format!("/debug/local/{}", utf8_percent_encode(key, KEY_ESCAPES));
        match self.get_json(&path).await {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 404, .. }) => Ok(false),
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
