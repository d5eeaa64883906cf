#!/usr/bin/env bash
# Throughput of one node (both fsync modes) and of a 3-node cluster (N=3, R=2, W=2,
# load sent to node 1), as ratios to a trivial in-memory axum server measured in the same
# run with the same load tool (wrk, 2 threads, 32 connections, 100-byte values).
#   scripts/bench-local.sh [SECONDS_PER_STEP]
# Issue 6 replaces this with `ringkv bench` and scripts/bench-compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q --bin ringkv --example bench_reference
work=$(mktemp -d)
pids=()
cluster() { RINGKV_CLUSTER_DIR="$work/cluster" RINGKV_BASE_PORT=${BENCH_BASE_PORT:-27000} RINGKV_BIN=target/release/ringkv scripts/cluster.sh "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  cluster stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD, waits for its "ready http=ADDR" line, sets $addr.
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*ready http=\([^ ]*\).*/\1/p' "$work/$name.out")
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "$name did not start" >&2; cat "$work/$name.err" >&2; exit 1
}

# Stops the server started last, so each target has the machine to itself.
stop_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }

rps() { # MODE ADDR -> requests/s
  wrk -t2 -c32 -d"${secs}s" -s scripts/wrk-kv.lua "http://$2" -- "$1" 10000 \
    | awk '/Requests\/sec/ {print $2}'
}

declare -A put get
start reference target/release/examples/bench_reference 127.0.0.1:0
put[reference]=$(rps put "$addr"); get[reference]=$(rps get "$addr")
stop_last
for mode in always periodic; do
  start "ringkv-$mode" target/release/ringkv serve --http-addr 127.0.0.1:0 \
    --rpc-addr 127.0.0.1:0 --gossip-addr 127.0.0.1:0 \
    --data-dir "$work/data-$mode" --fsync "$mode" --log warn
  put[$mode]=$(rps put "$addr"); get[$mode]=$(rps get "$addr")
  stop_last
done

cluster start 3 -- --log warn >/dev/null
addr=127.0.0.1:$(( ${BENCH_BASE_PORT:-27000} + 10 ))
put[cluster]=$(rps put "$addr"); get[cluster]=$(rps get "$addr")
cluster stop >/dev/null

printf '| target | PUT ops/s | GET ops/s | PUT ÷ reference | GET ÷ reference |\n|---|---|---|---|---|\n'
for t in reference always periodic cluster; do
  case $t in
    reference) label="reference (in-memory axum)" ;;
    cluster) label="ringkv 3 nodes, N=3 R=2 W=2, --fsync always" ;;
    *) label="ringkv 1 node, --fsync $t" ;;
  esac
  printf '| %s | %.0f | %.0f | %.2f | %.2f |\n' "$label" "${put[$t]}" "${get[$t]}" \
    "$(echo "${put[$t]} / ${put[reference]}" | bc -l)" "$(echo "${get[$t]} / ${get[reference]}" | bc -l)"
done
