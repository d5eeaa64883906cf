//! Garbage on the internode RPC port: each bad input closes that one connection, is
//! logged as a bad frame, and leaves the node serving HTTP and replicating to its peer.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `rpc::message::PROTOCOL_VERSION`.
const PROTOCOL_VERSION: u8 = 3;
/// `rpc::frame::DEFAULT_MAX_FRAME_BYTES`: the largest frame (version byte + body) accepted.
const MAX_FRAME_BYTES: u32 = 96 * 1024 * 1024;
/// The server's warning for a connection it closes over a bad frame (`rpc/server.rs`).
const BAD_FRAME_WARNING: &str = "closing RPC connection: bad frame";

/// One bad input, and the fragment of the server's error that it must log (`None`: the
/// input is not a protocol error the server can see, only a truncated stream).
struct Case {
    name: String,
    bytes: Vec<u8>,
    expect_error: Option<String>,
    /// Whether the server, not the test, is expected to close the connection.
    server_closes: bool,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Random bytes, from `rng`, of which the server can tell they are bad without waiting for
/// more: a length prefix over the limit, an empty frame, or a complete frame (with a random
/// version byte and body). Random prefixes that announce a plausible frame longer than what
/// is sent are drawn again (the server would rightly wait for the rest).
fn random_case(rng: &mut XorShift) -> Case {
    const LEN: usize = 256;
    for _ in 0..10_000 {
        let bytes: Vec<u8> = (0..LEN).map(|_| rng.next_u64() as u8).collect();
        let declared = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
        let expect = if declared > MAX_FRAME_BYTES {
            format!("frame of {declared} bytes exceeds the limit")
        } else if declared == 0 {
            "empty frame".to_owned()
        } else if (declared as usize) <= LEN - 4 {
            match bytes[4] {
                PROTOCOL_VERSION => "undecodable frame body".to_owned(),
                v => format!("peer speaks protocol version {v}"),
            }
        } else {
            continue;
        };
        return Case {
            name: format!("{LEN} random bytes (declared length {declared})"),
            bytes,
            expect_error: Some(expect),
            server_closes: true,
        };
    }
    unreachable!("10,000 draws all announced a frame between 253 bytes and 96 MiB")
}

fn cases(rng: &mut XorShift) -> Vec<Case> {
    let garbage_body: Vec<u8> = std::iter::once(PROTOCOL_VERSION)
        // 0xc1 is the one byte msgpack never uses.
        .chain([0xc1, 0xc1])
        .chain((0..61).map(|_| rng.next_u64() as u8))
        .collect();
    // Valid msgpack, wrong shape: `[1, "no-such-request"]`.
    let mut wrong_shape = vec![PROTOCOL_VERSION, 0x92, 0x01, 0xaf];
    wrong_shape.extend_from_slice(b"no-such-request");
    let mut over = 0xFFFF_FFFFu32.to_be_bytes().to_vec();
    over.extend_from_slice(&[0xAB; 60]);
    vec![
        random_case(rng),
        Case {
            name: "length prefix 0xFFFFFFFF".into(),
            bytes: over,
            expect_error: Some("frame of 4294967295 bytes exceeds the limit".into()),
            server_closes: true,
        },
        Case {
            name: "well-formed length, version byte 99".into(),
            bytes: frame(&[99, 0x92, 0x01, 0xc0]),
            expect_error: Some("peer speaks protocol version 99".into()),
            server_closes: true,
        },
        Case {
            name: "well-formed frame, garbage msgpack".into(),
            bytes: frame(&garbage_body),
            expect_error: Some("undecodable frame body".into()),
            server_closes: true,
        },
        Case {
            name: "well-formed frame, msgpack of the wrong shape".into(),
            bytes: frame(&wrong_shape),
            expect_error: Some("undecodable frame body".into()),
            server_closes: true,
        },
        Case {
            name: "empty frame (length 0)".into(),
            bytes: vec![0, 0, 0, 0],
            expect_error: Some("empty frame".into()),
            server_closes: true,
        },
        Case {
            name: "truncated frame, then the client closes".into(),
            bytes: {
                let mut b = 1000u32.to_be_bytes().to_vec();
                b.extend_from_slice(&[PROTOCOL_VERSION, 0x92, 0x01]);
                b
            },
            expect_error: None,
            server_closes: false,
        },
    ]
}

/// Sends `case.bytes` on a fresh connection to `rpc`; waits (bounded) for the server to
/// close it when it should. Returns the local address (the `peer` the server logs).
async fn send_garbage(rpc: SocketAddr, case: &Case) -> SocketAddr {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(rpc))
        .await
        .unwrap_or_else(|_| panic!("{}: connect to {rpc} timed out", case.name))
        .unwrap_or_else(|e| panic!("{}: connect to {rpc}: {e}", case.name));
    let local = stream.local_addr().expect("local addr");
    // The server may close before it has read everything; a failed write is fine then.
    let _ = stream.write_all(&case.bytes).await;
    let _ = stream.flush().await;
    if !case.server_closes {
        drop(stream);
        return local;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        let mut answered = 0usize;
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(answered),
                Ok(n) => answered += n,
                // A close with unread input resets the connection.
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match closed {
        Err(_) => panic!(
            "{}: the server kept the connection open 10 s after a bad frame",
            case.name
        ),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{}: the server answered a bad frame with {n} bytes before closing",
            case.name
        ),
    }
    local
}

