//! The RPC connection handshake: before any frame is read, each end proves it holds the
//! cluster secret, by a mutual HMAC-SHA256 challenge-response over fresh nonces.
//!
//! Both ends send a hello at once: `[magic "RKVA"][u8 HANDSHAKE_VERSION][32-byte nonce]`.
//! Having read the other's hello, each sends its proof: HMAC-SHA256, keyed with the
//! secret, over a domain label, its own role (client or server), the cluster id and both
//! nonces (the client's first). Each then checks the other's proof for the *other* role,
//! in constant time. A proof is bound to this connection's two nonces, so it cannot be
//! replayed on another connection, and to its role, so a server's proof reflected back to
//! it does not pass as a client's.
//!
//! Every message has a fixed size and is read with `read_exact` into a stack buffer, so
//! nothing a peer sends before it is authenticated reaches the frame decoder or an
//! allocation. The whole exchange runs under a timeout.
//!
//! What it does not do: it authenticates the connection's start, not each frame (an
//! on-path attacker could hijack the stream after it), and encrypts nothing; protecting
//! the frames themselves is a transport's job (TLS), run beneath this handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ClusterSecret;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: [u8; 4] = *b"RKVA";
/// Bumped when the handshake's messages or the proof's input change.
pub const HANDSHAKE_VERSION: u8 = 1;
const NONCE_BYTES: usize = 32;
const HELLO_BYTES: usize = MAGIC.len() + 1 + NONCE_BYTES;
const PROOF_BYTES: usize = 32;
/// Separates these proofs from any other use of the secret (the gossip tags).
const DOMAIN: &[u8] = b"ringkv rpc handshake v1";
/// At most one warning about refused peers per this interval; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("the peer did not finish the handshake within {0:?}")]
    Timeout(Duration),
    #[error("the peer's hello is not a ringkv handshake (open mode, or not a ringkv node)")]
    BadHello,
    #[error("the peer speaks handshake version {0}, this node speaks {HANDSHAKE_VERSION}")]
    WrongVersion(u8),
    #[error("the peer's proof is wrong: it does not hold this cluster's secret")]
    BadProof,
    #[error("i/o during the handshake: {0}")]
    Io(#[from] io::Error),
}

/// Proves and checks the cluster secret on new RPC connections; one per node, shared by
/// its client and server.
pub struct Authenticator {
    secret: ClusterSecret,
    cluster_id: String,
    timeout: Duration,
    /// Nonces come from the node's seeded RNG, so that a simulation run replays. A std
    /// mutex: held only to draw 32 bytes.
    rng: Mutex<StdRng>,
    /// For the rate-limited warning: when it last warned (ms since `epoch`), and how many
    /// refusals it has not reported yet.
    epoch: tokio::time::Instant,
    last_warn_ms: AtomicU64,
    unreported: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("cluster_id", &self.cluster_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `seed`: the node's `rng_seed` (`None` draws nonces from the OS).
    pub fn new(
        secret: ClusterSecret,
        cluster_id: String,
        timeout: Duration,
        seed: Option<u64>,
    ) -> Self {
        let rng = match seed {
            // A different stream from the one the node id is drawn from.
            Some(seed) => StdRng::seed_from_u64(seed ^ 0x6861_6e64_7368_616b),
            None => StdRng::from_entropy(),
        };
        Authenticator {
            secret,
            cluster_id,
            timeout,
            rng: Mutex::new(rng),
            epoch: tokio::time::Instant::now(),
            last_warn_ms: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// Runs the handshake on a freshly dialed connection.
    pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<(), HandshakeError> {
        self.run(stream, Role::Client).await
    }

    /// Runs the handshake on a freshly accepted connection.
    pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<(), HandshakeError> {
        self.run(stream, Role::Server).await
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        role: Role,
    ) -> Result<(), HandshakeError> {
        tokio::time::timeout(self.timeout, self.exchange(stream, role))
            .await
            .map_err(|_| HandshakeError::Timeout(self.timeout))?
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        role: Role,
    ) -> Result<(), HandshakeError> {
        let mine = self.nonce();
        let mut hello = [0u8; HELLO_BYTES];
        hello[..MAGIC.len()].copy_from_slice(&MAGIC);
        hello[MAGIC.len()] = HANDSHAKE_VERSION;
        hello[MAGIC.len() + 1..].copy_from_slice(&mine);
        stream.write_all(&hello).await?;
        stream.flush().await?;

        let mut theirs_hello = [0u8; HELLO_BYTES];
        stream.read_exact(&mut theirs_hello).await?;
        let theirs = parse_hello(&theirs_hello)?;
        let (client, server) = match role {
            Role::Client => (&mine, &theirs),
            Role::Server => (&theirs, &mine),
        };

        let proof = self.mac(role, client, server).finalize().into_bytes();
        stream.write_all(&proof).await?;
        stream.flush().await?;

        let mut their_proof = [0u8; PROOF_BYTES];
        stream.read_exact(&mut their_proof).await?;
        // `verify_slice` compares in constant time.
        self.mac(role.other(), client, server)
            .verify_slice(&their_proof)
            .map_err(|_| HandshakeError::BadProof)
    }

    fn nonce(&self) -> [u8; NONCE_BYTES] {
        let mut nonce = [0u8; NONCE_BYTES];
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .fill_bytes(&mut nonce);
        nonce
    }

    fn mac(
        &self,
        role: Role,
        client: &[u8; NONCE_BYTES],
        server: &[u8; NONCE_BYTES],
    ) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.secret.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(DOMAIN);
        mac.update(role.label());
        // Length-prefixed, so that no two (id, nonce) splits give the same input.
        mac.update(&(self.cluster_id.len() as u64).to_be_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(client);
        mac.update(server);
        mac
    }

    /// Logs a refused peer at warn, at most once per [`WARN_EVERY`], with how many were
    /// refused since the last warning: a flood of bad peers must not flood the log.
    pub fn warn_refused(&self, peer: SocketAddr, role: Role, error: &HandshakeError) {
        let unreported = self.unreported.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unreported.fetch_sub(unreported, Ordering::Relaxed);
            let what = match role {
                Role::Server => "refused an RPC connection",
                Role::Client => "an RPC peer failed the handshake",
            };
            tracing::warn!(peer = %peer, error = %error, refused = unreported, "{what}");
        } else {
            tracing::debug!(peer = %peer, error = %error, "RPC handshake failed");
        }
    }
}

fn parse_hello(hello: &[u8; HELLO_BYTES]) -> Result<[u8; NONCE_BYTES], HandshakeError> {
    let (magic, rest) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(HandshakeError::BadHello);
    }
    let (&version, nonce) = rest.split_first().ok_or(HandshakeError::BadHello)?;
    if version != HANDSHAKE_VERSION {
        return Err(HandshakeError::WrongVersion(version));
    }
    <[u8; NONCE_BYTES]>::try_from(nonce).map_err(|_| HandshakeError::BadHello)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &[u8], cluster: &str, seed: u64) -> Authenticator {
        Authenticator::new(
            ClusterSecret::new(secret).expect("a long enough secret"),
            cluster.into(),
            Duration::from_secs(2),
            Some(seed),
        )
    }

