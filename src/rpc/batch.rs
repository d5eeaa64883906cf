//! Byte-bounded batches for every bulk internode message (pure logic).
//!
//! Values may be as large as `--max-value-bytes` and a key may hold `--max-siblings` of
//! them, so a batch bounded by a count of keys can exceed any frame: the same batch then
//! fails on every retry. Every bulk message (hint delivery, movement of unowned keys,
//! anti-entropy pulls and pushes, `ReadMany`, `Scan` and `Digests` replies) is therefore
//! cut by the items' encoded size, measured with the same msgpack encoding the frame
//! carries, against a budget derived from the frame limit. An item larger than the budget
//! still travels, alone in its batch: the startup check ([`check_frame_fits`]) makes sure
//! the frame itself can carry the largest item a node accepts.

use serde::Serialize;

/// Bytes of a frame kept free for what surrounds a batch's items: the version byte, the
/// envelope and its id, the enum tag, the array header and any small fields next to the
/// batch (`more`, a target). Generous on purpose: a few KiB of that is all that is used.
pub const FRAME_HEADROOM_BYTES: usize = 64 * 1024;

/// The most bytes one bulk call carries when the frame would allow more. A call must
/// finish within the RPC timeout, fsync included, at the receiving end: a 90 MiB merge
/// can take longer than that and would then time out on every retry, just like a batch
/// that does not fit its frame.
pub const TARGET_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The most items one bulk call carries, whatever their size. The receiver refuses more
/// (see `rpc::bounds`), so a batch of tiny keys cannot ask for unbounded work either.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// Bytes a stored version may take beyond its value: its dot, timestamps, content type
/// and its share of the causal context. Used only to check that the frame limit can
/// carry the largest sibling set a node accepts.
pub const SIBLING_OVERHEAD_BYTES: usize = 8 * 1024;

/// Bytes a key may take (see `key`), plus its encoding.
pub const MAX_KEY_ENCODED_BYTES: usize = 1024 + 8;

/// How big one batch may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimit {
    /// Encoded bytes of the items in one batch (a single item over it travels alone).
    pub max_bytes: usize,
    /// Items in one batch.
    pub max_items: usize,
}

impl BatchLimit {
    /// The limit for messages carried in frames of at most `max_frame_bytes`.
    pub fn for_frame(max_frame_bytes: usize) -> Self {
        BatchLimit {
            max_bytes: max_frame_bytes
                .saturating_sub(FRAME_HEADROOM_BYTES)
                .clamp(1, TARGET_BATCH_BYTES),
            max_items: MAX_BATCH_ITEMS,
        }
    }
}

impl Default for BatchLimit {
    fn default() -> Self {
        Self::for_frame(super::frame::DEFAULT_MAX_FRAME_BYTES)
    }
}

