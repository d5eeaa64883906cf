#!/usr/bin/env bash
# Checks the monitoring files and a live scrape with promtool (Debian's `prometheus`
# package, installed when promtool is missing):
#   1. `promtool check config deploy/prometheus.yml`;
#   2. one node of the ringkv binary on loopback (port 0, temp data dir), a few requests
#      (puts, gets, a 404, a delete, a listing, a batch), then `GET /metrics` with the
#      Accept header of a text-format scraper piped to `promtool check metrics`.
#
#   scripts/promtool-check.sh [--keep]
#
# Any parse error fails, and so does any lint problem: promtool exits 3 for those
# ("counter metrics should have _total suffix", a unit abbreviation, a missing HELP).
# Every family of ours is named to pass the lint, so a problem is a new metric named
# wrongly, and it is cheaper to fix the name now than after dashboards use it.
#
# Settings (environment):
#   RINGKV_BIN  the ringkv binary (default target/release/ringkv)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/node-lib.sh
keep=0
case ${1:-} in
  --keep) keep=1 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "promtool-check.sh: unknown argument $1" >&2; exit 2 ;;
esac
die() { echo "promtool-check.sh: $*" >&2; exit 1; }
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
command -v promtool >/dev/null || die "promtool is missing and could not be installed"
command -v curl >/dev/null || die "needs curl"
bin=${RINGKV_BIN:-target/release/ringkv}
[ -x "$bin" ] || die "no ringkv binary at $bin (cargo build --release, or set RINGKV_BIN)"

promtool check config deploy/prometheus.yml

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-promtool.XXXXXX")
node_pid=
cleanup() {
  node_stop "$node_pid"
  if [ "$keep" = 1 ]; then echo "promtool-check.sh: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
"$bin" serve --data-dir "$tmp/data" \
  --http-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --gossip-addr 127.0.0.1:0 \
  >"$tmp/node.out" 2>"$tmp/node.log" &
node_pid=$!
node_wait_ready "$tmp/node.out" "$tmp/node.log" "$node_pid"

# A few requests, so that the request, latency and group-commit series have samples.
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
for i in 1 2 3; do
  [ "$(code -X PUT --data-binary "v$i" "$base/kv/promtool-$i")" = 204 ] || die "PUT promtool-$i"
  [ "$(code "$base/kv/promtool-$i")" = 200 ] || die "GET promtool-$i"
done
[ "$(code "$base/kv/promtool-missing")" = 404 ] || die "GET of a missing key is not 404"
[ "$(code -X DELETE "$base/kv/promtool-1")" = 204 ] || die "DELETE promtool-1"
[ "$(code "$base/kv?limit=10")" = 200 ] || die "GET /kv"
[ "$(code -X POST -H 'content-type: application/json' \
  --data '{"ops":[{"op":"get","key":"promtool-2"}]}' "$base/batch")" = 200 ] || die "POST /batch"

accept='text/plain;version=0.0.4;q=1.0,*/*;q=0.1'
curl -sf --max-time 5 -H "Accept: $accept" -D "$tmp/headers" -o "$tmp/metrics.txt" "$base/metrics" ||
  die "GET /metrics failed"
grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/headers" ||
  die "GET /metrics with Accept: $accept did not answer the text format: $(grep -i '^content-type' "$tmp/headers")"
status=0
promtool check metrics <"$tmp/metrics.txt" || status=$?
if [ "$status" != 0 ]; then
  cp "$tmp/metrics.txt" target/promtool-metrics.txt 2>/dev/null || true
  die "promtool check metrics failed (exit $status; 3 is a lint problem); the scrape is in target/promtool-metrics.txt"
fi
families=$(grep -c '^# TYPE ' "$tmp/metrics.txt")
echo "promtool-check.sh: deploy/prometheus.yml and a live scrape ($families families) pass promtool"
