//! The RPC connection handshake (`ringkv::rpc::handshake`), server side: the input is what
//! a dialing peer sends.
//!
//! Mode (first byte, low two bits):
//! - 0: the rest is sent as is (garbage, truncations, forged hellos and proofs);
//! - 1: an honest client: a hello with the nonce `rest[..32]` (zero-padded), then the proof
//!   made with the secret over the nonce the server sent; it must be accepted;
//! - 2: a forger: the honest hello, then the honest proof spoiled by `rest` (bits flipped,
//!   cut short, made with another secret, cluster or role); it must be refused;
//! - 3: a reflection: the server's own hello and the proof it sends on it, sent back.
//!
//! The proof is computed here from the layout `handshake.rs` documents, with this crate's
//! own HMAC, so the target also checks that the node computes what the format says.
//!
//! No hang by construction: the peer's bytes go into an in-memory duplex whose buffer holds
//! all of them and the server's replies, and the peer's write half is shut down after them,
//! so the server sees EOF rather than waiting; the whole exchange runs under the
//! handshake's own timeout and an outer one, on one current-thread runtime built once. A
//! timeout is a failure (the server waited for bytes that had all been sent).

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ringkv::config::ClusterSecret;
use ringkv::rpc::{Authenticator, HandshakeError};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const MAGIC: &[u8; 4] = b"RKVA";
const VERSION: u8 = ringkv::rpc::handshake::HANDSHAKE_VERSION;
const NONCE: usize = 32;
const HELLO: usize = 4 + 1 + NONCE;
const PROOF: usize = 32;
const DOMAIN: &[u8] = b"ringkv rpc handshake v1";
const SECRET: &[u8] = b"fuzz-cluster-secret-0123456789";
const CLUSTER: &str = "fuzz";
/// Inputs past this are cut: the server reads `HELLO + PROOF` bytes and no more.
const MAX_INPUT: usize = 1024;
/// The handshake's own bound; nothing here should ever reach it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const OUTER_TIMEOUT: Duration = Duration::from_secs(2);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fn server() -> Authenticator {
    // A fixed seed: a crashing input replays with the same server nonce.
    Authenticator::new(
        ClusterSecret::new(SECRET).expect("a long enough secret"),
        CLUSTER.into(),
        HANDSHAKE_TIMEOUT,
        Some(7),
    )
}

/// The proof `role` sends, per the layout in `handshake.rs`.
fn proof(secret: &[u8], cluster: &str, role: &[u8], client: &[u8], server: &[u8]) -> [u8; PROOF] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(DOMAIN);
    mac.update(role);
    mac.update(&(cluster.len() as u64).to_be_bytes());
    mac.update(cluster.as_bytes());
    mac.update(client);
    mac.update(server);
    mac.finalize().into_bytes().into()
}

fn hello(nonce: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HELLO);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(nonce);
    h
}

fn nonce_from(rest: &[u8]) -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    let take = rest.len().min(NONCE);
    n[..take].copy_from_slice(&rest[..take]);
    n
}

/// What the peer does: given the server's hello (read first), the bytes it sends.
type Peer = Box<dyn FnOnce(&[u8; HELLO]) -> Vec<u8>>;

/// Runs the server's handshake against `peer`; returns the server's result and the
/// server's hello.
fn exchange(peer: Peer) -> (Result<(), HandshakeError>, [u8; HELLO]) {
    let auth = server();
    runtime().block_on(async move {
        // Room for everything either side writes: neither write can wait for a reader.
        let (mut ours, mut theirs): (DuplexStream, DuplexStream) =
            tokio::io::duplex(MAX_INPUT + 2 * (HELLO + PROOF));
        let dialer = async move {
            let mut server_hello = [0u8; HELLO];
            // The server writes its hello before it reads anything.
            ours.read_exact(&mut server_hello)
                .await
                .expect("the server sends its hello first");
            let bytes = peer(&server_hello);
            ours.write_all(&bytes).await.expect("the buffer holds it");
            // EOF after the peer's bytes: a short transcript ends the server's read.
            ours.shutdown()
                .await
                .expect("shutdown of an in-memory stream");
            (server_hello, ours)
        };
        let both = async { tokio::join!(auth.server(&mut theirs), dialer) };
        let (result, (server_hello, _ours)) = tokio::time::timeout(OUTER_TIMEOUT, both)
            .await
            .expect("the handshake hung past its own timeout");
        (result, server_hello)
    })
}

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_INPUT)];
    match mode & 3 {
        0 => garbage(rest),
        1 => honest(rest),
        2 => forged(rest),
        _ => reflected(),
    }
}

