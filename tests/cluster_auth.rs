//! Cluster authentication on real nodes (`--cluster-secret-file`), over loopback sockets.
//!
//! - An RPC client without the secret is refused before any frame is decoded: a valid
//!   `Forward` or `Read` gets no answer, the key is not written, and `/metrics` counts it.
//! - A node with another secret never becomes a member of a cluster, whose nodes count
//!   its gossip as badly signed.
//! - Forged gossip (unsigned, signed with another secret, signed but stale, too short)
//!   adds no member and moves no address, and each kind is counted. The same forger signed
//!   with the right secret and clock *does* add its member: the check is what stops it.
//! - A cluster with the secret forms and replicates.
//! - A silent RPC connection is closed by the handshake timeout, a partial frame from an
//!   authenticated peer by the frame timeout.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chitchat::transport::{Socket, Transport, UdpTransport};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use common::cluster::*;
use common::metrics::metric;
use common::*;
use reqwest::StatusCode;
use ringkv::config::ClusterSecret;
use ringkv::net::{Clock, GossipAuth, SignedUdpSocket, SystemClock};
use ringkv::rpc::frame::{decode, encode, DEFAULT_MAX_FRAME_BYTES};
use ringkv::rpc::{Authenticator, Envelope, ForwardedWrite, Request, Response, RpcStats};
use ringkv::version::Payload;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SECRET: &[u8] = b"correct horse battery staple, cluster one";
const OTHER_SECRET: &[u8] = b"a different secret for another cluster";
const CLUSTER_ID: &str = "ringkv";
const FAKE_ID: &str = "00000000000fa4e1";

/// A secret file that lives as long as the test.
struct SecretFile {
    _dir: tempfile::TempDir,
    path: String,
}

fn secret_file(secret: &[u8]) -> SecretFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret");
    // A trailing newline, as `echo` writes: it must be trimmed.
    std::fs::write(&path, [secret, b"\n"].concat()).expect("write the secret");
    SecretFile {
        path: path.display().to_string(),
        _dir: dir,
    }
}

fn args<'a>(secret: &'a SecretFile, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--cluster-secret-file", secret.path.as_str()];
    args.extend_from_slice(&FAST_GOSSIP);
    args.extend_from_slice(extra);
    args
}

fn frame(request: Request) -> Vec<u8> {
    let payload =
        encode(&Envelope::new(1, request), DEFAULT_MAX_FRAME_BYTES).expect("encode a request");
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn forward(key: &str) -> Request {
    Request::Forward(ForwardedWrite {
        key: key.into(),
        seen: None,
        payload: Payload::Value {
            data: Bytes::from_static(b"forged"),
            content_type: "text/plain".into(),
        },
        w: None,
        timeout_ms: 2_000,
    })
}

/// Reads until the peer closes (bounded); returns what it sent and how long it took.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the node kept the connection open past {limit:?}"
    );
    (got, started.elapsed())
}

#[tokio::test]
async fn rpc_without_the_secret_is_refused_before_any_frame_is_read() {
    let secret = secret_file(SECRET);
    let node = TestNode::start_with(&args(&secret, &["--rpc-handshake-timeout", "2s"])).await;

    for (what, request) in [
        ("forward", forward("forged-key")),
        (
            "read",
            Request::Read {
                key: "forged-key".into(),
            },
        ),
    ] {
        let mut raw = TcpStream::connect(node.rpc_addr).await.expect("connect");
        // The server may close while the frame is still going out: that is the point.
        let _ = raw.write_all(&frame(request)).await;
        let (got, _) = read_to_close(&mut raw, Duration::from_secs(10)).await;
        // All the node ever sends is its hello (magic, version, 32-byte nonce): no reply.
        assert_eq!(got.len(), 37, "{what}: the node sent {got:?}");
        assert_eq!(&got[..4], b"RKVA", "{what}: {got:?}");
    }
    assert!(
        local(&node, "forged-key").await.is_none(),
        "the forged write was not stored"
    );
    let resp = node
        .client
        .get(node.kv_url("forged-key"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(10), "both refusals counted", || async {
        let n = metric(&node, "ringkv_rpc_auth_refused_total").await;
        (n == 2).then_some(()).ok_or(format!("refused {n}"))
    })
    .await;
    assert_eq!(metric(&node, "ringkv_rpc_requests_served_total").await, 0);

    // A silent connection loses its slot at the handshake timeout.
    let mut silent = TcpStream::connect(node.rpc_addr).await.expect("connect");
    let (_, took) = read_to_close(&mut silent, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert_eq!(metric(&node, "ringkv_rpc_auth_refused_total").await, 3);
}

/// Runs the client side of the handshake on a raw connection, as a peer with `secret`.
async fn authenticated(node: &TestNode, secret: &[u8]) -> TcpStream {
    let auth = Authenticator::new(
        ClusterSecret::new(secret).expect("secret"),
        CLUSTER_ID.into(),
        Duration::from_secs(5),
        None,
    );
    let mut raw = TcpStream::connect(node.rpc_addr).await.expect("connect");
    auth.client(&mut raw).await.expect("the handshake passes");
    raw
}

#[tokio::test]
async fn a_peer_with_the_secret_is_served_and_a_partial_frame_is_closed_in_time() {
    let secret = secret_file(SECRET);
    let node = TestNode::start_with(&args(&secret, &["--rpc-frame-timeout", "1s"])).await;

    // The positive control: with the secret, a ping is answered.
    let mut peer = authenticated(&node, SECRET).await;
    peer.write_all(&frame(Request::Ping)).await.expect("send");
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut len))
        .await
        .expect("a reply in time")
        .expect("read");
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut payload).await.expect("read");
    let reply: Envelope<Response> = decode(&payload).expect("decode");
    assert!(matches!(reply.body, Response::Pong { .. }), "{reply:?}");

    // Then a frame that announces 1 MiB and stops after 10 bytes.
    let mut partial = (1024u32 * 1024).to_be_bytes().to_vec();
    partial.extend_from_slice(&[3; 10]);
    peer.write_all(&partial).await.expect("send");
    let (_, took) = read_to_close(&mut peer, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(metric(&node, "ringkv_rpc_frame_timeouts_total").await, 1);

    // With the wrong secret the handshake fails on the client's side too.
    let wrong = Authenticator::new(
        ClusterSecret::new(OTHER_SECRET).expect("secret"),
        CLUSTER_ID.into(),
        Duration::from_secs(5),
        None,
    );
    let mut raw = TcpStream::connect(node.rpc_addr).await.expect("connect");
    assert!(wrong.client(&mut raw).await.is_err());
    wait_until(Duration::from_secs(10), "the refusal counted", || async {
        let n = metric(&node, "ringkv_rpc_auth_refused_total").await;
        (n == 1).then_some(()).ok_or(format!("refused {n}"))
    })
    .await;
}

