#!/usr/bin/env bash
# ringkv side by side with the HTTP ceiling of this machine, etcd and Redis, all loaded by
# the same load generator with the same client settings, on loopback: `ringkv bench` for
# ringkv and the reference, `ringkv-tools bench` (the same code, with the etcd and Redis
# adapters the product does not carry) for the others.
#
#   scripts/bench-compare.sh [--quick]
#   scripts/bench-compare.sh --scaling     how cost grows (scripts/bench-scaling.sh)
#
# Every target runs at once (idle ones cost next to nothing) and the measurements go in
# alternating rounds (every target, then every target again), so that a busy moment of a
# shared machine falls on all of them alike. Each figure is the median over the rounds;
# each ratio is against the reference measured in the same run.
#
# Targets: the reference (examples/bench_reference.rs); ringkv 1 node with --fsync always
# and periodic; ringkv 3 nodes (N=3 R=2 W=2, fsync always); etcd 1 member and 3 members;
# Redis with appendfsync always and with no persistence. Workloads: PUT only, GET only
# (keys preloaded), 50/50.
#
# Writes target/bench/compare.md (and the raw runs to target/bench/runs/). Stops every
# process it started, whatever happens. Installs etcd-server and redis-server from Debian
# when they are missing. --quick finishes within 3 minutes once the binaries are built.
#
# Settings (environment): BENCH_SECS per run, BENCH_ROUNDS, BENCH_CONCURRENCY (32),
# BENCH_VALUE_SIZE (100), BENCH_KEYS, BENCH_BASE_PORT (28000); BENCH_TARGETS, a subset of
# the labels (e.g. "reference ringkv-3"), for before/after runs of one change;
# RINGKV_BIN, a ringkv binary to measure instead of building this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  --scaling) exec scripts/bench-scaling.sh ;;
  "") ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
if [ $quick -eq 1 ]; then
  secs=${BENCH_SECS:-2}; rounds=${BENCH_ROUNDS:-2}; keys=${BENCH_KEYS:-1000}
else
  secs=${BENCH_SECS:-8}; rounds=${BENCH_ROUNDS:-3}; keys=${BENCH_KEYS:-10000}
fi
conc=${BENCH_CONCURRENCY:-32}
vsize=${BENCH_VALUE_SIZE:-100}
base=${BENCH_BASE_PORT:-28000}