/// Raw bytes: the result is exactly the one the bytes call for.
fn garbage(rest: &[u8]) {
    let sent = rest.to_vec();
    let (result, server_hello) = exchange(Box::new(move |_| sent));
    let server_nonce = &server_hello[5..];
    let expected_ok = rest.len() >= HELLO + PROOF
        && rest[..4] == MAGIC[..]
        && rest[4] == VERSION
        && rest[HELLO..HELLO + PROOF]
            == proof(SECRET, CLUSTER, b"client", &rest[5..HELLO], server_nonce);
    match (&result, rest.len()) {
        (Ok(()), _) => assert!(
            expected_ok,
            "a transcript without the secret's proof was accepted"
        ),
        (Err(HandshakeError::Io(e)), n) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            // Short of a hello, or a good hello short of a proof.
            let good_hello = n >= HELLO && rest[..4] == MAGIC[..] && rest[4] == VERSION;
            assert!(
                n < HELLO || (good_hello && n < HELLO + PROOF),
                "EOF on {n} bytes"
            );
        }
        (Err(HandshakeError::BadHello), n) => assert!(n >= HELLO && rest[..4] != MAGIC[..]),
        (Err(HandshakeError::WrongVersion(v)), n) => {
            assert!(n >= HELLO && rest[..4] == MAGIC[..] && rest[4] == *v && *v != VERSION)
        }
        (Err(HandshakeError::BadProof), n) => {
            assert!(
                n >= HELLO + PROOF && !expected_ok,
                "a good proof was refused"
            )
        }
        (Err(e), _) => panic!("unexpected handshake error {e}"),
    }
}

/// A peer that holds the secret is accepted, whatever its nonce and whatever it sends after.
fn honest(rest: &[u8]) {
    let nonce = nonce_from(rest);
    let trailing = rest.get(NONCE..).unwrap_or(&[]).to_vec();
    let (result, _) = exchange(Box::new(move |server_hello| {
        let mut out = hello(&nonce);
        out.extend_from_slice(&proof(
            SECRET,
            CLUSTER,
            b"client",
            &nonce,
            &server_hello[5..],
        ));
        // Frames after the handshake are not the handshake's to read.
        out.extend_from_slice(&trailing);
        out
    }));
    if let Err(e) = result {
        panic!("a transcript made with the secret was refused: {e}");
    }
}

/// A proof spoiled in one of several ways is refused with `BadProof`, or with EOF when it
/// was cut short; never accepted.
fn forged(rest: &[u8]) {
    let Some((&how, rest)) = rest.split_first() else {
        return;
    };
    let nonce = nonce_from(rest);
    let tweak = rest.get(NONCE..).unwrap_or(&[]).to_vec();
    let how = how % 5;
    let (result, _) = exchange(Box::new(move |server_hello| {
        let server_nonce = &server_hello[5..];
        let mut p = match how {
            // Another secret (the tweak, padded to a valid length, and never ours).
            0 => {
                let mut other = tweak.clone();
                other.extend_from_slice(b"-not-the-secret");
                proof(&other, CLUSTER, b"client", &nonce, server_nonce)
            }
            // Another cluster id.
            1 => {
                let other = format!("{CLUSTER}-{}", String::from_utf8_lossy(&tweak));
                proof(SECRET, &other, b"client", &nonce, server_nonce)
            }
            // The server's role.
            2 => proof(SECRET, CLUSTER, b"server", &nonce, server_nonce),
            // Nonces swapped.
            3 => proof(SECRET, CLUSTER, b"client", server_nonce, &nonce),
            // The honest proof, bits flipped (at least one).
            _ => {
                let mut p = proof(SECRET, CLUSTER, b"client", &nonce, server_nonce);
                let at = tweak.first().copied().unwrap_or(0) as usize % PROOF;
                let bits = tweak.get(1).copied().unwrap_or(1).max(1);
                p[at] ^= bits;
                p
            }
        }
        .to_vec();
        // Cut short, when the tweak says so.
        if tweak.get(2).is_some_and(|b| b & 1 == 1) {
            p.truncate(tweak.get(3).copied().unwrap_or(0) as usize % PROOF);
        }
        let mut out = hello(&nonce);
        out.extend_from_slice(&p);
        out
    }));
    match result {
        Ok(()) => panic!("a forged proof (way {how}) was accepted"),
        Err(HandshakeError::BadProof) => {}
        Err(HandshakeError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("a forged proof (way {how}) got {e}, not BadProof"),
    }
}

/// A reflecting peer: the server's own hello back, then the proof the server sends on
/// it (the role binding must refuse it as a client's).
fn reflected() {
    let (result, _) = exchange(Box::new(|server_hello| {
        let nonce = &server_hello[5..];
        let mut out = server_hello.to_vec();
        out.extend_from_slice(&proof(SECRET, CLUSTER, b"server", nonce, nonce));
        out
    }));
    match result {
        Err(HandshakeError::BadProof) => {}
        other => panic!("a reflected transcript got {other:?}, not BadProof"),
    }
}
