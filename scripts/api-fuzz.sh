#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against docs/openapi.json: starts one node of its
# own on loopback (port 0, temp data dir), runs every documented operation with generated
# valid and invalid requests, and stops the node.
#
#   scripts/api-fuzz.sh [--install] [--max-examples N] [--max-time S] [--seed N] [--keep]
#                       [--checks LIST] [--report FORMATS]
#
# It fails on any 5xx other than 503 (not_a_server_error, 503 allowed: a node sheds load
# and answers `unavailable` by design), and on any answer the document does not describe:
# its status (status_code_conformance), its Content-Type (content_type_conformance) or its
# body (response_schema_conformance). `POST /admin/leave` is left out: the node would leave
# and exit.
#
#   --install         pip-install the pinned schemathesis into target/api-fuzz-venv first
#                     when the `st` on PATH is missing or another version
#   --max-examples N  test cases per operation and phase (default 40)
#   --max-time S      schemathesis' time budget (default 120 s); the whole script is
#                     bounded by S + 60 s more
#   --seed N          reproduce a run (schemathesis prints the seed it used)
#   --keep            keep the temp dir (node log, reports) for a look afterwards
#   --checks LIST     other schemathesis checks (e.g. `all`) to look for more than the gate
#   --report FORMATS  more reports than junit (e.g. `ndjson,har`), in the temp dir's report/
#
# Settings (environment):
#   RINGKV_BIN  the ringkv binary (default target/release/ringkv, else target/debug/ringkv,
#               built in release if neither is there)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/node-lib.sh

SCHEMATHESIS_VERSION=4.32.5
max_examples=40
max_time=120
seed=
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
reports=junit
install=0
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --install) install=1; shift ;;
    --max-examples) max_examples=${2:?--max-examples needs a number}; shift 2 ;;
    --max-time) max_time=${2:?--max-time needs seconds}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --keep) keep=1; shift ;;
    --checks) checks=${2:?--checks needs a list}; shift 2 ;;
    --report) reports=${2:?--report needs formats}; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "api-fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $max_examples$max_time in *[!0-9]*) echo "api-fuzz.sh: numbers only" >&2; exit 2 ;; esac

die() { echo "api-fuzz.sh: $*" >&2; exit 1; }

st_version() { st --version 2>/dev/null | awk '{print $NF}'; }
if [ "$(st_version)" != "$SCHEMATHESIS_VERSION" ]; then
  # Its own venv under target/: no system Python is changed (nor refused, as PEP 668 does).
  venv=target/api-fuzz-venv
  if [ "$install" = 1 ] && [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  [ -x "$venv/bin/st" ] && PATH="$PWD/$venv/bin:$PATH"
  [ "$(st_version)" = "$SCHEMATHESIS_VERSION" ] ||
    die "needs schemathesis $SCHEMATHESIS_VERSION (\`st\`; found: $(st_version || true)); run with --install, or pip install schemathesis==$SCHEMATHESIS_VERSION"
fi
command -v curl >/dev/null || die "needs curl"

bin=${RINGKV_BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/ringkv ]; then
    bin=target/release/ringkv
  elif [ -x target/debug/ringkv ]; then
    bin=target/debug/ringkv
  else
    cargo build --release --quiet --bin ringkv
    bin=target/release/ringkv
  fi
fi
[ -x "$bin" ] || die "no ringkv binary at $bin"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-api-fuzz.XXXXXX")
node_pid=
cleanup() {
  node_stop "$node_pid"
  if [ "$keep" = 1 ]; then echo "api-fuzz.sh: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Small limits, so that generated bodies reach the 413s too.
"$bin" serve --data-dir "$tmp/data" \
  --http-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --gossip-addr 127.0.0.1:0 \
  --max-value-bytes 4096 --max-batch-ops 16 --max-batch-bytes 65536 \
  >"$tmp/node.out" 2>"$tmp/node.log" &
node_pid=$!

node_wait_ready "$tmp/node.out" "$tmp/node.log" "$node_pid"

# The document the node serves must be the committed one (tests/openapi.rs checks it too):
# the fuzzing is against what is committed.
curl -sf --max-time 5 "$base/openapi.json" -o "$tmp/served.json" || die "GET /openapi.json failed"
cmp -s "$tmp/served.json" docs/openapi.json ||
  die "$bin serves another document than docs/openapi.json: rebuild it, or regenerate the document with RINGKV_WRITE_OPENAPI=1 cargo nextest run -p ringkv --test openapi"

cat >"$tmp/schemathesis.toml" <<'EOF'
# A 503 is an answer the document describes (unavailable, removed, overloaded); every
# other 5xx is a failure.
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]
EOF

echo "api-fuzz.sh: schemathesis $SCHEMATHESIS_VERSION against $base ($bin), $max_examples examples per operation, ${max_time}s"
args=(
  --url "$base"
  --checks "$checks"
  --exclude-path /admin/leave
  --max-examples "$max_examples"
  --max-time "$max_time"
  --request-timeout 20
  --workers 2
  --generation-with-security-parameters false
  --generation-database none
  --suppress-health-check all
  --report "$reports" --report-dir "$tmp/report"
  --no-color
)
[ -n "$seed" ] && args+=(--seed "$seed")
status=0
# From the temp dir: schemathesis keeps a cache (.schemathesis/) where it runs.
doc=$PWD/docs/openapi.json
(cd "$tmp" && timeout --kill-after=10 $((max_time + 60)) \
  st --config-file "$tmp/schemathesis.toml" run "$doc" "${args[@]}") || status=$?
kill -0 "$node_pid" 2>/dev/null || { tail -20 "$tmp/node.log" >&2; die "the node died during the run"; }
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  die "schemathesis overran its $((max_time + 60)) s bound"
fi
[ "$status" = 0 ] || die "schemathesis found failures (exit $status); rerun with --seed and --keep to look closer"
echo "api-fuzz.sh: no failures"
