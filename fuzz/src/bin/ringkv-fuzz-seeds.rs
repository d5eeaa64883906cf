//! Writes the seed corpora (`fuzz/corpus/<target>/`) from real encodings: frames the RPC
//! client sends, the hello a dialing node sends, tokens and records the node writes, bodies the tests post. Run it again
//! after a format changes: `cargo run -p ringkv-fuzz --bin ringkv-fuzz-seeds`.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use ringkv::kv::hints::hint_key;
use ringkv::kv::{record, HintRecord};
use ringkv::merkle::{Interval, Summary};
use ringkv::quorum::Quorum;
use ringkv::rpc::frame::{self, FrameCodec};
use ringkv::rpc::{Envelope, ForwardedWrite, RemoteError, Request, Response, ScanRange};
use ringkv::version::{Actor, CausalityToken, Payload, SiblingSet, VersionVector};
use tokio_util::codec::Encoder;

fn actor(node: u64) -> Actor {
    Actor { node, epoch: 1 }
}

fn value(s: &str) -> Payload {
    Payload::Value {
        data: Bytes::copy_from_slice(s.as_bytes()),
        content_type: "text/plain".into(),
    }
}

/// Two siblings (concurrent writes at two replicas) and a tombstone-holding third replica.
fn sets() -> Vec<SiblingSet> {
    let (base, _) = SiblingSet::new()
        .update(None, actor(1), value("v1"), 10)
        .expect("a fresh counter");
    let (left, _) = base
        .update(None, actor(1), value("left"), 11)
        .expect("a fresh counter");
    let (right, _) = base
        .update(Some(base.context()), actor(2), value("right"), 12)
        .expect("a fresh counter");
    let (gone, _) = left
        .update(Some(left.context()), actor(3), Payload::Tombstone, 13)
        .expect("a fresh counter");
    vec![left.sync(&right), right, gone]
}

fn requests(set: &SiblingSet) -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Read { key: "k".into() },
        Request::Merge {
            entries: vec![("k".into(), set.clone()), ("j".into(), SiblingSet::new())],
        },
        Request::Hint {
            target: 9,
            key: "k".into(),
            set: set.clone(),
        },
        Request::Forward(ForwardedWrite {
            key: "k".into(),
            seen: Some(set.context().clone()),
            payload: value("fw"),
            w: Some(Quorum::Count(2)),
            timeout_ms: 500,
        }),
        Request::Scan(ScanRange {
            start: Some("a".into()),
            start_exclusive: true,
            end: None,
            limit: 100,
            max_bytes: 1 << 20,
        }),
        Request::Summaries {
            intervals: vec![Interval::FULL, Interval { lo: 5, hi: 9 }],
        },
        Request::Digests {
            interval: Interval { lo: 0, hi: 1 << 40 },
            after: Some("k".into()),
            limit: 10,
        },
        Request::ReadMany {
            keys: vec!["a".into(), "b".into()],
        },
        Request::DropIfDigest {
            entries: vec![("a".into(), 7)],
        },
        Request::Departed { node: 3 },
    ]
}

fn responses(set: &SiblingSet) -> Vec<Response> {
    vec![
        Response::Pong { node_id: 1 },
        Response::Read(Some(set.clone())),
        Response::Merged,
        Response::HintRefused {
            reason: "full".into(),
        },
        Response::Written {
            found: true,
            set: set.clone(),
            dot: set.versions().first().map(|v| v.dot),
        },
        Response::Scanned {
            entries: vec![("k".into(), set.clone())],
            more: true,
        },
        Response::Summaries(vec![Summary { hash: 7, count: 2 }]),
        Response::Digests {
            entries: vec![("k".into(), 3)],
            more: false,
        },
        Response::ReadMany {
            entries: vec![("k".into(), None), ("j".into(), Some(set.clone()))],
            more: false,
        },
        Response::Dropped(2),
        Response::Departed(true),
        Response::Error(RemoteError::SiblingLimit { limit: 64 }),
    ]
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(rest);
    out
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)
}

