#!/usr/bin/env bash
# The dashboard (GET /) in a real browser: headless Chromium against a 3-node cluster.
#
#   scripts/dashboard-test.sh
#
# Starts 3 nodes of the ringkv binary on loopback (scripts/cluster.sh; node 1 is the seed
# of the others), loads node 1's page in headless Chromium and checks the DOM it renders
# (the page's script has run and fetched the cluster's JSON):
#   - 3 member rows (tr.member), all data-live="true";
#   - one ring hash (data-ring-hashes="1") and the red #ring-banner hidden.
# Saves a screenshot of the page, with a few seconds of `ringkv bench` load on its
# charts, as target/dashboard.png. Then SIGKILLs node 3 and reloads the page until node
# 3's row says data-live="false", at most DASH_DEAD_SECS. Exits non-zero, saying which
# check failed, otherwise; every process it started is stopped on exit, and on failure
# the work dir (node logs, the last DOM, Chromium's log) is kept and named.
#
# Installs Debian's `chromium` with apt-get when no Chromium is on the PATH.
#
# Settings (environment):
#   RINGKV_BIN        the ringkv binary (default target/release/ringkv, built first)
#   CHROMIUM          the browser (default: chromium, chromium-browser or google-chrome)
#   DASH_DEAD_SECS    how long node 3's row may take to turn dead (default 60)
#   DASH_SCREENSHOT   where the screenshot goes (default target/dashboard.png)
set -euo pipefail
cd "$(dirname "$0")/.."

dead_secs=${DASH_DEAD_SECS:-60}
screenshot=${DASH_SCREENSHOT:-target/dashboard.png}
started=$SECONDS

