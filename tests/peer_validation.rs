//! A peer that is authenticated but wrong: hand-made RPC frames, sent over a real socket
//! to a real node, each breaking one bound or invariant (`rpc::bounds::check`). Each gets
//! a `BadRequest` naming what was wrong, none stores anything, each is counted in
//! `/metrics`; a set over the sibling cap but within the per-message bound is stored and
//! counted, as the writer does for any merge over the cap.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::*;
use common::TestNode;
use futures::{SinkExt, StreamExt};
use ringkv::merkle::Interval;
use ringkv::quorum::Quorum;
use ringkv::rpc::frame::{self, FrameCodec};
use ringkv::rpc::{Envelope, ForwardedWrite, RemoteError, Request, Response};
use ringkv::version::{Actor, Dot, Payload, SiblingSet, Version, VersionVector};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const MAX_VALUE: usize = 1024;
const MAX_SIBLINGS: usize = 4;
/// `rpc::bounds::MIN_SET_VERSIONS`: with a cap of 4, the per-message bound.
const MAX_SET_VERSIONS: usize = ringkv::rpc::bounds::MIN_SET_VERSIONS;
const FRAME_MAX: usize = ringkv::rpc::frame::DEFAULT_MAX_FRAME_BYTES;

fn actor(node: u64) -> Actor {
    Actor { node, epoch: 0 }
}

fn value(len: usize) -> Payload {
    Payload::Value {
        data: Bytes::from(vec![b'v'; len]),
        content_type: "text/plain".into(),
    }
}

/// A sibling set exactly as given, invariants or not: encoded in `SiblingSet`'s own shape
/// and decoded as one, as the node decodes a peer's frame.
fn raw_set(versions: Vec<(Dot, Payload)>, context: &[(u64, u64)]) -> SiblingSet {
    #[derive(serde::Serialize)]
    struct RawSet {
        versions: Vec<Version>,
        context: VersionVector,
    }
    let raw = RawSet {
        versions: versions
            .into_iter()
            .map(|(dot, payload)| Version {
                dot,
                payload,
                written_at_ms: 1,
            })
            .collect(),
        context: context.iter().map(|&(a, c)| (actor(a), c)).collect(),
    };
    let bytes = rmp_serde::to_vec(&raw).expect("encode a raw set");
    rmp_serde::from_slice(&bytes).expect("a raw set decodes as a SiblingSet")
}

fn dot(a: u64, counter: u64) -> Dot {
    Dot {
        actor: actor(a),
        counter,
    }
}

/// `n` concurrent versions of small values, one per actor: well formed.
fn siblings(n: u64) -> SiblingSet {
    let versions = (1..=n).map(|a| (dot(a, 1), value(8))).collect();
    let context: Vec<(u64, u64)> = (1..=n).map(|a| (a, 1)).collect();
    raw_set(versions, &context)
}

fn merge(key: &str, set: SiblingSet) -> Request {
    Request::Merge {
        entries: vec![(key.to_owned(), set)],
    }
}

fn forward(key: &str, payload: Payload, w: Option<Quorum>, timeout_ms: u64) -> Request {
    Request::Forward(ForwardedWrite {
        key: key.to_owned(),
        seen: None,
        payload,
        w,
        timeout_ms,
    })
}

/// One framed RPC connection to the node, speaking the wire format by hand.
struct Wire {
    framed: Framed<TcpStream, FrameCodec>,
    next_id: u64,
}

impl Wire {
    async fn connect(rpc: SocketAddr) -> Wire {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(rpc))
            .await
            .expect("connect in time")
            .expect("connect");
        Wire {
            framed: Framed::new(stream, FrameCodec::new(FRAME_MAX)),
            next_id: 1,
        }
    }

    async fn call(&mut self, body: Request) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        let payload = frame::encode(&Envelope::new(id, body), FRAME_MAX).expect("encode");
        self.framed.send(payload).await.expect("send the frame");
        let reply = tokio::time::timeout(Duration::from_secs(20), self.framed.next())
            .await
            .expect("an answer within 20 s")
            .expect("the connection stays open")
            .expect("a valid frame");
        let reply: Envelope<Response> = frame::decode(&reply).expect("decode the answer");
        assert_eq!(reply.id, id);
        reply.body
    }
}