install_missing() {
  local pkgs=()
  command -v etcd >/dev/null || pkgs+=(etcd-server)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v redis-cli >/dev/null || pkgs+=(redis-tools)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing ${pkgs[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${pkgs[@]}" >/dev/null
}
install_missing
if [ -n "${RINGKV_BIN:-}" ]; then
  cargo build --release -q --example bench_reference
  bin=$RINGKV_BIN
else
  cargo build --release -q --bin ringkv --example bench_reference
  bin=target/release/ringkv
fi
cargo build --release -q -p ringkv-tools
tools=target/release/ringkv-tools
all=(reference ringkv-1-always ringkv-1-periodic ringkv-3 etcd-1 etcd-3 redis-always redis-none)
read -r -a order <<<"${BENCH_TARGETS:-${all[*]}}"
for t in "${order[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "bench-compare: unknown target $t (one of: ${all[*]})" >&2; exit 2; }
done
wanted() { [[ " ${order[*]} " == *" $1 "* ]]; }

out=target/bench
work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-bench.XXXXXX")
runs=$out/runs
mkdir -p "$out"
rm -rf "$runs" && mkdir -p "$runs"
pids=()
cluster() {
  RINGKV_CLUSTER_DIR="$work/ringkv-3" RINGKV_BASE_PORT=$((base + 100)) RINGKV_BIN=$bin \
    scripts/cluster.sh "$@"
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  cluster stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn NAME CMD...: starts CMD in the background, logging to $work/NAME.log; sets $pid.
spawn() {
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

# wait_for WHAT CMD...: until CMD succeeds, for at most 30 s.
wait_for() {
  local what=$1; shift
  for _ in $(seq 150); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "bench-compare: $what did not start; its log:" >&2
  cat "$work/$what.log" >&2 2>/dev/null || true
  exit 1
}

declare -A urls cpu kind extra
port() { echo $((base + $1)); }

# The reference (always: every ratio is against it).
[[ " ${order[*]} " == *" reference "* ]] || order=(reference "${order[@]}")
spawn reference target/release/examples/bench_reference "127.0.0.1:$(port 1)"
urls[reference]=http://127.0.0.1:$(port 1); cpu[reference]=$pid; kind[reference]=reference
wait_for reference curl -s -o /dev/null "${urls[reference]}/kv/probe"

# ringkv, one node per fsync mode.
for mode in always periodic; do
  wanted "ringkv-1-$mode" || continue
  p=$([ $mode = always ] && port 10 || port 20)
  spawn "ringkv-1-$mode" "$bin" serve --data-dir "$work/ringkv-1-$mode" --fsync "$mode" \
    --http-addr "127.0.0.1:$p" --rpc-addr "127.0.0.1:$((p + 1))" \
    --gossip-addr "127.0.0.1:$((p + 2))" --log warn
  urls[ringkv-1-$mode]=http://127.0.0.1:$p; cpu[ringkv-1-$mode]=$pid; kind[ringkv-1-$mode]=ringkv
  wait_for "ringkv-1-$mode" curl -sf "http://127.0.0.1:$p/ready"
done

# ringkv, 3 nodes.
if wanted ringkv-3; then
  cluster start 3 -- --n 3 --r 2 --w 2 --fsync always --log warn >/dev/null
  urls[ringkv-3]=$(for i in 1 2 3; do printf 'http://127.0.0.1:%s,' $((base + 100 + 10 * i)); done)
  urls[ringkv-3]=${urls[ringkv-3]%,}
  cpu[ringkv-3]=$(cat "$work"/ringkv-3/node*.pid | paste -sd,)
  kind[ringkv-3]=ringkv; extra[ringkv-3]="--r 2 --w 2"
fi

# etcd: NAME COUNT FIRST_PORT. Client port 2i, peer port 2i+1 from FIRST_PORT.
etcd_cluster() {
  local name=$1 count=$2 first=$3 initial="" i cu="" pu
  for i in $(seq 1 "$count"); do
    initial+="$name-$i=http://127.0.0.1:$(port $((first + 2 * i + 1))),"
  done
  for i in $(seq 1 "$count"); do
    local c; c=http://127.0.0.1:$(port $((first + 2 * i)))
    pu=http://127.0.0.1:$(port $((first + 2 * i + 1)))
    spawn "$name-$i" etcd --name "$name-$i" --data-dir "$work/$name-$i" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" \
      --initial-cluster "${initial%,}" --initial-cluster-state new \
      --initial-cluster-token "$name" --log-level error
    cu+="$c,"; cpu[$name]+="${cpu[$name]:+,}$pid"
  done
  urls[$name]=${cu%,}; kind[$name]=etcd
  for i in $(seq 1 "$count"); do
    wait_for "$name-$i" curl -sf "http://127.0.0.1:$(port $((first + 2 * i)))/health"
  done
}
if wanted etcd-1; then etcd_cluster etcd-1 1 200; fi
if wanted etcd-3; then etcd_cluster etcd-3 3 300; fi

# Redis: with an fsync on every write, and with no persistence at all.
for mode in always none; do
  wanted "redis-$mode" || continue
  p=$([ $mode = always ] && port 400 || port 410)
  mkdir -p "$work/redis-$mode"
  if [ $mode = always ]; then persist=(--appendonly yes --appendfsync always); else persist=(--appendonly no); fi
  spawn "redis-$mode" redis-server --port "$p" --bind 127.0.0.1 --dir "$work/redis-$mode" \
    --save '' "${persist[@]}" --daemonize no
  urls[redis-$mode]=redis://127.0.0.1:$p; cpu[redis-$mode]=$pid; kind[redis-$mode]=redis
  wait_for "redis-$mode" redis-cli -p "$p" ping
done

workloads=(put get mixed)
ratio_of() { case $1 in put) echo 0 ;; get) echo 1 ;; mixed) echo 0.5 ;; esac; }

started=$SECONDS
for round in $(seq 1 "$rounds"); do
  for t in "${order[@]}"; do
    for wl in "${workloads[@]}"; do
      pre=()
      [ "$round" -eq 1 ] && [ "$wl" = get ] && pre=(--preload)
      case ${kind[$t]} in ringkv|reference) loader=$bin ;; *) loader=$tools ;; esac
      # shellcheck disable=SC2086 # extra holds separate flags
      "$loader" bench --target "${kind[$t]}" --url "${urls[$t]}" --label "$t" \
        --concurrency "$conc" --duration "${secs}s" --read-ratio "$(ratio_of "$wl")" \
        --value-size "$vsize" --keys "$keys" --pids "${cpu[$t]}" --seed "$round" \
        ${extra[$t]:-} "${pre[@]}" --json >"$runs/$t.$wl.$round.json" \
        || { echo "bench-compare: $t $wl round $round failed" >&2; exit 1; }
    done
  done
  echo "round $round of $rounds done ($((SECONDS - started)) s)" >&2
done

settings="$rounds alternating rounds of ${secs} s per target and workload; $conc concurrent \
clients, ${vsize}-byte values, $keys keys (uniform), on $(nproc) cores shared by the load \
generator and the servers. Produced by \`scripts/bench-compare.sh$([ $quick -eq 1 ] && echo ' --quick')\` \
on $(date -u +%Y-%m-%d)."
"$tools" bench-report "$runs" --settings "$settings" | tee "$out/compare.md"
echo "wrote $out/compare.md" >&2
