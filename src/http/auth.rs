//! Bearer-token authentication of the HTTP API: the token files, their rotation, and the
//! middleware that lets a request through or answers 401 / 403.
//!
//! Every route but `/health`, `/ready` (probes that must work without a secret) and the
//! dashboard page `/` (which holds no data) needs
//! `Authorization: Bearer <token>`. With an admin token file, `/admin/*` needs one of its
//! tokens: a valid client token there gets 403 `forbidden` (it authenticated, it is only
//! not allowed), and an admin token is good for every other route too. Without one, the
//! client tokens allow `/admin/*`.
//!
//! Only the CLI reads the files ([`Auth::load`], [`Auth::reload`] on SIGHUP); the node is
//! handed the [`Auth`] and only checks requests against it, so the simulation never needs
//! a file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::ApiError;

/// A token file larger than this is refused: it is a short list of secrets, and a huge one
/// is a mistake (the wrong path) that should not be read into memory.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Tokens one file may hold: enough for rotation with room for several clients, while
/// every request compares against all of them.
pub const MAX_TOKENS: usize = 64;
/// A token shorter than this is too easy to guess.
pub const MIN_TOKEN_BYTES: usize = 16;
pub const MAX_TOKEN_BYTES: usize = 512;

/// Routes open to anyone: liveness and readiness probes carry no secret, and the
/// dashboard page (`/`) is constant text that holds no data: its script asks for the
/// token and sends it to the JSON routes (see `http::dashboard`).
const OPEN_ROUTES: [&str; 3] = ["/health", "/ready", "/"];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("the token file {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("the token file {path} holds no token (only blank lines and `#` comments)")]
    Empty { path: PathBuf },
    #[error("the token file {path} holds more than {MAX_TOKENS} tokens")]
    TooMany { path: PathBuf },
    #[error("the token file {path}, line {line}: {why}")]
    BadToken {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
}

/// The tokens of one file. Its `Debug` shows how many, never what they are.
struct TokenSet(Vec<Vec<u8>>);

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} token(s)", self.0.len())
    }
}

impl TokenSet {
    fn read(path: &Path) -> Result<TokenSet, AuthError> {
        let read_err = |source| AuthError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        // Read one byte past the bound rather than trust the file's length: it may grow
        // while it is read, or be a pipe.
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(AuthError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| AuthError::NotText {
            path: path.to_owned(),
        })?;
        Self::parse(&text, path)
    }

    /// One token a line, trimmed; blank lines and `#` comments are skipped.
    fn parse(text: &str, path: &Path) -> Result<TokenSet, AuthError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let bad = |why| AuthError::BadToken {
                path: path.to_owned(),
                line: i + 1,
                why,
            };
            if token.len() < MIN_TOKEN_BYTES {
                return Err(bad("a token must be at least 16 characters"));
            }
            if token.len() > MAX_TOKEN_BYTES {
                return Err(bad("a token must be at most 512 characters"));
            }
            // What a header value can carry after `Bearer `, with no space inside.
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "a token is printable ASCII without spaces (as a header carries it)",
                ));
            }
            if tokens.len() == MAX_TOKENS {
                return Err(AuthError::TooMany {
                    path: path.to_owned(),
                });
            }
            tokens.push(token.as_bytes().to_vec());
        }
        if tokens.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(TokenSet(tokens))
    }

    /// Whether `presented` is one of the tokens. Every token is compared, each in constant
    /// time, and the results are folded without branching: the time taken says neither
    /// which token matched nor how much of one did.
    fn contains(&self, presented: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for token in &self.0 {
            found |= token.as_slice().ct_eq(presented);
        }
        found.into()
    }
}

/// A token file and its tokens as last read. The set is swapped whole on reload, so a
/// request checks against the old set or the new one, never a mix.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    tokens: ArcSwap<TokenSet>,
}

impl TokenFile {
    fn load(path: &Path) -> Result<TokenFile, AuthError> {
        Ok(TokenFile {
            path: path.to_owned(),
            tokens: ArcSwap::from_pointee(TokenSet::read(path)?),
        })
    }
}

