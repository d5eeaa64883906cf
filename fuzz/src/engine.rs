//! The engine the tests run targets with: every seed of a target's corpus, then seeded
//! random mutations of them (flips, interesting bytes, inserts, deletes, splices), bounded
//! in count and in time. Not coverage-guided: a quick pass over the targets on every test
//! run; the coverage-guided search is AFL++'s (`scripts/fuzz.sh`).
//!
//! `FUZZ_SEED` and `FUZZ_ITERS` change the seed and the count; the seed is printed, and a
//! failing input is printed as hex with the panic, to be pinned as a regression test.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Target;

/// Mutated inputs per target and test run, unless `FUZZ_ITERS` says otherwise.
pub const DEFAULT_ITERS: usize = 20_000;
/// The most a test spends on mutated inputs, whatever the count.
pub const TIME_BUDGET: Duration = Duration::from_secs(5);
/// Mutated inputs are kept under this size (AFL++ is given the same cap).
pub const MAX_INPUT: usize = 64 * 1024;

/// The directory of a target's seed corpus.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// The seeds of a target, sorted by file name.
pub fn seeds(name: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(corpus_dir(name))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let file = entry.file_name().to_string_lossy().into_owned();
            out.push((file, std::fs::read(entry.path())?));
        }
    }
    out.sort();
    Ok(out)
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub seeds: usize,
    pub mutated: usize,
    pub elapsed: Duration,
}

/// Runs `input` through the target, printing it before the panic goes on, if it panics.
pub fn run_one(target: &Target, what: &str, input: &[u8]) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        eprintln!(
            "target {} failed on {what} ({} bytes): {}",
            target.name,
            input.len(),
            hex(input)
        );
        panic::resume_unwind(panic);
    }
}

/// Every seed, then mutations of them until `iters` or [`TIME_BUDGET`] runs out.
pub fn exercise(target: &Target, seed: u64, iters: usize) -> std::io::Result<Report> {
    let corpus = seeds(target.name)?;
    assert!(
        !corpus.is_empty(),
        "target {} has no seeds in {}",
        target.name,
        corpus_dir(target.name).display()
    );
    let started = Instant::now();
    for (file, input) in &corpus {
        run_one(target, &format!("seed {file}"), input);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mutated = 0;
    while mutated < iters && started.elapsed() < TIME_BUDGET {
        let base = &corpus[rng.gen_range(0..corpus.len())].1;
        let other = &corpus[rng.gen_range(0..corpus.len())].1;
        let input = mutate(&mut rng, base, other);
        run_one(
            target,
            &format!("mutation {mutated} of seed {seed}"),
            &input,
        );
        mutated += 1;
    }
    Ok(Report {
        seeds: corpus.len(),
        mutated,
        elapsed: started.elapsed(),
    })
}

/// The seed and count a test runs with: `FUZZ_SEED` / `FUZZ_ITERS`, or fixed defaults (so
/// that a run replays).
pub fn settings() -> (u64, usize) {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022);
    let iters = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ITERS);
    (seed, iters)
}

const INTERESTING: [u8; 10] = [0x00, 0x01, 0x02, 0x03, 0x7f, 0x80, 0xc0, 0xdc, 0xff, b'%'];

/// One to four stacked mutations of `base`, sometimes spliced with `other`.
pub fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = out.len();
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] = rng.gen();
            }
            3 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                out.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 16));
                out.drain(i..j);
            }
            5 if len > 0 => {
                // Duplicate a slice in place: repeated fields, nested containers.
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 32));
                let piece = out[i..j].to_vec();
                out.splice(j..j, piece);
            }
            6 if !other.is_empty() => {
                let cut = rng.gen_range(0..=len);
                let from = rng.gen_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if len >= 4 => {
                // A length field claiming something large, small or exactly at a bound.
                let i = rng.gen_range(0..=len - 4);
                let v: u32 = match rng.gen_range(0..4) {
                    0 => u32::MAX,
                    1 => 0,
                    2 => rng.gen_range(0..0x1_0000),
                    _ => rng.gen(),
                };
                out[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    out.truncate(MAX_INPUT);
    out
}

/// Lower-case hex, for pasting a failing input into a test.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (a pinned regression input).
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).map_or(0, |d| d as u8))
        .collect();
    digits
        .chunks(2)
        .map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0))
        .collect()
}
