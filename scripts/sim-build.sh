#!/usr/bin/env bash
# Builds ringkv-sim the only way that replays seeds: from sim/, with sim/.cargo/config.toml
# (--cfg tokio_unstable, its own target dir). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/../sim"
env -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo build --release --quiet --bin ringkv-sim >&2
echo "$(cd .. && pwd)/target/sim/release/ringkv-sim"