/// The client tokens of the HTTP API and, optionally, its separate admin tokens.
#[derive(Debug)]
pub struct Auth {
    client: TokenFile,
    admin: Option<TokenFile>,
}

/// What [`Auth::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, a malformed header or a wrong token: the answer is the same for each.
    Unauthenticated,
    /// A valid client token on an admin route that needs an admin token.
    Forbidden,
}

impl Auth {
    /// Reads the token files; an unreadable, empty or malformed file is an error, so that
    /// a node never starts believing it is protected when it is not.
    pub fn load(client: &Path, admin: Option<&Path>) -> Result<Auth, AuthError> {
        Ok(Auth {
            client: TokenFile::load(client)?,
            admin: admin.map(TokenFile::load).transpose()?,
        })
    }

    /// Rereads both files and swaps in their tokens together. If either cannot be read,
    /// nothing changes: the node keeps the tokens it had, and the error says why.
    pub fn reload(&self) -> Result<(), AuthError> {
        let client = TokenSet::read(&self.client.path)?;
        let admin = match &self.admin {
            Some(file) => Some(TokenSet::read(&file.path)?),
            None => None,
        };
        self.client.tokens.store(Arc::new(client));
        if let (Some(file), Some(set)) = (&self.admin, admin) {
            file.tokens.store(Arc::new(set));
        }
        Ok(())
    }

    /// How many tokens each file holds now (client, admin), for the log.
    pub fn counts(&self) -> (usize, Option<usize>) {
        (
            self.client.tokens.load().0.len(),
            self.admin.as_ref().map(|f| f.tokens.load().0.len()),
        )
    }