fn frames(dir: &Path, set: &SiblingSet) -> Result<(), Box<dyn std::error::Error>> {
    let max = 64 * 1024;
    let mut wire = BytesMut::new();
    for (i, body) in requests(set).into_iter().enumerate() {
        let payload = frame::encode(&Envelope::new(i as u64, body), max)?;
        write(
            dir,
            "rpc_frame",
            &format!("request-{i:02}"),
            &with_mode(0x80, &payload),
        )?;
        FrameCodec::new(max).encode(payload, &mut wire)?;
    }
    for (i, body) in responses(set).into_iter().enumerate() {
        let payload = frame::encode(&Envelope::new(i as u64, body), max)?;
        write(
            dir,
            "rpc_frame",
            &format!("response-{i:02}"),
            &with_mode(0x80, &payload),
        )?;
    }
    // A stream of three frames, fed whole and three bytes at a time, then cut by a prefix
    // over the limit and by an empty frame.
    let three: Vec<u8> = wire[..].iter().copied().take(200).collect();
    write(dir, "rpc_frame", "stream-whole", &with_mode(0x40, &wire))?;
    write(dir, "rpc_frame", "stream-pieces", &with_mode(0x02, &three))?;
    let mut cut = BytesMut::from(&wire[..]);
    cut.put_u32(0x00ff_ffff);
    write(dir, "rpc_frame", "stream-too-large", &with_mode(0x40, &cut))?;
    let mut empty = BytesMut::new();
    empty.put_u32(0);
    write(dir, "rpc_frame", "stream-empty", &with_mode(0x40, &empty))?;
    Ok(())
}

fn tokens(dir: &Path, set: &SiblingSet) -> Result<(), Box<dyn std::error::Error>> {
    let text = CausalityToken::for_key(b"k", set.context(), &[]).encode();
    write(
        dir,
        "causality_token",
        "text",
        &with_mode(0, text.as_bytes()),
    )?;
    let raw = URL_SAFE_NO_PAD.decode(&text)?;
    write(dir, "causality_token", "raw", &with_mode(1, &raw))?;
    let mut old = vec![1u8];
    rmp_serde::encode::write(&mut old, set.context())?;
    write(dir, "causality_token", "format-1", &with_mode(1, &old))?;
    let many: VersionVector = (0..70u64).map(|n| (actor(n), n + 1)).collect();
    write(
        dir,
        "causality_token",
        "issued-70-actors",
        &with_mode(2, &rmp_serde::to_vec(&many)?),
    )?;
    Ok(())
}

fn dvv(dir: &Path, sets: &[SiblingSet]) -> Result<(), Box<dyn std::error::Error>> {
    let mut stream = Vec::new();
    for s in sets {
        rmp_serde::encode::write(&mut stream, s)?;
    }
    write(dir, "dvv", "decoded-sets", &with_mode(1, &stream))?;
    // Histories: `arbitrary` reads these as steps; any bytes are a history.
    let steps: Vec<u8> = (0u8..96).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    write(dir, "dvv", "history-a", &with_mode(0, &steps))?;
    let syncs: Vec<u8> = (0u8..96).map(|i| if i % 3 == 0 { 3 } else { i }).collect();
    write(dir, "dvv", "history-b", &with_mode(0, &syncs))?;
    Ok(())
}

