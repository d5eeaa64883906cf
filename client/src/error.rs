//! [`ClientError`]: every way a call can fail, each keeping its cause.

/// Why a call failed. The transport's own error (`reqwest::Error`, and under it the I/O
/// error: connection refused, timed out) stays reachable through `source()`, so a caller
/// can print the whole chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Refused when the client is built, never at the first call.
    #[error("bad node URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no node URL given")]
    NoNodes,
    /// The request did not get an answer: connect, TLS, timeout, a connection cut.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    /// The node answered with its JSON error (`{"error": code, "message": text}`).
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The node answered with a status this call does not expect, and no JSON error.
    #[error("unexpected answer: HTTP {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("the answer ({what}) is not the JSON this client expects")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("a value the node sent as base64 does not decode")]
    Base64(#[source] base64::DecodeError),
    /// The body is over [`crate::ClientOptions::max_response_bytes`]: cut, not truncated.
    #[error("the answer's body is over the limit of {limit} bytes (max_response_bytes)")]
    TooLarge { limit: usize },
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

    /// No node could serve the call: none could be reached, none answered in time, or
    /// the one that answered said 503 (too few replicas, rejoining, removed).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Transport(e) => e.is_connect() || e.is_timeout(),
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                *status == 503
            }
            _ => false,
        }
    }

    /// Whether the request never reached a node: trying the next one cannot make a write
    /// happen twice.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport(e) if e.is_connect())
    }

    /// The HTTP status the node answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }
}
