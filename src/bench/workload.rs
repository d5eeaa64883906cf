//! What the workers ask for: which operation, on which key, with which value. Seeded, so
//! two runs with the same settings send the same sequence of operations.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The exponent of the zipfian key choice: YCSB's, where a few keys take most requests.
pub const ZIPF_EXPONENT: f64 = 0.99;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
}

#[derive(Clone, Debug)]
pub struct Workload {
    /// The share of operations that are reads, in [0, 1].
    pub read_ratio: f64,
    /// Keys are `bench-00000000` … `bench-{keys-1}`.
    pub keys: u64,
    pub key_dist: KeyDist,
    pub value: Bytes,
}

impl Workload {
    pub fn new(read_ratio: f64, keys: u64, key_dist: KeyDist, value_size: usize) -> Self {
        // Printable bytes, so that a value shows readably in a debug read.
        let value: Vec<u8> = (0..value_size).map(|i| b'a' + (i % 26) as u8).collect();
        Workload {
            read_ratio,
            keys: keys.max(1),
            key_dist,
            value: Bytes::from(value),
        }
    }

    /// A picker for one worker; each worker gets its own stream from the run's seed.
    pub fn picker(&self, seed: u64, worker: usize) -> Picker {
        let zipf = match self.key_dist {
            KeyDist::Uniform => None,
            // `Zipf::new` fails only for n = 0 or a negative exponent; neither can happen.
            KeyDist::Zipf => Zipf::new(self.keys, ZIPF_EXPONENT).ok(),
        };
        Picker {
            rng: StdRng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            zipf,
            read_ratio: self.read_ratio,
            keys: self.keys,
        }
    }
}

pub fn key_name(index: u64) -> String {
    format!("bench-{index:08}")
}

pub struct Picker {
    rng: StdRng,
    zipf: Option<Zipf<f64>>,
    read_ratio: f64,
    keys: u64,
}

impl Picker {
    pub fn pick(&mut self) -> (Op, u64) {
        let op = if self.rng.gen_bool(self.read_ratio.clamp(0.0, 1.0)) {
            Op::Get
        } else {
            Op::Put
        };
        let index = match &self.zipf {
            // Zipf samples ranks 1..=n; rank 1 is the hottest key.
            Some(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1,
            None => self.rng.gen_range(0..self.keys),
        };
        (op, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_read_ratio_and_keys_stay_in_range() {
        for dist in [KeyDist::Uniform, KeyDist::Zipf] {
            let w = Workload::new(0.25, 100, dist, 8);
            let mut p = w.picker(7, 3);
            let mut reads = 0;
            for _ in 0..10_000 {
                let (op, key) = p.pick();
                assert!(key < 100);
                reads += usize::from(op == Op::Get);
            }
            assert!((2_000..3_000).contains(&reads), "{reads} reads of 10000");
        }
    }

    #[test]
    fn zipf_makes_the_first_key_the_hottest() {
        let w = Workload::new(0.0, 1000, KeyDist::Zipf, 1);
        let mut p = w.picker(1, 0);
        let mut counts = vec![0u32; 1000];
        for _ in 0..20_000 {
            counts[p.pick().1 as usize] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let w = Workload::new(0.5, 50, KeyDist::Uniform, 1);
        let (mut a, mut b) = (w.picker(9, 1), w.picker(9, 1));
        for _ in 0..100 {
            assert_eq!(a.pick(), b.pick());
        }
        assert_eq!(w.value.len(), 1);
    }
}