#[tokio::test]
async fn a_cluster_with_the_secret_forms_and_replicates() {
    let secret = secret_file(SECRET);
    let cluster = Cluster::start(3, &args(&secret, &[])).await;
    let n1 = &cluster.nodes[0];
    let resp = n1
        .client
        .put(n1.kv_url("shared"))
        .body("across the cluster")
        .send()
        .await
        .expect("PUT");
    assert!(resp.status().is_success(), "{}", resp.status());
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_until(
            Duration::from_secs(20),
            &format!("node {} holds the value", i + 1),
            || async { local_has_exactly(node, "shared", &[b"across the cluster"]).await },
        )
        .await;
        assert_eq!(metric(node, "ringkv_rpc_auth_refused_total").await, 0);
        assert_eq!(metric(node, "ringkv_gossip_dropped_bad_tag_total").await, 0);
        assert!(metric(node, "ringkv_rpc_requests_served_total").await > 0);
    }
}

/// A `ringkv serve` whose readiness is not awaited: a node that cannot join never is.
struct Outsider {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    gossip: SocketAddr,
}

async fn start_outsider(secret: &SecretFile, seed: SocketAddr) -> Outsider {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("serve")
        .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
        .args(["--gossip-addr", "127.0.0.1:0", "--seed", &seed.to_string()])
        .args(["--cluster-secret-file", &secret.path])
        .args(FAST_GOSSIP)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("RINGKV_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ringkv serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a ready line in time")
        .expect("read stdout")
        .expect("a ready line");
    let gossip = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gossip="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no gossip address in {line:?}"));
    Outsider {
        child,
        _dir: dir,
        gossip,
    }
}

