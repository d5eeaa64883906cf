#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (crate ringkv-fuzz) under AFL++, coverage-guided, for
# SECONDS each (default 60), from its seed corpus fuzz/corpus/<target>/. Exits non-zero if
# any target crashed, printing the path of each crashing input (replay one with
# `target/afl/release/ringkv-afl TARGET < PATH`, then pin it in fuzz/tests/regressions.rs).
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment: FUZZ_TARGETS (space-separated names; default every target, from
# `ringkv-afl --list`), FUZZ_OUT (AFL++'s output, default target/fuzz-out; each run starts
# afresh), FUZZ_TARGET_DIR (the instrumented build, default target/afl, apart from the
# normal build so that neither invalidates the other).
#
# Installs cargo-afl if it is missing: `cargo install` builds AFL++ from the source the crate
# ships (needs make and a C compiler), so no other package is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (SECONDS per target, a whole number >= 1)" >&2
  exit 2
fi

if ! cargo afl --version >/dev/null 2>&1; then
  cargo install --locked cargo-afl
fi

export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-target/afl}
# No debug info in the instrumented build (the release profile keeps line tables for perf):
# it is the longest build of CI, and a crash replays from its input, not from a core.
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-0}
cargo afl build --release -p ringkv-fuzz --features afl --bin ringkv-afl
bin=$CARGO_TARGET_DIR/release/ringkv-afl
out=${FUZZ_OUT:-target/fuzz-out}
targets=${FUZZ_TARGETS:-$("$bin" --list)}

# Not a terminal; the container's core_pattern may pipe cores elsewhere (the crash is still
# seen: the target aborts); CPUs are shared, so no pinning and no frequency check.
export AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1

stat() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"; }

crashed=0
for t in $targets; do
  if [ ! -d "fuzz/corpus/$t" ]; then
    echo "fuzz: target $t has no seed corpus fuzz/corpus/$t" >&2
    exit 2
  fi
  rm -rf "${out:?}/$t"
  mkdir -p "$out/$t"
  echo "fuzz: $t for ${seconds}s"
  # -V: stop after SECONDS; -G: the input cap the tests' mutator keeps (64 KiB);
  # -t: a generous per-input time limit on a shared machine.
  if ! cargo afl fuzz -V "$seconds" -G 65536 -t 2000 -i "fuzz/corpus/$t" -o "$out/$t" \
    -- "$bin" "$t" >"$out/$t/afl.log" 2>&1; then
    echo "fuzz: afl-fuzz failed on $t; the end of its log:" >&2
    tail -n 30 "$out/$t/afl.log" >&2
    exit 1
  fi
  stats=$out/$t/default/fuzzer_stats
  echo "fuzz: $t: $(stat "$stats" execs_done) execs, $(stat "$stats" execs_per_sec) execs/s," \
    "$(stat "$stats" corpus_count) paths, $(stat "$stats" saved_crashes) crashes," \
    "$(stat "$stats" saved_hangs) hangs, edges $(stat "$stats" edges_found)/$(stat "$stats" total_edges)"
  for f in "$out/$t"/default/crashes/id:*; do
    [ -e "$f" ] || continue
    echo "fuzz: CRASH in $t: $f"
    crashed=1
  done
  for f in "$out/$t"/default/hangs/id:*; do
    [ -e "$f" ] || continue
    echo "fuzz: hang (over 2 s) in $t: $f"
  done
done

if [ "$crashed" -ne 0 ]; then
  echo "fuzz: crashes found (above); replay: $bin TARGET < PATH" >&2
  exit 1
fi
echo "fuzz: no crashes"