/// The node still serves HTTP reads and writes, and still replicates to node 2.
async fn still_serves(cluster: &Cluster, round: usize, what: &str) {
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let key = format!("after-garbage/{round}");
    let value = format!("still-alive-{round}");
    try_put(n1, &key, value.as_bytes(), None, &[("timeout_ms", "10000")])
        .await
        .unwrap_or_else(|e| panic!("after {what}: node 1 no longer takes writes: {e}"));
    let got = try_get_value(n1, &key, &[])
        .await
        .unwrap_or_else(|e| panic!("after {what}: node 1 no longer serves reads: {e}"));
    assert_eq!(got, value.as_bytes(), "after {what}");
    let (k, v) = (key.as_str(), value.as_bytes());
    wait_until(
        Duration::from_secs(10),
        &format!("after {what}: node 2's own copy of {key:?} written via node 1"),
        || async move { local_has_exactly(n2, k, &[v]).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_rpc_port_closes_that_connection_only() {
    let mut cluster = Cluster::start(2, &FAST_GOSSIP).await;
    let (mut rng, seed) = XorShift::from_test_seed();
    eprintln!("garbage seed {seed}");
    let rpc = cluster.nodes[0].rpc_addr;

    still_serves(&cluster, 0, "start").await;
    for (round, case) in cases(&mut rng).iter().enumerate() {
        let round = round + 1;
        eprintln!("case {round}: {}", case.name);
        let local = send_garbage(rpc, case).await;
        assert!(
            cluster.nodes[0].is_running(),
            "node 1 exited after {}\n{}",
            case.name,
            cluster.nodes[0].log_tail(40)
        );
        if let Some(expect) = &case.expect_error {
            // The warning names this connection (peer=<our address>) and the error.
            let node1 = &cluster.nodes[0];
            let peer = format!("peer={local}");
            let (peer, expect) = (&peer, expect.as_str());
            let line = wait_until(
                Duration::from_secs(10),
                &format!(
                    "node 1's log to warn about {} ({expect:?}, {peer})",
                    case.name
                ),
                || async move {
                    let log = node1.log_text();
                    log.lines()
                        .find(|l| {
                            l.contains(BAD_FRAME_WARNING) && l.contains(peer) && l.contains(expect)
                        })
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            let bad: Vec<&str> = log
                                .lines()
                                .filter(|l| l.contains(BAD_FRAME_WARNING))
                                .collect();
                            format!("bad-frame lines so far: {bad:#?}")
                        })
                },
            )
            .await;
            assert!(line.contains("WARN"), "not a warning: {line}");
            eprintln!("  logged: {line}");
        }
        still_serves(&cluster, round, &case.name).await;
    }

    // Node 2 sent node 1 nothing bad, and node 1's own connections were never the ones
    // closed: node 2's log has no bad frame.
    let node2_log = cluster.nodes[1].log_text();
    assert!(
        !node2_log.contains(BAD_FRAME_WARNING),
        "node 2 saw a bad frame:\n{}",
        cluster.nodes[1].log_tail(40)
    );
    assert!(cluster.nodes[0].is_running());
    // And it still shuts down cleanly: no connection task is stuck on the garbage.
    let status = cluster.nodes[0].sigterm_and_wait().await;
    assert!(
        status.success(),
        "node 1 exited with {status} on SIGTERM\n{}",
        cluster.nodes[0].log_tail(40)
    );
}
