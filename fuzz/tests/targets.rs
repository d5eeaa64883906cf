//! Every fuzz target over its seed corpus and seeded random mutations of it (not
//! coverage-guided; AFL++ is, through `scripts/fuzz.sh`). Bounded by `engine::DEFAULT_ITERS`
//! inputs and `engine::TIME_BUDGET` per target.

use ringkv_fuzz::engine::{self, Report};
use ringkv_fuzz::{target, TARGETS};

fn exercise(name: &str) -> Report {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let (seed, iters) = engine::settings();
    eprintln!("target {name}: seed {seed} (FUZZ_SEED), {iters} mutations (FUZZ_ITERS)");
    let report = engine::exercise(&t, seed, iters).expect("the seed corpus reads");
    eprintln!("target {name}: {report:?}");
    assert!(report.seeds > 0);
    report
}

#[test]
fn rpc_frame() {
    exercise("rpc_frame");
}

#[test]
fn causality_token() {
    exercise("causality_token");
}

#[test]
fn dvv() {
    exercise("dvv");
}

#[test]
fn http_key() {
    exercise("http_key");
}

#[test]
fn http_batch() {
    exercise("http_batch");
}

#[test]
fn record() {
    exercise("record");
}

#[test]
fn rpc_handshake() {
    exercise("rpc_handshake");
}

/// A target added to `TARGETS` gets a test here too: this fails until it does.
#[test]
fn every_target_has_a_test_and_seeds() {
    let tested = [
        "rpc_frame",
        "causality_token",
        "dvv",
        "http_key",
        "http_batch",
        "record",
        "rpc_handshake",
    ];
    for t in TARGETS {
        assert!(tested.contains(&t.name), "target {} has no #[test]", t.name);
        let seeds = engine::seeds(t.name).expect("corpus dir");
        assert!(!seeds.is_empty(), "target {} has no seeds", t.name);
    }
}
