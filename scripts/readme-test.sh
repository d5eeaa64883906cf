#!/usr/bin/env bash
# Runs README's examples that are marked for testing against a live node, as written.
#
#   scripts/readme-test.sh [--keep] [FILE.md]     (default README.md)
#
# A block is marked by an HTML comment on the line just before its fence, which renders as
# nothing:
#
#   <!-- readme-test -->
#   ```sh
#   curl -X PUT localhost:7070/kv/a --data 1
#   ```
#
# Mark only what runs against one fresh node on the default ports, and succeeds (no
# `serve` blocks, no examples of errors). The script starts that node itself: `ringkv
# serve` on 127.0.0.1:7070/7071/7946 (the ports README's examples use) with a data dir in
# a temp dir, waits for /ready, then runs each marked block in order, each in its own
# `bash -euo pipefail` in the temp dir with `ringkv` on PATH, under a 60 s timeout. It
# fails when a block exits non-zero, when a marker has no block after it, or when the
# file has no marked block at all. `curl` in a block fails on an HTTP error (4xx/5xx):
# it runs as `curl --fail-with-body`, so an example whose request is refused fails too.
# The node is stopped and the temp dir removed on exit (`--keep` keeps the dir).
#
# Settings (environment):
#   RINGKV_BIN  the ringkv binary (default target/release/ringkv, else target/debug/ringkv)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/node-lib.sh

keep=0
file=README.md
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    -*) echo "readme-test.sh: unknown argument $1" >&2; exit 2 ;;
    *) file=$1; shift ;;
  esac
done
die() { echo "readme-test.sh: $*" >&2; exit 1; }
[ -f "$file" ] || die "no file $file"
command -v curl >/dev/null || die "needs curl"

bin=${RINGKV_BIN:-}
if [ -z "$bin" ]; then
  for b in target/release/ringkv target/debug/ringkv; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || die "no ringkv binary (build it, or set RINGKV_BIN)"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-readme.XXXXXX")
node_pid=
cleanup() {
  node_stop "$node_pid"
  if [ "$keep" = 1 ]; then echo "readme-test.sh: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# The marked blocks, one file each: block-<README line of the fence>.sh.
mkdir -p "$tmp/blocks" "$tmp/work"
awk -v dir="$tmp/blocks" '
  function fail(msg) { print FILENAME ":" NR ": " msg > "/dev/stderr"; bad = 1; exit 1 }
  in_block && /^```/ { in_block = 0; close(out); next }
  in_block { print > out; next }
  marked {
    marked = 0
    if ($0 !~ /^```(sh|bash|shell)?[ \t]*$/) fail("a readme-test marker must be followed by a ```sh fence")
    out = sprintf("%s/block-%05d.sh", dir, NR); in_block = 1; n++; next
  }
  /^<!-- readme-test -->[ \t]*$/ { marked = 1; next }
  END {
    if (bad) exit 1
    if (in_block) { print FILENAME ": a marked block is never closed" > "/dev/stderr"; exit 1 }
    if (marked) { print FILENAME ": a marker at the end has no block" > "/dev/stderr"; exit 1 }
  }
' "$file" || die "cannot extract the marked blocks of $file"
blocks=("$tmp"/blocks/block-*.sh)
[ -e "${blocks[0]}" ] || die "$file has no block marked <!-- readme-test -->"

# The examples talk to the default ports: they must be free, or the test would talk to
# someone else's node.
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:7070/health; then
  die "something already answers on 127.0.0.1:7070; stop it first"
fi

# A node configured by nothing but its flags.
node_env=()
while IFS= read -r var; do node_env+=(-u "$var"); done < <(compgen -e | grep '^RINGKV_' || true)
env "${node_env[@]}" "$bin" serve --data-dir "$tmp/data" \
  --http-addr 127.0.0.1:7070 --rpc-addr 127.0.0.1:7071 --gossip-addr 127.0.0.1:7946 \
  >"$tmp/node.out" 2>"$tmp/node.log" &
node_pid=$!
ready=0
for _ in $(seq 300); do
  kill -0 "$node_pid" 2>/dev/null || { tail -20 "$tmp/node.log" >&2; die "the node exited"; }
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:7070/ready)" = 200 ]; then
    ready=1; break
  fi
  sleep 0.1
done
[ "$ready" = 1 ] || { tail -20 "$tmp/node.log" >&2; die "the node was not ready within 30 s"; }

# What every block starts with: curl fails on HTTP errors.
cat >"$tmp/prelude.sh" <<'EOF'
curl() { command curl --fail-with-body --no-progress-meter "$@"; }
EOF

passed=0
failed=0
for block in "${blocks[@]}"; do
  line=$(basename "$block" .sh); line=$((10#${line#block-}))
  out="$tmp/out-$line.txt"
  if (cd "$tmp/work" && env -u RINGKV_NODE PATH="$(dirname "$bin"):$PATH" \
      timeout 60 bash -euo pipefail -c 'source "$1"; source "$2"' _ "$tmp/prelude.sh" "$block") \
      >"$out" 2>&1; then
    echo "ok    $file:$line"
    passed=$((passed + 1))
  else
    rc=$?
    echo "FAIL  $file:$line (exit $rc)"
    awk '{ print "  | " $0 }' "$block"
    echo "  output:"
    awk '{ print "  > " $0 }' "$out"
    failed=$((failed + 1))
  fi
done
kill -0 "$node_pid" 2>/dev/null || { tail -20 "$tmp/node.log" >&2; die "the node died during the examples"; }
echo "readme-test: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  echo "--- node log (tail) ---"
  tail -20 "$tmp/node.log"
  exit 1
fi