async fn member_ids(node: &TestNode) -> Vec<String> {
    let c = cluster_json(node).await;
    c["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_node_with_another_secret_never_joins() {
    let secret = secret_file(SECRET);
    let other = secret_file(OTHER_SECRET);
    let cluster = Cluster::start(2, &args(&secret, &[])).await;
    let mut outsider = start_outsider(&other, cluster.nodes[0].gossip_addr).await;
    // Gossip every 100 ms: 3 s is 30 rounds of trying.
    wait_until(
        Duration::from_secs(20),
        "the outsider's gossip dropped",
        || async {
            let n = metric(&cluster.nodes[0], "ringkv_gossip_dropped_bad_tag_total").await;
            (n >= 10).then_some(()).ok_or(format!("dropped {n}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &cluster.nodes {
        let ids = member_ids(node).await;
        assert_eq!(ids.len(), 2, "only the two members: {ids:?}");
    }
    let _ = outsider.child.kill().await;
    let _ = outsider.gossip;
}

/// Hands chitchat a socket made beforehand (the forger's signed socket).
struct Prebound(Mutex<Option<Box<dyn Socket>>>);

#[async_trait]
impl Transport for Prebound {
    async fn open(&self, _: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .take()
            .ok_or_else(|| anyhow::anyhow!("opened twice"))
    }
}

/// The system clock, two minutes behind: datagrams it stamps are stale on arrival.
struct Behind;

impl Clock for Behind {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_sub(120_000)
    }
}

fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("local addr")
}

/// A chitchat node on loopback that gossips to `seed` as member `id`, announcing
/// `rpc_addr`; its datagrams are signed with `signer` (or not at all).
async fn forger(
    id: &str,
    generation: u64,
    seed: SocketAddr,
    rpc_addr: SocketAddr,
    signer: Option<(&[u8], Arc<dyn Clock>)>,
) -> ChitchatHandle {
    let gossip = free_udp();
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(id.to_owned(), generation, gossip),
        cluster_id: CLUSTER_ID.to_owned(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: gossip,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
    };
    let state = vec![
        ("http_addr".to_owned(), rpc_addr.to_string()),
        ("rpc_addr".to_owned(), rpc_addr.to_string()),
        ("state".to_owned(), "normal".to_owned()),
        ("vnodes".to_owned(), "16".to_owned()),
    ];
    let started = match signer {
        None => spawn_chitchat(config, state, &UdpTransport).await,
        Some((secret, clock)) => {
            let auth = Arc::new(GossipAuth::new(
                ClusterSecret::new(secret).expect("secret"),
                CLUSTER_ID.into(),
                clock,
                Duration::from_secs(30),
                Arc::new(RpcStats::default()),
            ));
            let socket = SignedUdpSocket::open(gossip, auth).await.expect("bind");
            let transport = Prebound(Mutex::new(Some(Box::new(socket))));
            spawn_chitchat(config, state, &transport).await
        }
    };
    started.expect("start a forger")
}

#[tokio::test]
async fn forged_gossip_changes_nothing_and_is_counted() {
    let secret = secret_file(SECRET);
    let cluster = Cluster::start(2, &args(&secret, &[])).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let seed = n1.gossip_addr;
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let system: Arc<dyn Clock> = Arc::new(SystemClock);
    let behind: Arc<dyn Clock> = Arc::new(Behind);

    let forgers = vec![
        // A fake member, unsigned.
        forger(FAKE_ID, 1, seed, elsewhere, None).await,
        // A fake member signed with another cluster's secret.
        forger(
            FAKE_ID,
            2,
            seed,
            elsewhere,
            Some((OTHER_SECRET, system.clone())),
        )
        .await,
        // The right secret, but stamped two minutes ago (a replay from the past).
        forger(FAKE_ID, 3, seed, elsewhere, Some((SECRET, behind))).await,
        // Node 2 itself, at a newer generation, moved to another RPC address: unsigned
        // and badly signed.
        forger(&n2.node_id, u64::MAX / 2, seed, elsewhere, None).await,
        forger(
            &n2.node_id,
            u64::MAX / 2 + 1,
            seed,
            elsewhere,
            Some((OTHER_SECRET, system.clone())),
        )
        .await,
    ];
    // Datagrams too short to carry a signature.
    let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for _ in 0..3 {
        raw.send_to(b"hi", seed).await.expect("send");
    }

    wait_until(
        Duration::from_secs(20),
        "every kind of forgery counted",
        || async {
            let short = metric(n1, "ringkv_gossip_dropped_short_total").await;
            let bad = metric(n1, "ringkv_gossip_dropped_bad_tag_total").await;
            let stale = metric(n1, "ringkv_gossip_dropped_stale_total").await;
            (short >= 3 && bad >= 20 && stale >= 5)
                .then_some(())
                .ok_or(format!("short {short}, bad tag {bad}, stale {stale}"))
        },
    )
    .await;
    // A few more rounds in which anything that got through would have shown.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let c = cluster_json(node).await;
        let members = c["members"].as_array().cloned().unwrap_or_default();
        assert_eq!(members.len(), 2, "node {}: {c}", i + 1);
        for m in &members {
            assert_ne!(m["id"], FAKE_ID, "node {}: {c}", i + 1);
            assert_ne!(m["rpc_addr"], elsewhere.to_string(), "node {}: {c}", i + 1);
            assert_eq!(m["live"], true, "node {}: {c}", i + 1);
        }
    }
    for f in forgers {
        f.shutdown().await.expect("stop a forger");
    }

    // The control: the same forger, signed with the right secret and clock, gets in.
    // So what kept the others out is the signature check, not the forger.
    let accepted = forger(FAKE_ID, 4, seed, elsewhere, Some((SECRET, system))).await;
    wait_until(
        Duration::from_secs(20),
        "the well-signed forger is heard",
        || async {
            let ids = member_ids(n1).await;
            ids.iter()
                .any(|id| id == FAKE_ID)
                .then_some(())
                .ok_or(format!("members {ids:?}"))
        },
    )
    .await;
    accepted.shutdown().await.expect("stop the forger");
}

#[tokio::test]
async fn a_missing_short_or_huge_secret_file_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, b"  too short \n").expect("write");
    let huge = dir.path().join("huge");
    std::fs::write(&huge, vec![b'x'; 8192]).expect("write");
    let missing = dir.path().join("missing");
    for (path, want) in [
        (&short, "at least 16 bytes"),
        (&huge, "larger than"),
        (&missing, "reading the cluster secret file"),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
                .arg("serve")
                .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
                .args(["--gossip-addr", "127.0.0.1:0"])
                .arg("--cluster-secret-file")
                .arg(path)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env_remove("RINGKV_NODE")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("serve exits in time")
        .expect("run ringkv serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path:?}: started anyway");
        assert!(stderr.contains(want), "{path:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{path:?}: printed a ready line");
    }
}
