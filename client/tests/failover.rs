//! The send loop's policy against fake nodes on loopback: which calls move to the next
//! node, which are retried, and that a write that reached a node is never sent again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_client::{Client, ClientError, ClientOptions, ReadResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TEST_TIMEOUT: Duration = Duration::from_secs(20);
const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
    content-length: 40\r\nconnection: close\r\n\r\n{\"error\":\"unavailable\",\"message\":\"nope\"}";
const VALUE: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-causality-token: t1\r\n\
    content-length: 1\r\nconnection: close\r\n\r\nv";
const WRITTEN: &str = "HTTP/1.1 204 No Content\r\nx-causality-token: t2\r\n\
    connection: close\r\n\r\n";

/// A node that answers every request with `answer`, and counts them.
struct FakeNode {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn fake(answer: &'static str) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                if read_request(&mut conn).await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    FakeNode { url, hits }
}

/// Reads one request (head, then `content-length` bytes of body); bounded at 64 KiB.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(());
        }
    }
}

/// A URL nobody listens on: a port just released.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

fn options() -> ClientOptions {
    ClientOptions {
        retries: 2,
        backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("the call ended in time")
}

#[tokio::test]
async fn a_read_moves_past_503s_then_retries_a_bounded_number_of_times() {
    let (a, b) = (fake(UNAVAILABLE).await, fake(UNAVAILABLE).await);
    let client = Client::with_nodes([&a.url, &b.url], &options()).unwrap();
    let err = bounded(client.get("k"))
        .await
        .expect_err("every node says 503");
    assert!(err.is_unavailable(), "{err}");
    assert!(matches!(err, ClientError::Api { status: 503, ref code, .. } if code == "unavailable"));
    // Each node once, then `retries` more attempts.
    let total = a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst);
    assert_eq!(total, 2 + 2, "a: {:?} b: {:?}", a.hits, b.hits);
}

#[tokio::test]
async fn a_read_gets_its_answer_from_the_next_node() {
    let (down, up) = (fake(UNAVAILABLE).await, fake(VALUE).await);
    let client = Client::with_nodes([&down.url, &up.url], &options()).unwrap();
    let read = bounded(client.get("k")).await.unwrap();
    assert_eq!(
        read,
        ReadResult::Value {
            data: Bytes::from_static(b"v"),
            content_type: "text/plain".into(),
            token: "t1".into(),
        }
    );
    // The next call starts at the node that answered.
    bounded(client.get("k")).await.unwrap();
    assert_eq!(down.hits.load(Ordering::SeqCst), 1);
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_write_that_reached_a_node_is_not_sent_again() {
    let (down, up) = (fake(UNAVAILABLE).await, fake(WRITTEN).await);
    let client = Client::with_nodes([&down.url, &up.url], &options()).unwrap();
    let err = bounded(client.put("k", Bytes::from_static(b"v"), None, Some("t0")))
        .await
        .expect_err("the 503 is the answer");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(down.hits.load(Ordering::SeqCst), 1);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "the write was re-sent");
    let err = bounded(client.delete("k", None)).await.expect_err("503");
    assert_eq!(err.status(), Some(503));
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "the delete was re-sent");
}

#[tokio::test]
async fn a_write_moves_past_a_node_it_cannot_connect_to() {
    let up = fake(WRITTEN).await;
    let client = Client::with_nodes([dead_url(), up.url.clone()], &options()).unwrap();
    let token = bounded(client.put("k", Bytes::from_static(b"v"), None, None))
        .await
        .unwrap();
    assert_eq!(token, "t2");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_node_reachable_is_a_connect_error_that_keeps_its_cause() {
    let client = Client::with_nodes([dead_url(), dead_url()], &options()).unwrap();
    let err = bounded(client.get("k")).await.expect_err("nobody listens");
    assert!(err.is_unavailable(), "{err}");
    let ClientError::Transport(ref e) = err else {
        panic!("not a transport error: {err:?}");
    };
    assert!(e.is_connect(), "{e}");
    // The I/O error is reachable down the chain: what a CLI prints as the cause.
    let mut source = std::error::Error::source(&err);
    let mut refused = false;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    assert!(refused, "no ConnectionRefused under {err:?}");
}
