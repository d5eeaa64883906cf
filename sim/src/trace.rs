//! The run's trace hash: every chunk of bytes a node or client receives, every gossip
//! datagram delivered and every response the workload sees, in delivery order. Two runs
//! with the same seed must print the same hash (`--trace-hash`).

use std::cell::RefCell;

use xxhash_rust::xxh3::Xxh3;

thread_local! {
    static TRACE: RefCell<Option<Xxh3>> = const { RefCell::new(None) };
    static LOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts a fresh trace on this thread. With `RINGKV_SIM_TRACE_LOG` set, every delivery
/// is also printed on stderr, to find where two runs part ways (diff the outputs).
pub fn start() {
    TRACE.with(|t| *t.borrow_mut() = Some(Xxh3::new()));
    LOG.with(|l| l.set(std::env::var_os("RINGKV_SIM_TRACE_LOG").is_some()));
}

/// Ends the trace and returns its hash.
pub fn finish() -> u64 {
    TRACE.with(|t| t.borrow_mut().take().map_or(0, |h| h.digest()))
}

/// Adds one delivery: a tag saying what it was, and its bytes.
pub fn record(tag: &[u8], data: &[u8]) {
    if LOG.with(|l| l.get()) {
        eprintln!(
            "{:?} {} {:016x} {}",
            turmoil::sim_elapsed(),
            String::from_utf8_lossy(tag),
            xxhash_rust::xxh3::xxh3_64(data),
            String::from_utf8_lossy(&data[..data.len().min(120)]).replace('\n', " ")
        );
    }
    let _ = TRACE.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            if let Some(h) = t.as_mut() {
                h.update(&(tag.len() as u32).to_le_bytes());
                h.update(tag);
                h.update(&(data.len() as u32).to_le_bytes());
                h.update(data);
            }
        }
    });
}