/// A writer that only counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes `item` takes as an element of a batch, encoded as the frame encodes it
/// (`rmp_serde::encode::write`: structs as arrays, variants by name), without allocating.
/// An item that cannot be encoded counts as `usize::MAX`: it goes alone, and the frame
/// encoder reports the error.
pub fn encoded_len<T: Serialize + ?Sized>(item: &T) -> usize {
    let mut counter = Counter(0);
    match rmp_serde::encode::write(&mut counter, item) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Collects items into batches that stay within a [`BatchLimit`].
///
/// `push` hands back the batch that was full before the new item, which then starts the
/// next one; `finish` hands back the last. Items keep their order, and each item lands in
/// exactly one batch.
#[derive(Debug)]
pub struct Batcher<T> {
    limit: BatchLimit,
    items: Vec<T>,
    bytes: usize,
}

impl<T> Batcher<T> {
    pub fn new(limit: BatchLimit) -> Self {
        Batcher {
            limit,
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds `item`, which encodes to `size` bytes. When it does not fit beside the items
    /// already held, those are returned as a closed batch and `item` starts a new one.
    pub fn push(&mut self, item: T, size: usize) -> Option<Vec<T>> {
        let fits = self.items.is_empty()
            || (self.items.len() < self.limit.max_items
                && self
                    .bytes
                    .checked_add(size)
                    .is_some_and(|b| b <= self.limit.max_bytes));
        let closed = if fits {
            None
        } else {
            self.bytes = 0;
            Some(std::mem::take(&mut self.items))
        };
        self.bytes = self.bytes.saturating_add(size);
        self.items.push(item);
        closed
    }

    /// Whether `size` more bytes would close the current batch.
    pub fn would_close(&self, size: usize) -> bool {
        !self.items.is_empty()
            && (self.items.len() >= self.limit.max_items
                || self
                    .bytes
                    .checked_add(size)
                    .is_none_or(|b| b > self.limit.max_bytes))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Encoded bytes of the items held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The batch in progress, if it holds anything; the batcher is empty afterwards.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.bytes = 0;
        (!self.items.is_empty()).then(|| std::mem::take(&mut self.items))
    }
}

/// Splits `items` into batches within `limit`, measuring each with `size`.
pub fn split<T>(
    items: impl IntoIterator<Item = T>,
    limit: BatchLimit,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batcher = Batcher::new(limit);
    let mut out = Vec::new();
    for item in items {
        let n = size(&item);
        out.extend(batcher.push(item, n));
    }
    out.extend(batcher.take());
    out
}

/// Splits `items` into batches within `limit`, by their msgpack size.
pub fn split_encoded<T: Serialize>(
    items: impl IntoIterator<Item = T>,
    limit: BatchLimit,
) -> Vec<Vec<T>> {
    split(items, limit, |item| encoded_len(item))
}

/// Why a configuration cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--max-frame-bytes {max_frame_bytes} cannot carry a key's largest sibling set \
     (--max-value-bytes {max_value_bytes} x --max-siblings {max_siblings}, with overhead: \
     {needed} bytes); raise --max-frame-bytes to at least {needed} or lower the others"
)]
pub struct FrameTooSmall {
    pub max_frame_bytes: usize,
    pub max_value_bytes: usize,
    pub max_siblings: usize,
    pub needed: usize,
}

/// The smallest frame that carries one key holding `max_siblings` values of
/// `max_value_bytes` each, with the key and the message around it; `None` on overflow.
pub fn frame_needed(max_value_bytes: usize, max_siblings: usize) -> Option<usize> {
    max_value_bytes
        .checked_add(SIBLING_OVERHEAD_BYTES)?
        .checked_mul(max_siblings)?
        .checked_add(MAX_KEY_ENCODED_BYTES)?
        .checked_add(FRAME_HEADROOM_BYTES)
}

/// Checks at startup that the frame limit carries the largest item a node accepts: a
/// sibling set that did not fit any frame could never be replicated, hinted, moved or
/// repaired, and every batch holding it would fail forever.
pub fn check_frame_fits(
    max_frame_bytes: usize,
    max_value_bytes: usize,
    max_siblings: usize,
) -> Result<(), FrameTooSmall> {
    let needed = frame_needed(max_value_bytes, max_siblings).unwrap_or(usize::MAX);
    // The frame length travels in a u32.
    if needed <= max_frame_bytes && max_frame_bytes <= u32::MAX as usize {
        return Ok(());
    }
    Err(FrameTooSmall {
        max_frame_bytes,
        max_value_bytes,
        max_siblings,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limit(max_bytes: usize, max_items: usize) -> BatchLimit {
        BatchLimit {
            max_bytes,
            max_items,
        }
    }

    proptest! {
        /// Every batch stays within the limit unless it holds one item alone; every item
        /// comes out exactly once, in order; no batch is empty.
        #[test]
        fn batches_stay_within_the_limit_and_keep_every_item(
            sizes in proptest::collection::vec(0usize..5_000, 0..300),
            max_bytes in 1usize..20_000,
            max_items in 1usize..50,
        ) {
            let lim = limit(max_bytes, max_items);
            let items: Vec<(usize, usize)> = sizes.iter().copied().enumerate().collect();
            let batches = split(items.clone(), lim, |(_, s)| *s);
            for batch in &batches {
                prop_assert!(!batch.is_empty());
                let bytes: usize = batch.iter().map(|(_, s)| s).sum();
                prop_assert!(batch.len() <= max_items);
                prop_assert!(
                    bytes <= max_bytes || batch.len() == 1,
                    "batch of {} items, {} bytes, over {}", batch.len(), bytes, max_bytes
                );
            }
            let flat: Vec<(usize, usize)> = batches.into_iter().flatten().collect();
            prop_assert_eq!(flat, items);
        }

        /// Batches are full: a batch closes only when its successor's first item would
        /// not have fitted (so the builder does not send more calls than it must).
        #[test]
        fn a_batch_closes_only_when_the_next_item_does_not_fit(
            sizes in proptest::collection::vec(0usize..5_000, 1..200),
            max_bytes in 1usize..20_000,
            max_items in 1usize..50,
        ) {
            let batches = split(sizes.clone(), limit(max_bytes, max_items), |s| *s);
            for pair in batches.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let bytes: usize = a.iter().sum();
                prop_assert!(a.len() == max_items || bytes + b[0] > max_bytes);
            }
        }

    }

    proptest! {
        // Encoding real messages is slow in a debug build: fewer, smaller cases.
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Real messages: the encoded batch, as the frame carries it, stays within the
        /// budget plus the headroom reserved for the envelope.
        #[test]
        fn encoded_batches_fit_the_frame(
            values in proptest::collection::vec(0usize..30_000, 1..40),
            frame_kib in 70usize..400,
        ) {
            let frame = frame_kib * 1024;
            let lim = BatchLimit::for_frame(frame);
            let entries: Vec<(String, Vec<u8>)> = values
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("key-{i}"), vec![7u8; *n]))
                .collect();
            let total = entries.len();
            let batches = split_encoded(entries, lim);
            let mut seen = 0;
            for batch in batches {
                seen += batch.len();
                let env = crate::rpc::Envelope::new(u64::MAX, batch);
                let mut buf = Vec::new();
                rmp_serde::encode::write(&mut buf, &env).expect("encode");
                // The frame carries the version byte, then the body.
                let framed = buf.len() + 1;
                prop_assert!(framed <= frame, "{} > {}", framed, frame);
            }
            prop_assert_eq!(seen, total);
        }
    }

    #[test]
    fn an_oversized_item_travels_alone() {
        let batches = split(vec![10, 500, 10, 10], limit(100, 10), |s| *s);
        assert_eq!(batches, vec![vec![10], vec![500], vec![10, 10]]);
    }

    #[test]
    fn encoded_len_matches_the_encoding() {
        let item = ("k".to_string(), vec![1u8, 2, 3]);
        assert_eq!(
            encoded_len(&item),
            rmp_serde::to_vec(&item).expect("encode").len()
        );
    }

    #[test]
    fn the_frame_check_refuses_what_cannot_travel() {
        let frame = crate::rpc::frame::DEFAULT_MAX_FRAME_BYTES;
        // The defaults fit: 64 values of 1 MiB in a 96 MiB frame.
        assert_eq!(check_frame_fits(frame, 1024 * 1024, 64), Ok(()));
        let err = check_frame_fits(frame, 2 * 1024 * 1024, 64).expect_err("too small");
        assert!(err.to_string().contains("--max-frame-bytes"), "{err}");
        assert!(err.needed > frame);
        // Overflowing products are refused, not wrapped.
        assert!(check_frame_fits(usize::MAX, usize::MAX, 2).is_err());
        assert!(check_frame_fits(8 << 20, 1 << 20, 4).is_ok());
    }
}