log() { echo "dashboard-test: [$((SECONDS - started))s] $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

if [ -z "${RINGKV_BIN:-}" ]; then
  cargo build --release --quiet --bin ringkv
  RINGKV_BIN=target/release/ringkv
fi
bin=$(realpath "$RINGKV_BIN")
[ -x "$bin" ] || fail "no ringkv binary at $RINGKV_BIN"

chrome=${CHROMIUM:-}
if [ -z "$chrome" ]; then
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then chrome=$c; break; fi
  done
fi
if [ -z "$chrome" ]; then
  log "installing Debian's chromium"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  chrome=chromium
fi
command -v "$chrome" >/dev/null 2>&1 || fail "no browser: $chrome is not on the PATH"

# A free base port: node I listens on BASE+10*I (HTTP), +1 (RPC), +2 (gossip, UDP).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=
for _ in $(seq 20); do
  candidate=$((20000 + (RANDOM % 400) * 100))
  ok=1
  for i in 1 2 3; do
    for p in $((candidate + 10 * i)) $((candidate + 10 * i + 1)) $((candidate + 10 * i + 2)); do
      port_free "$p" || ok=0
    done
  done
  if [ "$ok" -eq 1 ]; then base=$candidate; break; fi
done
[ -n "$base" ] || fail "found no free range of loopback ports in 20 tries"

work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-dashboard.XXXXXX")
export RINGKV_CLUSTER_DIR=$work/cluster RINGKV_BASE_PORT=$base RINGKV_BIN=$bin
url() { echo "http://127.0.0.1:$((base + 10 * $1))"; }
bench_pid=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true; fi
  scripts/cluster.sh stop >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    log "kept $work: node logs cluster/node*.log, the last DOM dom.html, chromium.log"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

# One headless load of a URL. The virtual time budget lets the page's script run its
# first refreshes (virtual time waits while its fetches are on the wire); `timeout`
# bounds a browser that hangs.
browse() {
  timeout 60 "$chrome" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --no-default-browser-check --disable-extensions --hide-scrollbars \
    --user-data-dir="$work/chrome" --virtual-time-budget=4000 "$@" 2>>"$work/chromium.log"
}

# The rendered DOM of node 1's page, in $work/dom.html.
dump_dom() {
  browse --dump-dom "$(url 1)/" >"$work/dom.html" || { log "chromium failed (see $work/chromium.log)"; return 1; }
}

# member_rows: one line per member row, "ID LIVE".
member_rows() {
  { grep -o '<tr [^>]*class="member"[^>]*>' "$work/dom.html" || true; } | while read -r row; do
    local id live
    id=$(sed -n 's/.*data-id="\([0-9a-f]*\)".*/\1/p' <<<"$row")
    live=$(sed -n 's/.*data-live="\([a-z]*\)".*/\1/p' <<<"$row")
    echo "$id $live"
  done
}

log "starting 3 nodes on 127.0.0.1:$((base + 10))..$((base + 32)) ($bin)"
RINGKV_WAIT_SECS=60 scripts/cluster.sh start 3 >/dev/null || fail "the cluster did not start"

log "loading $(url 1)/ in $("$chrome" --version 2>/dev/null || echo "$chrome")"
dump_dom || fail "could not load the page"
grep -q '<body[^>]*data-loaded="true"' "$work/dom.html" \
  || fail "the page never showed data: its script did not run or its fetches failed (status: $(grep -o '<span id="status"[^<]*' "$work/dom.html" || true))"
rows=$(member_rows)
[ "$(grep -c . <<<"$rows")" -eq 3 ] || fail "expected 3 member rows, got: ${rows:-none}"
[ "$(grep -c ' true$' <<<"$rows")" -eq 3 ] || fail "expected 3 live members, got: $rows"
grep -q 'data-ring-hashes="1"' "$work/dom.html" \
  || fail "expected one ring hash, got: $(grep -o 'id="ring-hash-count"[^>]*' "$work/dom.html" || echo none)"
banner=$(grep -o '<div id="ring-banner"[^>]*>' "$work/dom.html" || true)
[ -n "$banner" ] || fail "no #ring-banner in the page"
grep -q 'hidden' <<<"$banner" || fail "the ring banner shows with one ring: $banner"
grep -q '<path d="M' "$work/dom.html" || fail "the ring has no arcs"
log "ok: 3 member rows, all live, one ring hash, no banner"

# A few seconds of light load, so that the screenshot's charts show something.
"$bin" bench --url "$(url 1)" --concurrency 4 --duration 8s --keys 500 --value-size 64 \
  >"$work/bench.log" 2>&1 &
bench_pid=$!
sleep 5
mkdir -p "$(dirname "$screenshot")"
browse --screenshot="$work/dashboard.png" --window-size=1280,1000 "$(url 1)/" >/dev/null \
  || fail "could not take the screenshot"
[ -s "$work/dashboard.png" ] || fail "chromium wrote no screenshot"
cp "$work/dashboard.png" "$screenshot"
log "saved $screenshot"
wait "$bench_pid" || log "warning: the bench load failed (see $work/bench.log); the charts may be flat"
bench_pid=

victim=$(curl -sf --max-time 5 "$(url 3)/cluster" | sed -n 's/^{"node_id":"\([0-9a-f]*\)".*/\1/p')
[ -n "$victim" ] || fail "could not read node 3's id from its /cluster"
log "killing node 3 ($victim) with SIGKILL"
scripts/cluster.sh kill 3
deadline=$((SECONDS + dead_secs))
state=
for _ in $(seq 200); do
  if dump_dom; then
    state=$(member_rows | sed -n "s/^$victim //p")
    [ "$state" = "false" ] && break
  fi
  [ $SECONDS -lt $deadline ] || fail "node 3's row still says live=${state:-missing} ${dead_secs}s after SIGKILL"
  sleep 1
done
[ "$state" = "false" ] || fail "node 3's row never turned dead"
rows=$(member_rows)
[ "$(grep -c ' true$' <<<"$rows")" -eq 2 ] || fail "expected the 2 others live, got: $rows"
log "ok: node 3's row turned dead $((SECONDS - deadline + dead_secs))s after SIGKILL; passed in $((SECONDS - started))s"
