//! Connection bounds. [`LimitedListener`] holds at most `max` connections open, the next
//! accept waiting for a slot (the RPC server's). [`ConnectionSlots`] add a few reserved
//! slots, handed out only while every ordinary one is taken (the HTTP serve loop's).
//!
//! The HTTP serve loop takes a slot before it accepts, so past both bounds a client waits
//! in the kernel's accept backlog rather than costing the node memory. That wait is short
//! now: the serve loop closes slow and idle connections within its timeouts, so a slot
//! held by a client that sends nothing frees itself. The reserved slots are for the probes
//! (`/health`, `/ready`), which must get through while the ordinary slots are full.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct LimitedListener<L> {
    inner: L,
    slots: Arc<Semaphore>,
}

impl<L> LimitedListener<L> {
    pub fn new(inner: L, max: usize) -> Self {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

/// A connection that gives its slot back when dropped.
pub struct LimitedIo<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<L: axum::serve::Listener> axum::serve::Listener for LimitedListener<L> {
    type Io = LimitedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("connection semaphore is never closed"),
        };
        let (io, addr) = self.inner.accept().await;
        (LimitedIo { io, _slot: slot }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LimitedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LimitedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    ordinary: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    reserved: bool,
}

impl Slot {
    /// Taken from the reserve: the connection serves only the probes.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
}

impl ConnectionSlots {
    /// `max` ordinary slots (at least one) and `reserved` more.
    pub fn new(max: usize, reserved: usize) -> Self {
        ConnectionSlots {
            ordinary: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            reserved: Arc::new(Semaphore::new(reserved.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// An ordinary slot if one is free, else a reserved one, else waits for whichever
    /// frees first.
    pub async fn acquire(&self) -> Slot {
        if let Ok(p) = self.ordinary.clone().try_acquire_owned() {
            return Slot {
                _permit: p,
                reserved: false,
            };
        }
        loop {
            // `biased` prefers an ordinary slot when both free at once.
            let (permit, reserved) = tokio::select! {
                biased;
                p = self.ordinary.clone().acquire_owned() => (p, false),
                p = self.reserved.clone().acquire_owned() => (p, true),
            };
            // Neither semaphore is ever closed, so an acquire only ever waits.
            if let Ok(p) = permit {
                return Slot {
                    _permit: p,
                    reserved,
                };
            }
        }
    }

    /// Ordinary slots free now.
    pub fn available(&self) -> usize {
        self.ordinary.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserve_is_used_only_once_ordinary_slots_are_full() {
        let slots = ConnectionSlots::new(2, 1);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert!(!a.is_reserved() && !b.is_reserved());
        let c = slots.acquire().await;
        assert!(c.is_reserved());
        // All three taken: the next waits until one is given back.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire());
        assert!(waiting.await.is_err());
        drop(a);
        let d = slots.acquire().await;
        assert!(!d.is_reserved());
        assert_eq!(slots.available(), 0);
    }
}
