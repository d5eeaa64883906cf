//! How a [`crate::Client`] talks to its nodes ([`ClientOptions`], fixed when it is built),
//! and what one call may change ([`CallOptions`]: `r`, `w`, timeout).

use std::time::Duration;

use crate::ClientError;

/// A bearer token for the API. Its `Debug` does not show it, so options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(pub String);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// Settings of a [`crate::Client`], shared by every call it makes.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The whole request, connect to last body byte; a call may set its own
    /// ([`CallOptions::timeout`]).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept for reuse, per node: at least the number of
    /// requests the caller has in flight, or every burst past it dials anew.
    pub max_idle_connections: usize,
    /// Sent as `?r=` on reads and `?w=` on writes (`2`, `one`, `quorum`, `all`); the
    /// node's defaults when `None`. A call may override them.
    pub r: Option<String>,
    pub w: Option<String>,
    /// Sent as `Authorization: Bearer …` on every request (a node started with
    /// `--auth-token-file`).
    pub auth_token: Option<AuthToken>,
    /// A PEM file of CA certificates: an `https://` node is verified against these alone,
    /// instead of the built-in public roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Extra attempts of an idempotent call (GET, HEAD, list, a batch of gets) once every
    /// node was tried once. Writes are never re-sent (see [`crate::Client`]).
    pub retries: u32,
    /// The pause before the first extra attempt; it doubles each time, up to
    /// [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// The largest body read from an answer; past it the call fails with
    /// [`ClientError::TooLarge`] rather than holding an unbounded buffer.
    pub max_response_bytes: usize,
}

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
            retries: 2,
            backoff: Duration::from_millis(50),
            // Over the node's largest value (`--max-value-bytes`, 16 MiB at most by
            // default) with its JSON and base64 overhead, for siblings.
            max_response_bytes: 256 * 1024 * 1024,
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
            .pool_idle_timeout(Duration::from_secs(30))
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

    /// The pause before attempt `extra` (1 for the first extra attempt): doubling from
    /// `backoff`, capped at [`MAX_BACKOFF`].
    pub fn backoff_before(&self, extra: u32) -> Duration {
        let factor = 1u32
            .checked_shl(extra.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// What one call may set on top of its client's [`ClientOptions`]; see
/// [`crate::Client::with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub r: Option<String>,
    pub w: Option<String>,
    pub timeout: Option<Duration>,
}

impl CallOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replicas a read waits for: a number, `one`, `quorum` or `all`.
    pub fn r(mut self, r: impl Into<String>) -> Self {
        self.r = Some(r.into());
        self
    }

    /// Replicas a write waits for: a number, `one`, `quorum` or `all`.
    pub fn w(mut self, w: impl Into<String>) -> Self {
        self.w = Some(w.into());
        self
    }

    /// This call's whole-request timeout, on each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let o = ClientOptions {
            backoff: Duration::from_millis(50),
            ..ClientOptions::default()
        };
        assert_eq!(o.backoff_before(1), Duration::from_millis(50));
        assert_eq!(o.backoff_before(2), Duration::from_millis(100));
        assert_eq!(o.backoff_before(3), Duration::from_millis(200));
        assert_eq!(o.backoff_before(40), MAX_BACKOFF);
        assert_eq!(o.backoff_before(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_token_with_a_newline_is_refused_when_built() {
        let o = ClientOptions {
            auth_token: Some(AuthToken("a\nb".into())),
            ..ClientOptions::default()
        };
        assert!(matches!(o.http_client(), Err(ClientError::BadAuthToken)));
    }
}
