//! ringkv-fuzz: fuzz targets for every decoder of ringkv, as plain functions over `&[u8]`.
//!
//! Each target decodes what a peer, a client or the disk could hand ringkv, and checks more
//! than "no panic": that what decodes re-encodes to the same thing, that the laws of what
//! it decoded hold, that an error is the error it should be, and that no input makes the
//! decoder allocate more than its length justifies ([`alloc`]). A failed check panics,
//! which AFL++ records as a crash.
//!
//! Two engines run the same functions:
//! - AFL++ (coverage-guided), through the `ringkv-afl` binary that `cargo afl build
//!   --features afl` builds (`scripts/fuzz.sh`);
//! - [`engine`] (not coverage-guided: seeded random mutation of the seed corpus), in the
//!   `#[test]`s of `tests/targets.rs`, so that `cargo nextest run --workspace` runs them.
//!
//! Modules, one line each:
//! - [`alloc`]: the counting global allocator, and the bounded-allocation check.
//! - [`engine`]: the seed corpus and the seeded mutator the tests run targets with.
//! - [`dvv`]: well-formedness of a sibling set, the fuzz crate's own (ringkv decodes
//!   sets without checking it).
//! - [`targets`]: the targets, one per decoder.

pub mod alloc;
pub mod dvv;
pub mod engine;
pub mod targets;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// A fuzz target: its name (the directory of its seed corpus, `corpus/<name>/`) and the
/// function that runs one input.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target. `scripts/fuzz.sh` and `ringkv-afl` take a name from this list.
pub const TARGETS: &[Target] = &[
    Target {
        name: "rpc_frame",
        run: targets::frame::run,
    },
    Target {
        name: "causality_token",
        run: targets::token::run,
    },
    Target {
        name: "dvv",
        run: targets::dvv::run,
    },
    Target {
        name: "http_key",
        run: targets::http_key::run,
    },
    Target {
        name: "http_batch",
        run: targets::batch::run,
    },
    Target {
        name: "record",
        run: targets::record::run,
    },
    Target {
        name: "rpc_handshake",
        run: targets::handshake::run,
    },
];

/// The target of that name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}
