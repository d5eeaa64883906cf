#!/usr/bin/env bash
# How cost grows: ringkv with 1 node and 3 nodes, and the reference beside it, while one
# thing varies at a time from a base of 32 clients, 100-byte values, 10k keys, 50/50
# reads and writes, fsync always:
#   concurrency  1, 8, 32, 128, 512 clients
#   value size   100 B, 4 KiB, 64 KiB
#   key count    10k, and 1M preloaded
#   cluster size 1, 3 and 5 nodes on loopback (N=3 R=2 W=2 from 3 nodes)
#
#   scripts/bench-compare.sh --scaling      (runs this script)
#
# Each point is one run of BENCH_SECS (4) per target, loaded by `ringkv bench` with the
# same flags for every target; every figure is also given as a ratio to the reference
# measured at the same point of the same run. Writes target/bench/scaling.md and
# target/bench/scaling.svg (the raw runs go to target/bench/scaling/). Stops every
# process it started, whatever happens. Settings (environment): BENCH_SECS,
# BENCH_BASE_PORT (29000), BENCH_BIG_KEYS (1000000), RINGKV_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${BENCH_SECS:-4}
base=${BENCH_BASE_PORT:-29000}
big_keys=${BENCH_BIG_KEYS:-1000000}
if [ -n "${RINGKV_BIN:-}" ]; then
  cargo build --release -q --example bench_reference
  bin=$RINGKV_BIN
else
  cargo build --release -q --bin ringkv --example bench_reference
  bin=target/release/ringkv
fi
cargo build --release -q -p ringkv-tools
tools=target/release/ringkv-tools

out=target/bench
runs=$out/scaling
work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-scaling.XXXXXX")
mkdir -p "$out"
rm -rf "$runs" && mkdir -p "$runs"
pids=()
cluster() {
  local n=$1; shift
  RINGKV_CLUSTER_DIR="$work/ringkv-$n" RINGKV_BASE_PORT=$((base + 100 * n)) RINGKV_BIN=$bin \
    scripts/cluster.sh "$@"
}
cleanup() {
  local p n
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in 1 3 5; do cluster "$n" stop >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A urls cpu extra
spawn_reference() {
  target/release/examples/bench_reference "127.0.0.1:$((base + 1))" >"$work/reference.log" 2>&1 &
  pids+=("$!"); cpu[reference]=$!
  urls[reference]=http://127.0.0.1:$((base + 1))
  for _ in $(seq 150); do
    curl -s -o /dev/null "${urls[reference]}/kv/probe" && return 0
    sleep 0.2
  done
  echo "bench-scaling: the reference did not start" >&2; exit 1
}
# start_ringkv N: an N-node cluster (a fresh one: every sweep starts from empty stores).
start_ringkv() {
  local n=$1 flags=(--fsync always --log warn) i u=""
  [ "$n" -ge 3 ] && flags+=(--n 3 --r 2 --w 2)
  cluster "$n" start "$n" -- "${flags[@]}" >/dev/null
  for i in $(seq 1 "$n"); do u+="http://127.0.0.1:$((base + 100 * n + 10 * i)),"; done
  urls[ringkv-$n]=${u%,}
  cpu[ringkv-$n]=$(cat "$work/ringkv-$n"/node*.pid | paste -sd,)
  extra[ringkv-$n]=$([ "$n" -ge 3 ] && echo "--r 2 --w 2" || true)
}
stop_ringkv() {
  cluster "$1" stop >/dev/null 2>&1 || true
  rm -rf "$work/ringkv-$1"
}

# run TARGET DIMENSION VALUE CONCURRENCY VALUE_SIZE KEYS [--preload]
run() {
  local t=$1 dim=$2 val=$3 conc=$4 vsize=$5 keys=$6; shift 6
  local loader_target=ringkv
  [ "$t" = reference ] && loader_target=reference
  # shellcheck disable=SC2086 # extra holds separate flags
  "$bin" bench --target "$loader_target" --url "${urls[$t]}" --label "$t" \
    --concurrency "$conc" --duration "${secs}s" --read-ratio 0.5 \
    --value-size "$vsize" --keys "$keys" --pids "${cpu[$t]}" --seed 1 \
    ${extra[$t]:-} "$@" --json >"$runs/$dim.$val.$t.json" \
    || { echo "bench-scaling: $t $dim=$val failed" >&2; exit 1; }
  echo "  $dim=$val $t done" >&2
}

started=$SECONDS
spawn_reference
for n in 1 3; do
  start_ringkv "$n"
  for t in reference "ringkv-$n"; do
    [ "$t" = reference ] && [ "$n" -ne 1 ] && continue
    # The store is loaded once for the concurrency sweep, and again for every value size.
    run "$t" concurrency 1 1 100 10000 --preload
    for c in 8 32 128 512; do run "$t" concurrency "$c" "$c" 100 10000; done
    for v in 100 4096 65536; do run "$t" value_size "$v" 32 "$v" 10000 --preload; done
    run "$t" keys 10000 32 100 10000 --preload
  done
  # Cluster size: the base point, on a cluster that has only seen that load.
  stop_ringkv "$n"; start_ringkv "$n"
  run "ringkv-$n" cluster_size "$n" 32 100 10000 --preload
  stop_ringkv "$n"
done
run reference cluster_size 1 32 100 10000 --preload
start_ringkv 5
run ringkv-5 cluster_size 5 32 100 10000 --preload
stop_ringkv 5
# 1M keys last: the preload dominates the run (about a minute per target).
for n in 1 3; do
  start_ringkv "$n"
  run "ringkv-$n" keys "$big_keys" 32 100 "$big_keys" --preload
  stop_ringkv "$n"
done
run reference keys "$big_keys" 32 100 "$big_keys" --preload
echo "all points done ($((SECONDS - started)) s)" >&2

settings="One run of ${secs} s per target and point, 50/50 reads and writes, fsync always, \
on $(nproc) cores shared by the load generator and the servers. Produced by \
\`scripts/bench-compare.sh --scaling\` on $(date -u +%Y-%m-%d)."
"$tools" bench-scaling "$runs" --settings "$settings" --svg "$out/scaling.svg" | tee "$out/scaling.md"
echo "wrote $out/scaling.md and $out/scaling.svg" >&2
