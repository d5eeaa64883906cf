#!/usr/bin/env bash
# Larger than memory: one node of the registry-free image under `docker run --memory`,
# holding several times its memory limit in data, must serve it all without being
# OOM-killed.
#
#   scripts/docker-memory.sh [--memory 128m] [--mib 384] [--value-size 65536] [--keep]
#
# Starts ringkv:local (built by scripts/docker-build.sh when missing; RINGKV_BIN passes
# through to it) as container "ringkv-memory" with --memory M (no swap), HTTP on
# 127.0.0.1:$RINGKV_MEMORY_PORT (default 24190), --fsync $RINGKV_MEMORY_FSYNC (default
# periodic), data in a fresh named volume. Preloads
# MIB MiB of VALUE_SIZE-byte values with `ringkv bench --preload` (8 clients, keys
# bench-00000000…), then restarts the container (same volume) and checks:
#   1. every key reads back: GET answers 200 with VALUE_SIZE bytes, for every key
#   2. HEAD answers 200 for every key
#   3. a full listing pass (GET /kv?prefix=bench-&limit=1000, following next_cursor)
#      returns every key exactly once
#   4. the container was never OOM-killed (State.OOMKilled, RestartCount, still running)
# It prints the memory figures (the process's RSS, the cgroup's usage and peak when the
# kernel keeps one, `docker stats`), GET throughput (`ringkv bench --read-ratio 1`, 10 s,
# 8 clients, after the restart) and the listing pass's time, and exits non-zero if a
# check fails. Every step is bounded in time (curl -m, bench --duration/--timeout); the
# container and its volume are removed on exit unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."

memory=128m mib=384 value_size=65536 keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --memory) memory=${2:?--memory needs a size (128m)}; shift 2 ;;
    --mib) mib=${2:?--mib needs a number}; shift 2 ;;
    --value-size) value_size=${2:?--value-size needs bytes}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "docker-memory.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
keys=$((mib * 1024 * 1024 / value_size))
port=${RINGKV_MEMORY_PORT:-24190}
# What is checked is memory, not fsync latency: on a shared disk, `always` makes the
# preload take minutes (and writes time out). The restart is a clean stop, which syncs.
fsync=${RINGKV_MEMORY_FSYNC:-periodic}
url=http://127.0.0.1:$port
name=ringkv-memory
volume=ringkv-memory-data
work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-memory.XXXXXX")
start=$SECONDS

log() { echo "memory: $*" >&2; }
fail() { log "FAIL: $*"; failed=1; }
failed=0

cleanup() {
  if [ "$keep" -eq 0 ]; then
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker volume rm -f "$volume" >/dev/null 2>&1 || true
    rm -rf "$work"
  else
    log "kept container $name, volume $volume and $work"
  fi
}
trap cleanup EXIT

