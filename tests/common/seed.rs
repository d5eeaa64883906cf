//! The seed of a randomised test: `RINGKV_TEST_SEED` when set (to replay a failure), the
//! clock otherwise. Either way the test logs it, so any run can be replayed.

use super::XorShift;

/// The environment variable that fixes the seed of every randomised integration test.
pub const SEED_ENV: &str = "RINGKV_TEST_SEED";

/// `RINGKV_TEST_SEED` (decimal, or hex with `0x`) when set, else one drawn from the clock.
/// A value that does not parse fails the test: silently ignoring it would run another seed
/// than the one being replayed.
pub fn test_seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => parse_seed(&text)
            .unwrap_or_else(|| panic!("{SEED_ENV}={text:?} is not a u64 (decimal or 0x-hex)")),
        Err(std::env::VarError::NotPresent) => clock_seed(),
        Err(e) => panic!("{SEED_ENV}: {e}"),
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

impl XorShift {
    /// A generator seeded by [`test_seed`]; returns the seed too, for the test to log
    /// (`… seed {seed}`, replayed with `RINGKV_TEST_SEED={seed}`).
    pub fn from_test_seed() -> (XorShift, u64) {
        let seed = test_seed();
        eprintln!("{SEED_ENV}={seed} replays this run");
        (XorShift::new(seed), seed)
    }
}
