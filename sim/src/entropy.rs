//! Seeded entropy for the simulation thread.
//!
//! chitchat seeds its RNG from the OS, std seeds every `HashMap` from the OS, and a node
//! draws its id with `rand::random`. All of them end in libc's `getrandom`. The sim binary
//! defines that symbol itself (`src/main.rs`) and routes it here: on a thread that set a
//! seed, bytes come from a PRNG seeded by the run's seed; elsewhere the real syscall
//! answers. The product never links this.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Makes this thread's entropy a function of `seed` until [`clear`].
pub fn seed_thread(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed ^ 0x5eed_0fe4_709e)));
}

pub fn clear() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

/// Fills `buf` from the thread's seeded PRNG; false when the thread has none (or is being
/// torn down), and the caller must ask the OS.
pub fn fill(buf: &mut [u8]) -> bool {
    SEEDED
        .try_with(|s| match s.try_borrow_mut() {
            Ok(mut rng) => match rng.as_mut() {
                Some(rng) => {
                    rng.fill_bytes(buf);
                    true
                }
                None => false,
            },
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// Draws from every entropy source a node uses, on a seeded thread: two processes must
/// print the same (`ringkv-sim entropy-check`; the determinism test runs it).
pub fn sample(seed: u64) -> String {
    std::thread::spawn(move || {
        seed_thread(seed);
        use std::hash::BuildHasher;
        let std_hash = std::collections::hash_map::RandomState::new().hash_one(42u64);
        let mut linked = [0u8; 8];
        // SAFETY: an 8-byte buffer. This call binds to the sim binary's own symbol.
        unsafe { libc::getrandom(linked.as_mut_ptr().cast(), 8, 0) };
        // What crates that look the symbol up at run time get (getrandom 0.3+, chitchat's).
        let mut looked_up = [0u8; 8];
        // SAFETY: dlsym returns libc's or the binary's getrandom, both with this signature.
        unsafe {
            let f = libc::dlsym(libc::RTLD_DEFAULT, c"getrandom".as_ptr());
            if !f.is_null() {
                let f: unsafe extern "C" fn(*mut u8, usize, u32) -> isize = std::mem::transmute(f);
                f(looked_up.as_mut_ptr(), 8, 0);
            }
        }
        let out = format!(
            "linked={:016x} dlsym={:016x} std-hash={std_hash:016x}",
            u64::from_le_bytes(linked),
            u64::from_le_bytes(looked_up)
        );
        clear();
        out
    })
    .join()
    .expect("entropy sample thread")
}
