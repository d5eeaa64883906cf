//! Memory after a burst that stores a lot, against the real binary on loopback: 32
//! clients write 1,200 distinct keys of 256 KiB (300 MiB stored, four times more than the
//! node may keep in memory by its bound), every write acknowledged. Afterwards the node's
//! resident memory must be under the stated bound — redb's cache (64 MiB, the default
//! `--cache-bytes`) plus 128 MiB for everything else — however much was written, and it
//! must serve normal requests quickly, with the values it acknowledged.
//!
//! Measured on the development machine: 26 MiB before, 107 MiB after (debug build); the
//! release build 125–158 MiB after with 32 to 256 clients. What is left above the cache is
//! the node's working set and what glibc's per-thread arenas keep of freed bodies.

mod common;

use std::time::{Duration, Instant};

use common::rss::{mib, rss_bytes};
use common::TestNode;

const KEYS: usize = 1200;
const VALUE_BYTES: usize = 256 * 1024;
const CLIENTS: usize = 32;
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The stated bound: the cache plus 128 MiB (README, `--cache-bytes`).
const RSS_AFTER_MAX_BYTES: u64 = CACHE_BYTES + 128 * 1024 * 1024;
/// Normal requests right after the burst.
const P99_AFTER_MAX: Duration = Duration::from_millis(500);
/// The whole burst; it takes about 10 s in the debug build.
const BURST_MAX: Duration = Duration::from_secs(120);

/// The value of key `i`: distinct per key, so a read proves it is the one written.
fn value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_storing_four_times_the_bound_returns_under_it() {
    // The defaults: the cache bound is the default `--cache-bytes`.
    let node = TestNode::start().await;
    let pid = node.pid().expect("the node runs");
    let rss_before = rss_bytes(pid);

    let writer = common::http_client();
    let started = Instant::now();
    let errors = tokio::time::timeout(
        BURST_MAX,
        common::cluster::for_each_bounded(0..KEYS, CLIENTS, |i| {
            let (url, writer) = (node.url(&format!("/kv/burst-{i}")), writer.clone());
            async move {
                let resp = writer
                    .put(&url)
                    .body(value(i))
                    .send()
                    .await
                    .map_err(|e| format!("put {i}: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("put {i}: {}", resp.status()))
                }
            }
        }),
    )
    .await
    .expect("the burst ends within its bound");
    common::cluster::assert_no_errors(&errors, "the burst's PUTs");
    let burst_took = started.elapsed();

    // Let the writer's last commit and the workers' rounds finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(pid);

    // Normal requests right after: GETs of what was written, each checked.
    let client = common::http_client();
    let mut took = Vec::with_capacity(200);
    for i in (0..KEYS).step_by(KEYS / 200) {
        let t = Instant::now();
        let resp = client
            .get(node.url(&format!("/kv/burst-{i}")))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "get burst-{i}");
        let body = resp.bytes().await.expect("body");
        took.push(t.elapsed());
        assert!(body.as_ref() == value(i).as_slice(), "burst-{i} reads back");
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];

    eprintln!(
        "stored {} MiB in {:.1} s; RSS before {:.0} MiB, after {:.0} MiB (bound {:.0} MiB); \
         GETs after: p50 {:?}, p99 {:?}",
        KEYS * VALUE_BYTES / (1024 * 1024),
        burst_took.as_secs_f64(),
        mib(rss_before),
        mib(rss_after),
        mib(RSS_AFTER_MAX_BYTES),
        took[took.len() / 2],
        p99,
    );
    assert!(
        rss_after < RSS_AFTER_MAX_BYTES,
        "RSS after storing {} MiB is {:.0} MiB, over the bound of {:.0} MiB",
        KEYS * VALUE_BYTES / (1024 * 1024),
        mib(rss_after),
        mib(RSS_AFTER_MAX_BYTES)
    );
    assert!(p99 < P99_AFTER_MAX, "GET p99 after the burst is {p99:?}");
}