    /// Whether a request to `path` with this `Authorization` header may go on.
    pub fn check(&self, path: &str, authorization: Option<&HeaderValue>) -> Verdict {
        if OPEN_ROUTES.contains(&path) {
            return Verdict::Allowed;
        }
        let Some(presented) = authorization.and_then(bearer) else {
            return Verdict::Unauthenticated;
        };
        // Both sets are always checked, whatever the route, so the time taken does not
        // tell a client token from an admin one.
        let client = self.client.tokens.load().contains(presented);
        let admin = self
            .admin
            .as_ref()
            .map(|f| f.tokens.load().contains(presented));
        let is_admin_route = path == "/admin" || path.starts_with("/admin/");
        match admin {
            Some(true) => Verdict::Allowed,
            Some(false) if client && is_admin_route => Verdict::Forbidden,
            _ if client => Verdict::Allowed,
            _ => Verdict::Unauthenticated,
        }
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The middleware: `None` (no token file) lets everything through.
pub async fn require_token(
    State(auth): State<Option<Arc<Auth>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    let verdict = auth.check(req.uri().path(), req.headers().get(header::AUTHORIZATION));
    match verdict {
        Verdict::Allowed => next.run(req).await,
        Verdict::Unauthenticated => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs a valid token: send `Authorization: Bearer <token>`",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        Verdict::Forbidden => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an admin token (--admin-token-file)",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "client-token-aaaaaaaa";
    const B: &str = "client-token-bbbbbbbb";
    const ROOT: &str = "admin-token-rrrrrrrrr";

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn header(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn parses_tokens_skipping_comments_and_blanks_and_trimming() {
        let set =
            TokenSet::parse(&format!("# rotation\n\n  {A}  \n\t{B}\n"), Path::new("t")).unwrap();
        assert_eq!(set.0, vec![A.as_bytes().to_vec(), B.as_bytes().to_vec()]);
        assert!(set.contains(A.as_bytes()) && set.contains(B.as_bytes()));
        assert!(!set.contains(b"client-token-cccccccc"));
        assert!(!set.contains(&A.as_bytes()[..A.len() - 1]));
        assert!(!set.contains(b""));
    }

    #[test]
    fn refuses_empty_short_long_spaced_and_too_many() {
        let p = Path::new("t");
        assert!(matches!(
            TokenSet::parse("# only a comment\n\n", p),
            Err(AuthError::Empty { .. })
        ));
        assert!(matches!(
            TokenSet::parse("short\n", p),
            Err(AuthError::BadToken { line: 1, .. })
        ));
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            TokenSet::parse(&format!("{A}\n{long}\n"), p),
            Err(AuthError::BadToken { line: 2, .. })
        ));
        assert!(matches!(
            TokenSet::parse("has a space inside it\n", p),
            Err(AuthError::BadToken { .. })
        ));
        let many: String = (0..=MAX_TOKENS)
            .map(|i| format!("token-number-{i:08}\n"))
            .collect();
        assert!(matches!(
            TokenSet::parse(&many, p),
            Err(AuthError::TooMany { .. })
        ));
    }

    #[test]
    fn refuses_a_missing_or_oversized_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Auth::load(&dir.path().join("absent"), None),
            Err(AuthError::Read { .. })
        ));
        let big = file(&dir, "big", &"x".repeat(MAX_TOKEN_FILE_BYTES as usize + 1));
        assert!(matches!(
            Auth::load(&big, None),
            Err(AuthError::TooLarge { .. })
        ));
    }

    #[test]
    fn checks_routes_schemes_and_admin_separation() {
        let dir = tempfile::tempdir().unwrap();
        let client = file(&dir, "client", &format!("{A}\n{B}\n"));
        let open = Auth::load(&client, None).unwrap();
        assert_eq!(open.check("/health", None), Verdict::Allowed);
        assert_eq!(open.check("/ready", None), Verdict::Allowed);
        assert_eq!(open.check("/", None), Verdict::Allowed);
        assert_eq!(
            open.check("/debug/dashboard", None),
            Verdict::Unauthenticated
        );
        assert_eq!(open.check("/kv/x", None), Verdict::Unauthenticated);
        assert_eq!(open.check("/kv/x", Some(&header(A))), Verdict::Allowed);
        assert_eq!(open.check("/kv/x", Some(&header(B))), Verdict::Allowed);
        let lower = HeaderValue::from_str(&format!("bearer {A}")).unwrap();
        assert_eq!(open.check("/kv/x", Some(&lower)), Verdict::Allowed);
        let basic = HeaderValue::from_str(&format!("Basic {A}")).unwrap();
        assert_eq!(open.check("/kv/x", Some(&basic)), Verdict::Unauthenticated);
        assert_eq!(
            open.check("/kv/x", Some(&HeaderValue::from_static("Bearer"))),
            Verdict::Unauthenticated
        );
        // Without an admin file, the client tokens allow admin.
        assert_eq!(
            open.check("/admin/leave", Some(&header(A))),
            Verdict::Allowed
        );

        let admin = file(&dir, "admin", &format!("{ROOT}\n"));
        let split = Auth::load(&client, Some(&admin)).unwrap();
        assert_eq!(
            split.check("/admin/leave", Some(&header(A))),
            Verdict::Forbidden
        );
        assert_eq!(
            split.check("/admin/leave", Some(&header(ROOT))),
            Verdict::Allowed
        );
        assert_eq!(split.check("/kv/x", Some(&header(ROOT))), Verdict::Allowed);
        assert_eq!(split.check("/admin/leave", None), Verdict::Unauthenticated);
    }

    #[test]
    fn a_reload_swaps_the_set_and_a_failed_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, "client", &format!("{A}\n"));
        let auth = Auth::load(&path, None).unwrap();
        std::fs::write(&path, format!("{B}\n")).unwrap();
        auth.reload().unwrap();
        assert_eq!(
            auth.check("/kv/x", Some(&header(A))),
            Verdict::Unauthenticated
        );
        assert_eq!(auth.check("/kv/x", Some(&header(B))), Verdict::Allowed);
        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        assert!(matches!(auth.reload(), Err(AuthError::Empty { .. })));
        assert_eq!(auth.check("/kv/x", Some(&header(B))), Verdict::Allowed);
    }
}