    async fn pair(
        client: &Authenticator,
        server: &Authenticator,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::join!(client.client(&mut a), server.server(&mut b))
    }

    #[tokio::test]
    async fn the_same_secret_passes_both_ways() {
        let (c, s) = pair(
            &auth(b"0123456789abcdef", "c", 1),
            &auth(b"0123456789abcdef", "c", 2),
        )
        .await;
        c.expect("client side");
        s.expect("server side");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_cluster_fails_on_both_sides() {
        for (secret, cluster) in [(&b"0123456789abcdeX"[..], "c"), (b"0123456789abcdef", "d")] {
            let (c, s) = pair(
                &auth(secret, cluster, 1),
                &auth(b"0123456789abcdef", "c", 2),
            )
            .await;
            assert!(matches!(c, Err(HandshakeError::BadProof)), "{c:?}");
            assert!(matches!(s, Err(HandshakeError::BadProof)), "{s:?}");
        }
    }

    #[tokio::test]
    async fn a_reflected_proof_is_refused() {
        // A "client" that answers the server's hello with the server's own nonce and then
        // echoes back whatever proof it receives.
        let server = auth(b"0123456789abcdef", "c", 2);
        let (mut a, mut b) = tokio::io::duplex(1024);
        let attacker = async move {
            let mut hello = [0u8; HELLO_BYTES];
            a.read_exact(&mut hello).await?;
            a.write_all(&hello).await?;
            let mut proof = [0u8; PROOF_BYTES];
            a.read_exact(&mut proof).await?;
            a.write_all(&proof).await?;
            Ok::<_, io::Error>(a)
        };
        let (s, _a) = tokio::join!(server.server(&mut b), attacker);
        assert!(matches!(s, Err(HandshakeError::BadProof)), "{s:?}");
    }

    #[tokio::test]
    async fn garbage_silence_and_old_versions_are_refused() {
        let server = auth(b"0123456789abcdef", "c", 2);
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0u8; HELLO_BYTES]).await.expect("write");
        assert!(matches!(
            server.server(&mut b).await,
            Err(HandshakeError::BadHello)
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut hello = [0u8; HELLO_BYTES];
        hello[..4].copy_from_slice(&MAGIC);
        hello[4] = HANDSHAKE_VERSION + 1;
        a.write_all(&hello).await.expect("write");
        assert!(matches!(
            server.server(&mut b).await,
            Err(HandshakeError::WrongVersion(_))
        ));
        let quick = Authenticator::new(
            ClusterSecret::new(b"0123456789abcdef").expect("secret"),
            "c".into(),
            Duration::from_millis(50),
            Some(3),
        );
        let (_a, mut b) = tokio::io::duplex(1024);
        assert!(matches!(
            quick.server(&mut b).await,
            Err(HandshakeError::Timeout(_))
        ));
    }

    #[test]
    fn seeded_nonces_replay() {
        let a = auth(b"0123456789abcdef", "c", 9);
        let b = auth(b"0123456789abcdef", "c", 9);
        assert_eq!(a.nonce(), b.nonce());
        assert_ne!(a.nonce(), auth(b"0123456789abcdef", "c", 10).nonce());
    }
}
