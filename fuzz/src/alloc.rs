//! The counting global allocator, and the bounded-allocation check built on it.
//!
//! A decoder that trusts a length read from its input allocates what the input claims
//! (a 4 GiB `Vec` for a five-byte header). Fuzzing alone does not see it: the allocation
//! succeeds, or the process dies of memory in a way AFL++ calls a timeout. So every target
//! runs its decoding inside [`bounded`], which fails when the bytes live at once during the
//! call rose above a limit proportional to the input.
//!
//! Counts are per thread (a target is single-threaded), so concurrent tests in one
//! process do not see each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// What serde lets a decoder reserve ahead of the data, per sequence: `size_hint::cautious`
/// caps a preallocation from a claimed length at 1 MiB. Nested sequences each take it
/// once (a Merge's entries, a set's versions), so the allowance is a few of them.
pub const PREALLOC_ALLOWANCE: usize = 4 * 1024 * 1024;

/// Bytes a decoded value may take per input byte: a one-byte msgpack integer becomes an
/// eight-byte counter in a `BTreeMap` node, a one-byte fixarray a `Vec` header.
pub const PER_INPUT_BYTE: usize = 64;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// [`System`], counting the bytes each thread holds and the highest that count reached.
pub struct Counting;

fn grow(n: usize) {
    // `try_with`: the allocator runs during thread teardown too, after TLS is gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting beside it touches
// only thread-local `Cell`s of plain integers, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the old and the new block alive at once, as a copying realloc has them.
            grow(new_size);
            shrink(layout.size());
        }
        p
    }
}

/// Runs `f` and returns its result and the most bytes this thread held above what it held
/// when `f` started.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, peak.saturating_sub(start))
}

/// The limit for an input of `len` bytes: [`PREALLOC_ALLOWANCE`] plus [`PER_INPUT_BYTE`] a byte.
pub fn limit_for(len: usize) -> usize {
    PREALLOC_ALLOWANCE.saturating_add(len.saturating_mul(PER_INPUT_BYTE))
}

/// Runs `f` on behalf of an input of `input_len` bytes, and panics if it held more than
/// [`limit_for`] that length at any moment: an allocation the input's size does not justify.
pub fn bounded<R>(what: &str, input_len: usize, f: impl FnOnce() -> R) -> R {
    let (r, peak) = peak_during(f);
    let limit = limit_for(input_len);
    assert!(
        peak <= limit,
        "{what}: held {peak} bytes at once for an input of {input_len} bytes (limit {limit})"
    );
    r
}