# wait_ready SECS: until /ready answers 200, or status 1.
wait_ready() {
  local deadline=$((SECONDS + $1))
  until curl -sf -m 2 -o /dev/null "$url/ready"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# memory_figures WHEN: the node's RSS and its cgroup's usage (and peak where kept).
memory_figures() {
  local pid cid rss cg
  pid=$(docker inspect -f '{{.State.Pid}}' "$name")
  cid=$(docker inspect -f '{{.Id}}' "$name")
  rss=$(awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo "?")
  log "$1: RSS $rss; docker stats: $(docker stats --no-stream --format '{{.MemUsage}}' "$name")"
  for cg in "/sys/fs/cgroup/system.slice/docker-$cid.scope" "/sys/fs/cgroup/docker/$cid"; do
    if [ -r "$cg/memory.peak" ]; then
      log "$1: cgroup peak $(awk '{ printf "%.1f MiB", $1 / 1048576 }' "$cg/memory.peak")"
      break
    fi
  done
}

# oom_check WHEN: the container is running, was not OOM-killed and did not restart.
oom_check() {
  local state
  state=$(docker inspect -f '{{.State.Status}} oom={{.State.OOMKilled}} restarts={{.RestartCount}}' "$name")
  log "$1: container $state"
  [ "$state" = "running oom=false restarts=0" ] || fail "$1: container is $state"
}

# key_urls [head]: a curl config naming every key's URL, its output thrown away.
key_urls() {
  awk -v u="$url" -v n="$keys" 'BEGIN { for (i = 0; i < n; i++) printf "url = \"%s/kv/bench-%08d\"\noutput = \"/dev/null\"\n", u, i }'
}

if [ -n "${RINGKV_BIN:-}" ]; then
  bin=$RINGKV_BIN
else
  cargo build --release --quiet --bin ringkv
  bin=target/release/ringkv
fi
docker image inspect ringkv:local >/dev/null 2>&1 || RINGKV_BIN=$bin scripts/docker-build.sh

docker rm -f "$name" >/dev/null 2>&1 || true
docker volume rm -f "$volume" >/dev/null 2>&1 || true
docker volume create "$volume" >/dev/null
log "starting $name with --memory $memory; loading $keys values of $value_size bytes ($mib MiB)"
docker run -d --name "$name" --memory "$memory" --memory-swap "$memory" \
  -e RINGKV_ADVERTISE_HOST=127.0.0.1 -e RINGKV_FSYNC="$fsync" -e RINGKV_REQUEST_TIMEOUT=30s -p "127.0.0.1:$port:7070" -v "$volume:/data" \
  ringkv:local >/dev/null
wait_ready 60 || { docker logs "$name" 2>&1 | tail -20 >&2; fail "node not ready"; exit 1; }
docker logs "$name" 2>&1 | grep -m1 -i 'cache' >&2 || true

# Writes only: --ops 1 --read-ratio 1 makes the measured phase one GET after the preload.
"$bin" bench --url "$url" --concurrency 8 --keys "$keys" --value-size "$value_size" \
  --preload --read-ratio 1 --ops 1 --duration 10s --timeout 30s --json >"$work/preload.json" ||
  { fail "preload failed"; exit 1; }
log "preloaded $(jq .preloaded "$work/preload.json") keys in $((SECONDS - start)) s"
memory_figures "after the preload"
oom_check "after the preload"

docker restart -t 30 "$name" >/dev/null
wait_ready 180 || { docker logs "$name" 2>&1 | tail -20 >&2; fail "node not ready after restart"; exit 1; }
log "restarted"

# 1. Every key reads back, whole.
t0=$SECONDS
key_urls | curl -s --no-progress-meter -m 600 --parallel --parallel-max 8 -K - -w '%{http_code} %{size_download}\n' \
  >"$work/get.txt" || true
good=$(grep -c "^200 $value_size\$" "$work/get.txt" || true)
log "GET: $good of $keys keys read back whole ($((SECONDS - t0)) s)"
[ "$good" -eq "$keys" ] || fail "GET: $((keys - good)) keys did not read back: $(grep -v "^200 $value_size\$" "$work/get.txt" | sort | uniq -c | head -3 | tr -s '\n ' ' ')"
memory_figures "after GET of every key"

# 2. HEAD over every key.
t0=$SECONDS
key_urls | curl -s --no-progress-meter -m 600 --parallel --parallel-max 8 -I -K - -w '%{http_code}\n' \
  >"$work/head.txt" || true
good=$(grep -c '^200$' "$work/head.txt" || true)
log "HEAD: $good of $keys keys answered 200 ($((SECONDS - t0)) s)"
[ "$good" -eq "$keys" ] || fail "HEAD: $((keys - good)) keys did not answer 200"
memory_figures "after HEAD of every key"

# 3. A full listing pass; bounded: a page holds at least one key.
t0=$SECONDS
cursor='' pages=0
: >"$work/listed.txt"
while [ "$pages" -le "$keys" ]; do
  pages=$((pages + 1))
  if ! curl -sf -m 60 -G "$url/kv" --data-urlencode prefix=bench- --data-urlencode limit=1000 \
    ${cursor:+--data-urlencode "cursor=$cursor"} -o "$work/page.json"; then
    fail "listing: page $pages failed"; break
  fi
  jq -r '.items[].key' "$work/page.json" >>"$work/listed.txt"
  cursor=$(jq -r '.next_cursor // empty' "$work/page.json")
  [ -n "$cursor" ] || break
done
listed=$(wc -l <"$work/listed.txt")
distinct=$(sort -u "$work/listed.txt" | wc -l)
log "listing: $listed keys ($distinct distinct) in $pages pages, $((SECONDS - t0)) s"
if [ "$listed" -ne "$keys" ] || [ "$distinct" -ne "$keys" ]; then
  fail "listing: $listed keys, $distinct distinct, want $keys"
fi
memory_figures "after the listing pass"

# GET throughput over the stored keys, after the restart (misses must be 0).
"$bin" bench --url "$url" --concurrency 8 --keys "$keys" --value-size "$value_size" \
  --read-ratio 1 --duration 10s --timeout 30s --json >"$work/get.json" || fail "GET bench failed"
log "GET throughput: $(jq -r '"\(.get.ops_per_sec | floor) ops/s, p99 \(.get.p99_us) us, misses \(.misses), errors \(.errors_total)"' "$work/get.json")"
[ "$(jq '.misses + .errors_total' "$work/get.json")" -eq 0 ] || fail "GET bench saw misses or errors"
memory_figures "after the GET bench"

# 4. Never OOM-killed.
oom_check "at the end"
log "done in $((SECONDS - start)) s"
if [ "$failed" -ne 0 ]; then
  docker logs "$name" 2>&1 | tail -20 >&2
  exit 1
fi
log "PASS: $keys keys ($mib MiB) under --memory $memory"
