//! Slow and malformed clients against the real binary on loopback: dripped heads, dripped
//! bodies, idle and stalled connections are each closed within their bound while normal
//! requests keep being served; a declared body over the limit is refused before it is
//! read; the head bounds answer JSON below hyper's own (which answer with an empty body);
//! probes get through a node whose connection slots are full; `GET /kv` refuses a cursor
//! or a bound that does not decode.

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The bounds the node runs with here, short so the test is quick.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// What a closing may take beyond its bound on a busy machine.
const SLACK: Duration = Duration::from_secs(4);

async fn start() -> TestNode {
    TestNode::start_with(&[
        "--header-read-timeout",
        "2s",
        "--body-read-timeout",
        "2s",
        "--idle-timeout",
        "3s",
        "--max-connections",
        "256",
        "--max-value-bytes",
        "65536",
    ])
    .await
}

async fn connect(node: &TestNode) -> TcpStream {
    TcpStream::connect(node.addr).await.expect("connect")
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response (head, then a `Content-Length` body or up to EOF), within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Raw {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before a response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut body = buf[head_end + 4..].to_vec();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().expect("a numeric content-length"));
        loop {
            if length.is_some_and(|len| body.len() >= len) {
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Raw {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("no response in time")
}

/// Waits until the server closes `stream` (EOF or reset), reading and dropping whatever it
/// sends; panics past `within`. Returns how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let drain = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drain)
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed within {within:?}"));
    started.elapsed()
}

/// Writes `bytes` one at a time, `every` apart, until the server answers or closes the
/// connection, or they run out (then it stays silent). Returns how long that took and what
/// the server sent; ends within `within` either way.
fn drip(
    mut stream: TcpStream,
    bytes: Vec<u8>,
    every: Duration,
    within: Duration,
) -> tokio::task::JoinHandle<(Duration, Vec<u8>)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut got = Vec::new();
        let work = async {
            let mut chunk = [0u8; 4096];
            for b in bytes {
                // Stop writing once the server has said something: bytes it never reads
                // would make its close a reset, which can lose its answer.
                match stream.try_read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        got.extend_from_slice(&chunk[..n]);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                if stream.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(within, work).await;
        (started.elapsed(), got)
    })
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_within_their_bounds() {
    let node = start().await;
    const EACH: usize = 16;
    let give_up = HEADER_TIMEOUT + BODY_TIMEOUT + SLACK * 2;
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    let mut idle = Vec::new();
    for i in 0..EACH {
        // A head that never ends: a header every 300 ms.
        let mut s = connect(&node).await;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let endless: Vec<u8> = format!("X-Drip-{i}: y\r\n").repeat(100).into_bytes();
        heads.push(drip(s, endless, Duration::from_millis(300), give_up));
        // A full head, then a body of 1,000 bytes dripped a byte every 300 ms.
        let mut s = connect(&node).await;
        let head = format!("PUT /kv/drip{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        bodies.push(drip(
            s,
            vec![b'v'; 1000],
            Duration::from_millis(300),
            give_up,
        ));
        // Nothing at all.
        idle.push((Instant::now(), connect(&node).await));
    }
    // One keep-alive connection that served a request and then went quiet.
    let mut kept = connect(&node).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept, SLACK).await.status, 200);
    let kept_since = Instant::now();

    // While they are all open, normal requests are served at once.
    let started = Instant::now();
    let resp = node.put("normal", "v", None, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = node.client.get(node.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let normal = started.elapsed();
    assert!(
        normal < Duration::from_secs(2),
        "normal requests took {normal:?} beside slow clients"
    );

    for (since, mut s) in idle {
        closed_within(&mut s, IDLE_TIMEOUT + SLACK, "an idle connection").await;
        assert!(since.elapsed() >= IDLE_TIMEOUT - Duration::from_millis(200));
    }
    closed_within(
        &mut kept,
        IDLE_TIMEOUT + SLACK,
        "an idle keep-alive connection",
    )
    .await;
    assert!(kept_since.elapsed() >= IDLE_TIMEOUT - Duration::from_millis(200));
    for h in heads {
        let (took, got) = h.await.unwrap();
        assert!(
            took < HEADER_TIMEOUT + SLACK,
            "a dripped head held on for {took:?}"
        );
        // A head that does not arrive in time is closed, with no response.
        assert!(
            got.is_empty(),
            "a dripped head got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    for b in bodies {
        let (took, got) = b.await.unwrap();
        assert!(
            took < BODY_TIMEOUT + SLACK,
            "a dripped body held on for {took:?}"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "a dripped body got {text:?}"
        );
        assert!(text.contains(r#""error":"body_timeout""#), "{text:?}");
    }
    // None of the dripped bodies was stored. A fresh client: the pooled connection has
    // been idle about as long as the idle bound, and a request sent just as the node
    // closes it would race the close.
    let resp = common::http_client()
        .get(node.kv_url("drip0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let node =
        TestNode::start_with(&["--idle-timeout", "3s", "--max-value-bytes", "1048576"]).await;
    node.put_ok("big", vec![b'x'; 1 << 20], None).await;
    // A small receive window, and 32 requests for the 1 MiB value that are never read:
    // the node's writes block once the socket buffers are full.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(node.addr).await.unwrap();
    let pipelined = "GET /kv/big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(32);
    s.write_all(pipelined.as_bytes()).await.unwrap();
    tokio::time::sleep(IDLE_TIMEOUT + SLACK).await;
    // By now the node has given up: what it had buffered drains, then the stream ends.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(SLACK * 2, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was not closed");
    assert!(
        got < 32 << 20,
        "the node wrote every response ({got} bytes): nothing stalled"
    );
    // The node serves on.
    let resp = node.client.get(node.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_the_body_is_read() {
    let node = start().await;
    let mut s = connect(&node).await;
    s.write_all(
        b"PUT /kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let resp = read_response(&mut s, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(resp.status, 413);
    let json = resp.json();
    assert_eq!(json["error"], "too_large", "{json}");
    assert_eq!(resp.header("connection"), Some("close"));
    closed_within(&mut s, SLACK, "the connection after a 413").await;

    // Chunked, with no length declared: refused once the body passes the route's limit
    // (64 KiB here), the chunks sent one by one so the node has read each.
    let mut s = connect(&node).await;
    s.write_all(b"PUT /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        let chunk = format!("8000\r\n{}\r\n", "c".repeat(0x8000));
        s.write_all(chunk.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = read_response(&mut s, SLACK).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "too_large");
    assert_eq!(node.get("chunked").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn head_bounds_answer_json_where_hyper_lets_them() {
    let node = start().await;
    let send = |head: String| {
        let node_addr = node.addr;
        async move {
            let mut s = TcpStream::connect(node_addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            read_response(&mut s, SLACK).await
        }
    };
    // Our bounds, checked before routing: JSON.
    let long_uri = format!(
        "GET /kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(10 * 1024)
    );
    let resp = send(long_uri).await;
    assert_eq!(resp.status, 414);
    assert_eq!(resp.json()["error"], "uri_too_long");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = send(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
    assert_eq!(resp.status, 431);
    assert_eq!(resp.json()["error"], "headers_too_large");
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let resp = send(big).await;
    assert_eq!(resp.status, 431);
    assert_eq!(resp.json()["error"], "headers_too_large");

    // Past hyper's own bounds, or malformed, hyper answers without calling us: the status
    // is right, the body empty. These pin that down, so a hyper that changes it shows.
    let too_many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = send(format!("GET /health HTTP/1.1\r\nHost: x\r\n{too_many}\r\n")).await;
    assert_eq!((resp.status, resp.body.len()), (431, 0));
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(80 * 1024)
    );
    let resp = send(huge).await;
    assert_eq!((resp.status, resp.body.len()), (431, 0));
    let resp = send("GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()).await;
    assert_eq!((resp.status, resp.body.len()), (400, 0));
    let resp =
        send("PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".to_owned()).await;
    assert_eq!((resp.status, resp.body.len()), (400, 0));
}

#[tokio::test]
async fn probes_get_through_a_node_whose_connection_slots_are_full() {
    let mut node = TestNode::start_with(&[
        "--max-connections",
        "8",
        "--reserved-connections",
        "2",
        "--header-read-timeout",
        "30s",
    ])
    .await;
    // The harness's client keeps its connection from start-up in its pool: drop it, and
    // make each request of this test its own connection, so the test knows every slot.
    node.client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Eight connections that sent half a head take every ordinary slot.
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let mut s = connect(&node).await;
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        hogs.push(s);
    }
    // Give the node time to accept all eight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut probe = connect(&node).await;
    probe
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut probe, SLACK).await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    probe
        .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut probe, SLACK).await.status, 200);

    let mut other = connect(&node).await;
    other
        .write_all(b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut other, SLACK).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "overloaded");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("connection"), Some("close"));
    drop(hogs);
    // Slots given back: ordinary requests are served again.
    let served = common::poll_until(50, Duration::from_millis(100), || async {
        let r = node.get("a").await;
        (r.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(
        served.is_some(),
        "ordinary requests not served after the hogs left"
    );
}

#[tokio::test]
async fn listing_refuses_a_cursor_or_a_bound_that_does_not_decode() {
    let node = start().await;
    for k in ["a1", "a2", "a3"] {
        node.put_ok(k, "v", None).await;
    }
    for query in [
        "cursor=garbage",
        "cursor=Z2FyYmFnZQ",
        "prefix=%FF",
        "start=%zz",
        "end=ab%4",
    ] {
        let resp = node
            .client
            .get(node.url(&format!("/kv?{query}")))
            .send()
            .await
            .unwrap();
        common::assert_error(resp, StatusCode::BAD_REQUEST, "bad_param", query).await;
    }
    // A cursor the API returned still pages.
    let page: Value = node
        .client
        .get(node.url("/kv?prefix=a&limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let next: Value = node
        .client
        .get(node.url(&format!("/kv?prefix=a&limit=5&cursor={cursor}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = next["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a2", "a3"]);
}