async fn stored(node: &TestNode, key: &str) -> bool {
    try_local(node, key)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_is_refused_counted_and_stores_nothing() {
    let max_value = MAX_VALUE.to_string();
    let max_siblings = MAX_SIBLINGS.to_string();
    let node = TestNode::start_with(&[
        "--max-value-bytes",
        &max_value,
        "--max-siblings",
        &max_siblings,
    ])
    .await;
    let mut wire = Wire::connect(node.rpc_addr).await;
    assert!(matches!(
        wire.call(Request::Ping).await,
        Response::Pong { .. }
    ));

    let over_max = |n: usize| {
        let versions = (1..=n as u64).map(|a| (dot(a, 1), value(8))).collect();
        let context: Vec<(u64, u64)> = (1..=n as u64).map(|a| (a, 1)).collect();
        raw_set(versions, &context)
    };
    let big_value = raw_set(vec![(dot(1, 1), value(MAX_VALUE + 1))], &[(1, 1)]);
    let cases: Vec<(&str, &str, Request, &str)> = vec![
        (
            "a forward with a value over --max-value-bytes",
            "bad/forward-big",
            forward("bad/forward-big", value(MAX_VALUE + 1), None, 5_000),
            "--max-value-bytes",
        ),
        (
            "a merge with a value over --max-value-bytes",
            "bad/merge-big",
            merge("bad/merge-big", big_value.clone()),
            "--max-value-bytes",
        ),
        (
            "a hint with a value over --max-value-bytes",
            "bad/hint-big",
            Request::Hint {
                target: 42,
                key: "bad/hint-big".into(),
                set: big_value,
            },
            "--max-value-bytes",
        ),
        (
            "a merge of more versions than one message may carry",
            "bad/merge-many",
            merge("bad/merge-many", over_max(MAX_SET_VERSIONS + 1)),
            "versions in one set",
        ),
        (
            "a merge whose versions are out of dot order",
            "bad/unsorted",
            merge(
                "bad/unsorted",
                raw_set(
                    vec![(dot(1, 2), value(1)), (dot(1, 1), value(1))],
                    &[(1, 2)],
                ),
            ),
            "not in dot order",
        ),
        (
            "a merge holding one dot twice",
            "bad/duplicate",
            merge(
                "bad/duplicate",
                raw_set(
                    vec![(dot(1, 1), value(1)), (dot(1, 1), value(2))],
                    &[(1, 1)],
                ),
            ),
            "held twice",
        ),
        (
            "a merge with a counter at u64::MAX",
            "bad/overflow",
            merge(
                "bad/overflow",
                raw_set(vec![(dot(1, 1), value(1))], &[(1, u64::MAX)]),
            ),
            "u64::MAX",
        ),
        (
            "a merge of a version from an actor its context never saw",
            "bad/outside",
            merge(
                "bad/outside",
                raw_set(vec![(dot(9, 3), value(1))], &[(1, 1)]),
            ),
            "not in the set's own causal context",
        ),
        (
            "a merge whose context names thousands of invented actors",
            "bad/actors",
            merge(
                "bad/actors",
                raw_set(
                    vec![(dot(1, 1), value(1))],
                    &(1..=5000).map(|a| (a, 1)).collect::<Vec<_>>(),
                ),
            ),
            "actors",
        ),
        (
            "a forward with w = 0",
            "bad/w0",
            forward("bad/w0", value(1), Some(Quorum::Count(0)), 5_000),
            "w = 0",
        ),
        (
            "a forward with timeout_ms = 2^64-1",
            "bad/timeout",
            forward("bad/timeout", value(1), None, u64::MAX),
            "timeout_ms",
        ),
        (
            "Summaries with lo > hi",
            "bad/none",
            Request::Summaries {
                intervals: vec![Interval { lo: 10, hi: 1 }],
            },
            "lo > hi",
        ),
        (
            "Digests with lo > hi",
            "bad/none",
            Request::Digests {
                interval: Interval {
                    lo: u64::MAX,
                    hi: 0,
                },
                after: None,
                limit: 10,
            },
            "lo > hi",
        ),
        (
            "a merge with an empty key",
            "bad/none",
            merge("", siblings(1)),
            "bad key",
        ),
    ];
    let hints_before = counter(&replication_json(&node).await, "hints_stored");
    for (what, key, request, expect) in &cases {
        match wire.call(request.clone()).await {
            Response::Error(RemoteError::BadRequest(m)) => {
                assert!(m.contains(expect), "{what}: {m:?} does not say {expect:?}")
            }
            other => panic!("{what}: expected a BadRequest, got {other:?}"),
        }
        assert!(!stored(&node, key).await, "{what}: {key} was stored");
    }
    assert_eq!(
        counter(&replication_json(&node).await, "hints_stored"),
        hints_before,
        "the refused hint was kept"
    );
    let refused = common::metrics::metric(&node, "ringkv_peer_requests_refused_total").await;
    assert_eq!(
        refused,
        cases.len() as u64,
        "ringkv_peer_requests_refused_total"
    );

    // What a correct peer sends still goes through, on the same connection: a set within
    // the cap, and one over it (stored and counted: it was acknowledged elsewhere).
    assert!(matches!(
        wire.call(merge("ok/within", siblings(MAX_SIBLINGS as u64)))
            .await,
        Response::Merged
    ));
    assert!(stored(&node, "ok/within").await);
    assert!(matches!(
        wire.call(merge("ok/over-cap", siblings(MAX_SIBLINGS as u64 + 2)))
            .await,
        Response::Merged
    ));
    let set = try_local(&node, "ok/over-cap")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the merge over the cap is stored");
    assert_eq!(live_values(&set).len(), MAX_SIBLINGS + 2, "{set}");
    let stats = replication_json(&node).await;
    assert!(
        counter(&stats, "merges_over_sibling_cap") >= 1,
        "/debug/replication: {stats}"
    );
    let refused_after = common::metrics::metric(&node, "ringkv_peer_requests_refused_total").await;
    assert_eq!(
        refused_after, refused,
        "a correct request was counted as refused"
    );
}
