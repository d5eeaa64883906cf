//! Reads frames under two bounds: a deadline per frame, and a node-wide byte budget.
//!
//! `LengthDelimitedCodec` reserves a frame's whole length as soon as it has read the
//! prefix, and waits for the body as long as the connection lives: a peer that sends
//! prefixes of 90 MiB and then nothing holds that memory per connection. Here, once a
//! frame's first byte has arrived the rest must arrive within `frame_timeout`; and the
//! body is only allocated once its length has been taken from a [`ReadBudget`] that all
//! of a node's connections share. With the budget spent, readers stop reading (TCP pushes
//! back on their peers) until the frames being read are decoded, or their deadline closes
//! them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::{Future, Stream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

use super::frame::{FrameError, LENGTH_PREFIX_BYTES};

/// Bytes of frames being read at once, over every connection that shares it.
#[derive(Clone)]
pub struct ReadBudget {
    semaphore: Arc<Semaphore>,
    /// What one frame may take at most: the whole budget. A frame longer than the budget
    /// takes all of it (it still passes the frame limit, which is checked first).
    total: u32,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> Self {
        // Semaphore permits are counted in u32 by `acquire_many`: a budget beyond 4 GiB
        // is clamped to it.
        let total = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        ReadBudget {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total as usize
    }
}

impl std::fmt::Debug for ReadBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBudget")
            .field("total", &self.total)
            .field("available", &self.available())
            .finish()
    }
}

/// A frame's payload (version byte + body), and its share of the budget, given back when
/// the frame is dropped.
pub struct Frame {
    pub payload: BytesMut,
    _budget: OwnedSemaphorePermit,
}

/// A stream of frames read from `R`. Cancel safe: all progress lives in the struct, so a
/// `select!` may drop a `next()` and call it again.
pub struct FrameReader<R> {
    inner: R,
    max: usize,
    timeout: Duration,
    budget: PollSemaphore,
    budget_total: u32,
    header: [u8; LENGTH_PREFIX_BYTES],
    header_len: usize,
    /// The body being read (allocated once the budget is held) and how much of it is in.
    body: Option<(BytesMut, usize)>,
    permit: Option<OwnedSemaphorePermit>,
    /// Set when a frame's first byte arrives; cleared when the frame is complete.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<R> FrameReader<R> {
    pub fn new(inner: R, max_frame_bytes: usize, timeout: Duration, budget: &ReadBudget) -> Self {
        FrameReader {
            inner,
            max: max_frame_bytes,
            timeout,
            budget: PollSemaphore::new(budget.semaphore.clone()),
            budget_total: budget.total,
            header: [0; LENGTH_PREFIX_BYTES],
            header_len: 0,
            body: None,
            permit: None,
            deadline: None,
        }
    }

    /// Part of a frame has arrived, and not the rest yet.
    pub fn in_frame(&self) -> bool {
        self.header_len > 0
    }

    fn reset(&mut self) {
        self.header_len = 0;
        self.body = None;
        self.permit = None;
        self.deadline = None;
    }
}

