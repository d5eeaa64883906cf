//! The calls on keys: `get`, `head`, `put`, `delete`, `batch`, and the bench's lean
//! `exists` and `put_blind`.

use bytes::Bytes;
use percent_encoding::utf8_percent_encode;
use reqwest::StatusCode;

use crate::client::{api_error, header, Idempotent, ESCAPES};
use crate::wire::{decode_siblings, BatchBodyJson, BatchOp, BatchRequest, SiblingsBody};
use crate::{BatchResult, Client, ClientError, Sibling};

/// The header every answer about a key carries, and a write may send back.
pub const TOKEN_HEADER: &str = "x-causality-token";

/// A read: one value, concurrent siblings, or nothing live. Each carries the causality
/// token of what the read saw; write with it to supersede exactly that (after a 404 too:
/// it then covers the tombstones the read saw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Value {
        data: Bytes,
        content_type: String,
        token: String,
    },
    Siblings {
        siblings: Vec<Sibling>,
        token: String,
        /// The JSON body as the node sent it.
        raw: String,
    },
    NotFound {
        token: String,
    },
}

impl ReadResult {
    pub fn token(&self) -> &str {
        match self {
            ReadResult::Value { token, .. }
            | ReadResult::Siblings { token, .. }
            | ReadResult::NotFound { token } => token,
        }
    }

    pub fn is_found(&self) -> bool {
        !matches!(self, ReadResult::NotFound { .. })
    }
}

/// A `HEAD`: how many live siblings (0 when none), and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadResult {
    pub siblings: u64,
    pub token: String,
}

/// A delete: whether there was a live value, and the token of the tombstone (or of what
/// the delete's read saw, when there was none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub found: bool,
    pub token: String,
}

impl Client {
    /// `base/kv/{key}`, the key as one escaped path segment.
    pub fn key_url_on(base: &str, key: &str) -> String {
        format!("{base}/kv/{}", utf8_percent_encode(key, ESCAPES))
    }

    /// The key's URL on the first node.
    pub fn key_url(&self, key: &str) -> String {
        Self::key_url_on(self.base(), key)
    }

    /// Reads a key.
    pub async fn get(&self, key: &str) -> Result<ReadResult, ClientError> {
        let query = self.quorum_query("r");
        let resp = self
            .send(Idempotent::Yes, |http, base| {
                http.get(format!("{}{query}", Self::key_url_on(base, key)))
            })
            .await?;
        let token = header(&resp, TOKEN_HEADER);
        match resp.status() {
            StatusCode::OK => {
                let content_type = header(&resp, "content-type");
                Ok(ReadResult::Value {
                    data: self.body(resp).await?,
                    content_type,
                    token,
                })
            }
            StatusCode::MULTIPLE_CHOICES => {
                let raw = self.body(resp).await?;
                let body: SiblingsBody =
                    serde_json::from_slice(&raw).map_err(|source| ClientError::Decode {
                        what: "GET's siblings",
                        source,
                    })?;
                Ok(ReadResult::Siblings {
                    siblings: decode_siblings(body.siblings)?,
                    token,
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                })
            }
            StatusCode::NOT_FOUND => {
                // The body is the JSON error; only the token matters.
                self.body(resp).await?;
                Ok(ReadResult::NotFound { token })
            }
            _ => Err(api_error(resp).await),
        }
    }

    /// Whether a key has a live value, and its token, without its body.
    pub async fn head(&self, key: &str) -> Result<HeadResult, ClientError> {
        let query = self.quorum_query("r");
        let resp = self
            .send(Idempotent::Yes, |http, base| {
                http.head(format!("{}{query}", Self::key_url_on(base, key)))
            })
            .await?;
        let token = header(&resp, TOKEN_HEADER);
        match resp.status() {
            StatusCode::OK => Ok(HeadResult {
                siblings: header(&resp, "x-siblings").parse().unwrap_or(1),
                token,
            }),
            StatusCode::NOT_FOUND => Ok(HeadResult { siblings: 0, token }),
            // A HEAD answer has no body: the status is all there is.
            status => Err(ClientError::Unexpected {
                status: status.as_u16(),
                body: String::new(),
            }),
        }
    }

    /// Writes a value over what `token` saw (over whatever the coordinator holds without
    /// one); returns the new token. Never re-sent once it reached a node.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: Option<&str>,
        token: Option<&str>,
    ) -> Result<String, ClientError> {
        let query = self.quorum_query("w");
        let resp = self
            .send(Idempotent::No, |http, base| {
                let mut req = http
                    .put(format!("{}{query}", Self::key_url_on(base, key)))
                    .body(value.clone());
                if let Some(ct) = content_type {
                    req = req.header("content-type", ct);
                }
                if let Some(t) = token {
                    req = req.header(TOKEN_HEADER, t);
                }
                req
            })
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(header(&resp, TOKEN_HEADER)),
            _ => Err(api_error(resp).await),
        }
    }

    /// Deletes a key (a tombstone over what `token` saw); `found` is false on a 404.
    pub async fn delete(&self, key: &str, token: Option<&str>) -> Result<Deleted, ClientError> {
        let query = self.quorum_query("w");
        let resp = self
            .send(Idempotent::No, |http, base| {
                let mut req = http.delete(format!("{}{query}", Self::key_url_on(base, key)));
                if let Some(t) = token {
                    req = req.header(TOKEN_HEADER, t);
                }
                req
            })
            .await?;
        let token = header(&resp, TOKEN_HEADER);
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(Deleted { found: true, token }),
            StatusCode::NOT_FOUND => {
                self.body(resp).await?;
                Ok(Deleted {
                    found: false,
                    token,
                })
            }
            _ => Err(api_error(resp).await),
        }
    }

    /// Many ops in one request, one result each, in order (not atomic). Retried like a
    /// read only when every op is a `get`.
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, ClientError> {
        let idempotent = if ops.iter().all(BatchOp::is_read) {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        let body =
            serde_json::to_vec(&BatchRequest { ops }).map_err(|source| ClientError::Decode {
                what: "the batch request",
                source,
            })?;
        let body = Bytes::from(body);
        // The node takes one `r` and one `w` for the whole batch.
        let mut query = self.quorum_query("r");
        let w = self.quorum_query("w");
        if let Some(w) = w.strip_prefix('?') {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(w);
        }
        let resp = self
            .send(idempotent, |http, base| {
                http.post(format!("{base}/batch{query}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(resp).await);
        }
        let parsed: BatchBodyJson = self.json(resp, "the batch results").await?;
        parsed.results.into_iter().map(|r| r.decode()).collect()
    }

    /// Whether `key` has a live value, reading past the body without keeping it: the read
    /// of a load generator, which must not measure its own parsing.
    pub async fn exists(&self, key: &str) -> Result<bool, ClientError> {
        let query = self.quorum_query("r");
        let mut resp = self
            .send(Idempotent::Yes, |http, base| {
                http.get(format!("{}{query}", Self::key_url_on(base, key)))
            })
            .await?;
        let found = match resp.status() {
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => true,
            StatusCode::NOT_FOUND => false,
            _ => return Err(api_error(resp).await),
        };
        // Drained so the connection goes back to the pool.
        while resp.chunk().await?.is_some() {}
        Ok(found)
    }

    /// A write that does not keep the new token (the load generator's).
    pub async fn put_blind(&self, key: &str, value: Bytes) -> Result<(), ClientError> {
        let query = self.quorum_query("w");
        let resp = self
            .send(Idempotent::No, |http, base| {
                http.put(format!("{}{query}", Self::key_url_on(base, key)))
                    .body(value.clone())
            })
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(api_error(resp).await),
        }
    }
}