fn http(dir: &Path) -> std::io::Result<()> {
    let keys = [
        (0, "key", "a%2Fb"),
        (0, "key-utf8", "caf%C3%A9"),
        (0, "key-bad-escape", "ab%4"),
        (1, "uri", "user%3A42?w=2&timeout_ms=500"),
        (1, "uri-returnbody", "k?returnbody&w=quorum"),
        (2, "query", "w=all&timeout_ms=60000&returnbody=false"),
        (2, "query-unknown", "r=1&x=y"),
        (3, "content-type", "text/plain; charset=utf-8"),
        (3, "content-type-bare", "application/"),
    ];
    for (mode, name, text) in keys {
        write(dir, "http_key", name, &with_mode(mode, text.as_bytes()))?;
    }
    let token = CausalityToken::for_key(b"b", &[(actor(1), 2)].into_iter().collect(), &[]).encode();
    let bodies = [
        (
            "mixed",
            format!(
                r#"{{"ops":[{{"op":"put","key":"a","value":"1"}},{{"op":"put","key":"b","value":"aGk=","encoding":"base64","content_type":"text/plain","token":"{token}"}},{{"op":"get","key":"a"}},{{"op":"delete","key":"b","token":"{token}"}}]}}"#
            ),
        ),
        (
            "bad-ops",
            r#"{"ops":[{"op":"get","key":""},{"op":"put","key":"x","value":"!!","encoding":"base64"},{"op":"frob","key":"y"},{"op":"get","key":"z","extra":1}]}"#.to_owned(),
        ),
        ("too-many", format!(r#"{{"ops":[{}]}}"#, [r#"{"op":"get","key":"k"}"#; 9].join(","))),
        ("not-a-batch", r#"[1,2,3]"#.to_owned()),
    ];
    for (name, body) in bodies {
        write(dir, "http_batch", name, body.as_bytes())?;
    }
    Ok(())
}

fn records(dir: &Path, set: &SiblingSet) -> Result<(), Box<dyn std::error::Error>> {
    write(
        dir,
        "record",
        "format-2",
        &with_mode(0, &record::encode(set)),
    )?;
    write(
        dir,
        "record",
        "format-1",
        &with_mode(0, &record::canonical(set)),
    )?;
    write(
        dir,
        "record",
        "body",
        &with_mode(1, &rmp_serde::to_vec(set)?),
    )?;
    let hint = HintRecord {
        stored_at_ms: 1_700_000_000_000,
        set: set.clone(),
    };
    write(dir, "record", "hint", &with_mode(2, &hint.encode()))?;
    let mut inner = hint.stored_at_ms.to_be_bytes().to_vec();
    inner.extend_from_slice(&rmp_serde::to_vec(set)?);
    write(dir, "record", "hint-body", &with_mode(3, &inner))?;
    let key = ringkv::key::Key::new("user:42")?;
    write(dir, "record", "hint-key", &with_mode(4, &hint_key(9, &key)))?;
    Ok(())
}

/// The hello a real dialing node sends (its first 37 bytes), taken off an in-memory stream.
fn client_hello() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use tokio::io::AsyncReadExt;
    let client = ringkv::rpc::Authenticator::new(
        ringkv::config::ClusterSecret::new(b"fuzz-cluster-secret-0123456789")?,
        "fuzz".into(),
        std::time::Duration::from_millis(200),
        Some(1),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    rt.block_on(async {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let mut hello = vec![0u8; 37];
        let read = async {
            let got = ours.read_exact(&mut hello).await;
            // Closing our end ends the client's wait for our hello.
            drop(ours);
            got
        };
        let (_refused, got) = tokio::join!(client.client(&mut theirs), read);
        got?;
        Ok(hello)
    })
}

fn handshakes(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let hello = client_hello()?;
    let t = "rpc_handshake";
    let mut with_proof = hello.clone();
    with_proof.extend_from_slice(&[0u8; 32]);
    write(dir, t, "raw-hello-zero-proof", &with_mode(0, &with_proof))?;
    write(dir, t, "raw-hello-only", &with_mode(0, &hello))?;
    write(dir, t, "raw-hello-cut", &with_mode(0, &hello[..20]))?;
    let mut newer = with_proof.clone();
    newer[4] = newer[4].wrapping_add(1);
    write(dir, t, "raw-next-version", &with_mode(0, &newer))?;
    write(dir, t, "honest", &with_mode(1, &hello[5..]))?;
    let mut trailing = hello[5..].to_vec();
    trailing.extend_from_slice(b"\0\0\0\x05\x01frame");
    write(dir, t, "honest-then-frame", &with_mode(1, &trailing))?;
    for way in 0u8..5 {
        let mut forged = vec![way];
        forged.extend_from_slice(&hello[5..]);
        forged.extend_from_slice(&[way, 0x80, way & 1, 16]);
        write(dir, t, &format!("forged-{way}"), &with_mode(2, &forged))?;
    }
    write(dir, t, "reflected", &[3])?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let sets = sets();
    let set = &sets[0];
    frames(&dir, set)?;
    tokens(&dir, set)?;
    dvv(&dir, &sets)?;
    http(&dir)?;
    records(&dir, set)?;
    handshakes(&dir)?;
    println!("seeds written under {}", dir.display());
    Ok(())
}