fn eof() -> FrameError {
    FrameError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed inside a frame",
    ))
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(deadline) = this.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.reset();
                    return Poll::Ready(Some(Err(FrameError::FrameTimeout(this.timeout))));
                }
            }
            if this.header_len < LENGTH_PREFIX_BYTES {
                let mut buf = ReadBuf::new(&mut this.header[this.header_len..]);
                if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                    return Poll::Ready(Some(Err(FrameError::Io(e))));
                }
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(if this.header_len == 0 {
                        None
                    } else {
                        Some(Err(eof()))
                    });
                }
                if this.header_len == 0 {
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
                }
                this.header_len += n;
                continue;
            }
            if this.body.is_none() {
                let len = u32::from_be_bytes(this.header) as usize;
                if len == 0 {
                    this.reset();
                    return Poll::Ready(Some(Err(FrameError::Empty)));
                }
                if len > this.max {
                    this.reset();
                    return Poll::Ready(Some(Err(FrameError::TooLarge { len, max: this.max })));
                }
                if this.permit.is_none() {
                    let want = u32::try_from(len)
                        .unwrap_or(u32::MAX)
                        .min(this.budget_total);
                    match ready!(this.budget.poll_acquire_many(cx, want)) {
                        Some(permit) => this.permit = Some(permit),
                        None => {
                            let e = io::Error::other("the read budget was closed");
                            return Poll::Ready(Some(Err(FrameError::Io(e))));
                        }
                    }
                }
                // Zeroed pages are mapped lazily: memory grows as the body arrives.
                this.body = Some((BytesMut::zeroed(len), 0));
            }
            let Some((body, filled)) = this.body.as_mut() else {
                continue;
            };
            if *filled < body.len() {
                let mut buf = ReadBuf::new(&mut body[*filled..]);
                if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                    return Poll::Ready(Some(Err(FrameError::Io(e))));
                }
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(eof())));
                }
                *filled += n;
                continue;
            }
            let payload = this.body.take().map(|(body, _)| body).unwrap_or_default();
            let permit = this.permit.take();
            this.reset();
            return match permit {
                Some(permit) => Poll::Ready(Some(Ok(Frame {
                    payload,
                    _budget: permit,
                }))),
                None => unreachable!("a body is only allocated once its budget is held"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_reassembled() {
        let (mut a, b) = tokio::io::duplex(7);
        let budget = ReadBudget::new(1024);
        let mut reader = FrameReader::new(b, 1024, Duration::from_secs(5), &budget);
        let writer = async move {
            for i in 0..5u8 {
                a.write_all(&frame(&[i; 20])).await.expect("write");
            }
        };
        let reading = async {
            let mut got = Vec::new();
            while let Some(f) = reader.next().await {
                got.push(f.expect("frame").payload.to_vec());
            }
            got
        };
        let ((), got) = tokio::join!(writer, reading);
        assert_eq!(got.len(), 5);
        for (i, body) in got.iter().enumerate() {
            assert_eq!(body, &vec![i as u8; 20]);
        }
        assert_eq!(budget.available(), 1024, "every frame gave its budget back");
    }

    #[tokio::test]
    async fn a_partial_frame_times_out() {
        let (mut a, b) = tokio::io::duplex(64);
        let budget = ReadBudget::new(1024);
        let mut reader = FrameReader::new(b, 1024, Duration::from_millis(100), &budget);
        a.write_all(&[0, 0, 0, 50, 1, 2]).await.expect("write");
        let started = tokio::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
        assert!(matches!(got, Ok(Some(Err(FrameError::FrameTimeout(_))))));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            budget.available(),
            1024,
            "the timed-out frame let its budget go"
        );
    }

    #[tokio::test]
    async fn the_budget_stops_a_second_frame_until_the_first_is_dropped() {
        let budget = ReadBudget::new(100);
        let (mut a1, b1) = tokio::io::duplex(256);
        let (mut a2, b2) = tokio::io::duplex(256);
        let mut r1 = FrameReader::new(b1, 1024, Duration::from_secs(5), &budget);
        let mut r2 = FrameReader::new(b2, 1024, Duration::from_secs(5), &budget);
        a1.write_all(&frame(&[1; 80])).await.expect("write");
        a2.write_all(&frame(&[2; 80])).await.expect("write");
        let first = r1.next().await.expect("a frame").expect("ok");
        assert_eq!(budget.available(), 20);
        let blocked = tokio::time::timeout(Duration::from_millis(100), r2.next()).await;
        assert!(blocked.is_err(), "the second frame waits for budget");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), r2.next()).await;
        assert!(matches!(second, Ok(Some(Ok(_)))));
    }

    #[tokio::test]
    async fn bad_prefixes_and_truncation_are_errors() {
        let budget = ReadBudget::new(1024);
        for (bytes, want) in [
            (vec![0, 0, 0, 0], "empty"),
            (vec![0xff, 0xff, 0xff, 0xff], "too large"),
            (vec![0, 0, 0, 9, 1], "eof"),
            (vec![0, 0], "eof"),
        ] {
            let (mut a, b) = tokio::io::duplex(64);
            let mut reader = FrameReader::new(b, 1024, Duration::from_secs(5), &budget);
            a.write_all(&bytes).await.expect("write");
            drop(a);
            let got = reader.next().await;
            let ok = match want {
                "empty" => matches!(got, Some(Err(FrameError::Empty))),
                "too large" => matches!(got, Some(Err(FrameError::TooLarge { .. }))),
                _ => matches!(got, Some(Err(FrameError::Io(_)))),
            };
            assert!(ok, "{want}: {:?}", got.map(|r| r.map(|f| f.payload.len())));
        }
        assert_eq!(budget.available(), 1024);
    }
}
