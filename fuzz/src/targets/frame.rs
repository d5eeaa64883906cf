//! RPC frames (`ringkv::rpc::frame`): the length-prefixed stream, the version byte, and the
//! msgpack body decoded into the request and the response enums.
//!
//! Mode (first byte): with bit 7 set, the rest is one payload (version byte + body), which
//! lets the fuzzer work on the body without a prefix in front; otherwise the rest is a byte
//! stream fed to [`FrameCodec`] in pieces of `(mode & 0x3f) + 1` bytes (all at once with
//! bit 6 set), each frame it yields then checked as a payload.
//!
//! Checks: the codec yields exactly the frames a plain reading of the prefixes finds, and
//! refuses exactly the prefixes over the limit or of zero; frames re-framed read back the
//! same; a payload's error is the one its first byte calls for; a decoded envelope encodes,
//! decodes to the same value and re-encodes to the same bytes; `bounds::admit` clamps what it
//! admits into its bounds; no decode holds more memory than the input justifies.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use ringkv::rpc::bounds::{self, MAX_SCAN_ROWS};
use ringkv::rpc::frame::{self, FrameCodec, FrameError, LENGTH_PREFIX_BYTES};
use ringkv::rpc::{Envelope, Request, Response, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use crate::alloc::bounded;

/// The frame limit the codec runs with here: small, so that inputs reach it. The codec
/// reserves a frame's claimed length (up to the limit) as soon as its prefix is read, so the
/// limit is also what the bounded-allocation check allows it beyond the input.
pub const MAX_FRAME: usize = 64 * 1024;

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = super::mode(data) else {
        return;
    };
    if mode & 0x80 != 0 {
        payload(rest);
    } else {
        let piece = if mode & 0x40 != 0 {
            rest.len().max(1)
        } else {
            usize::from(mode & 0x3f) + 1
        };
        stream(rest, piece);
    }
}

/// What a plain reading of the prefixes finds in `wire`: the whole frames, then how the
/// stream ends (`Some(len)` for a prefix the codec must refuse).
fn expected_frames(wire: &[u8]) -> (Vec<&[u8]>, Option<usize>) {
    let mut frames = Vec::new();
    let mut rest = wire;
    while let Some((prefix, body)) = rest.split_first_chunk::<LENGTH_PREFIX_BYTES>() {
        let len = u32::from_be_bytes(*prefix) as usize;
        if len == 0 || len > MAX_FRAME {
            return (frames, Some(len));
        }
        let Some((frame, tail)) = body.split_at_checked(len) else {
            break;
        };
        frames.push(frame);
        rest = tail;
    }
    (frames, None)
}

fn stream(wire: &[u8], piece: usize) {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut src = BytesMut::new();
    let mut frames: Vec<Bytes> = Vec::new();
    let mut refused = None;
    bounded("frame codec", wire.len() + MAX_FRAME, || {
        'feed: for chunk in wire.chunks(piece) {
            src.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut src) {
                    Ok(Some(frame)) => frames.push(frame.freeze()),
                    Ok(None) => break,
                    Err(e) => {
                        refused = Some(e);
                        break 'feed;
                    }
                }
            }
        }
    });
    let (want, want_refusal) = expected_frames(wire);
    assert!(
        frames.iter().map(|f| &f[..]).eq(want.iter().copied()),
        "the codec yielded {} frames where the prefixes hold {}",
        frames.len(),
        want.len()
    );
    match (refused, want_refusal) {
        (None, None) => {}
        (Some(FrameError::Empty), Some(0)) => {}
        (Some(FrameError::TooLarge { len, max }), Some(want)) if want > 0 => {
            assert_eq!(
                (len, max),
                (want, MAX_FRAME),
                "TooLarge misreports the prefix"
            );
        }
        (got, want) => panic!("the codec ended with {got:?}, the prefixes call for {want:?}"),
    }
    // Framed again, the payloads read back as they were.
    let mut again = BytesMut::new();
    for f in &frames {
        codec
            .encode(f.clone(), &mut again)
            .expect("a frame the codec read is within its limit");
    }
    let mut reread = Vec::new();
    let mut codec = FrameCodec::new(MAX_FRAME);
    while let Some(f) = codec.decode(&mut again).expect("re-framed frames decode") {
        reread.push(f.freeze());
    }
    assert_eq!(reread, frames, "re-framed frames read back differently");
    for f in &frames {
        payload(f);
    }
}

fn payload(p: &[u8]) {
    let request = bounded("decode Request", p.len(), || frame::decode::<Request>(p));
    match request {
        Ok(env) => {
            round_trip(&env);
            check_admit(env.body);
        }
        Err(e) => check_error(p, &e),
    }
    match bounded("decode Response", p.len(), || frame::decode::<Response>(p)) {
        Ok(env) => round_trip(&env),
        Err(e) => check_error(p, &e),
    }
}

/// The error is the one the payload's first byte calls for.
fn check_error(p: &[u8], e: &FrameError) {
    match (p.first(), e) {
        (None, FrameError::Empty) => {}
        (Some(&v), FrameError::WrongVersion(got)) if v != PROTOCOL_VERSION => assert_eq!(v, *got),
        (Some(&PROTOCOL_VERSION), FrameError::Decode(_)) => {}
        (first, e) => panic!("payload starting {first:?} refused with {e:?}"),
    }
}

fn round_trip<T: Serialize + DeserializeOwned + Debug>(env: &Envelope<T>) {
    let bytes = frame::encode(env, usize::MAX).expect("a decoded envelope encodes");
    let back: Envelope<T> = frame::decode(&bytes).expect("an encoded envelope decodes");
    assert_eq!(
        format!("{env:?}"),
        format!("{back:?}"),
        "an envelope changed through encode and decode"
    );
    let again = frame::encode(&back, usize::MAX).expect("it encodes again");
    assert_eq!(bytes, again, "re-encoding is not stable");
}

/// `admit` refuses nothing (refusals are `bounds::check`'s, with the node's limits), and
/// what it lets through has its `Scan` and `Digests` limits inside their bounds.
fn check_admit(request: Request) {
    match bounds::admit(request) {
        Err(e) => panic!("admit refused a request: {e:?}"),
        Ok(Request::Scan(range)) => assert!((1..=MAX_SCAN_ROWS).contains(&range.limit)),
        Ok(Request::Digests { limit, .. }) => assert!((1..=MAX_SCAN_ROWS).contains(&limit)),
        Ok(_) => {}
    }
}
