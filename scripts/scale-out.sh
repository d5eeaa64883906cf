#!/usr/bin/env bash
# Scale-out check: one node to five, one join at a time, under a light read/write load.
#
#   scripts/scale-out.sh [--keys K] [--nodes N] [--keep] [--docker]
#
# --docker runs the nodes as containers of docker-compose.yml (image ringkv:local, built
# by scripts/docker-build.sh when missing) under the compose project "ringkv-scale-out",
# with HTTP published on 127.0.0.1:RINGKV_DOCKER_BASE_PORT+I (default 28080+I), so it
# never touches the cluster of a plain `docker compose up` (project of the directory's
# name, ports 8081..8085). At most 5 nodes. It removes its containers, network and
# volumes at the end; the load and checks run on the host, as in the local mode.
#
# Starts node 1 and loads K keys (default 20000) through it, recording every acknowledged
# write. Then adds nodes 2..N (default 5) one at a time while `ringkv-tools churn` keeps a light,
# bounded read/write load going (it records its writes too). After each join it waits
# until the new node is normal (its /ready is 200 and every node's /cluster shows it
# "normal") and `ringkv-tools verify` prints one Markdown row:
#   nodes        ring members
#   join s       from starting the new node until every node shows it normal
#   keys moved   the sum over all nodes of the increase of `ae_keys_pulled` during the
#                join (the keys the new node pulled, plus any an old node pulled)
#   readable %   acknowledged keys that read back at the default quorum, round-robin over
#                the nodes, with their last acknowledged value (or a later attempt)
#   share %      each node's share of all stored copies (node 1 first; sums to 100)
#   misplaced    keys whose holders (from /debug/keys on every node) differ from their
#                preference list, once the join settles (polled up to SCALE_SETTLE_SECS)
#   settle s     how long placement took to settle after the join, checks included
# Exits 0 only if every row has 100% readable and 0 misplaced. Every process it started
# is stopped on exit; on failure the work dir (logs, record, JSON) is kept and named.
#
# Settings (environment):
#   RINGKV_BASE_PORT    node I uses HTTP BASE+10*I, RPC +1, gossip +2 (default 21000)
#   RINGKV_BIN          the ringkv binary (default target/release/ringkv, built first)
#   RINGKV_TOOLS_BIN    the ringkv-tools binary: load, churn, verify (default
#                       target/release/ringkv-tools, built first)
#   SCALE_JOIN_TIMEOUT  seconds one join may take (default 600)
#   SCALE_SETTLE_SECS   seconds placement may take to settle after a join (default 120)
#   SCALE_CHURN_RATE    churn operations per second (default 40)
#   RINGKV_DOCKER_BASE_PORT  with --docker: node I's HTTP on 127.0.0.1:BASE+I (default 28080)
set -euo pipefail
cd "$(dirname "$0")/.."

keys=20000 nodes=5 keep=0 docker=0
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys=${2:?--keys needs a number}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --keep) keep=1; shift ;;
    --docker) docker=1; shift ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "scale-out.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$nodes" -ge 2 ] || { echo "scale-out.sh: --nodes must be at least 2" >&2; exit 2; }
if [ "$docker" -eq 1 ] && [ "$nodes" -gt 5 ]; then
  echo "scale-out.sh: docker-compose.yml has 5 nodes; --nodes must be at most 5" >&2; exit 2
fi

export RINGKV_BASE_PORT=${RINGKV_BASE_PORT:-21000}
join_timeout=${SCALE_JOIN_TIMEOUT:-600}
settle_secs=${SCALE_SETTLE_SECS:-120}
churn_rate=${SCALE_CHURN_RATE:-40}
base=$RINGKV_BASE_PORT

if [ -z "${RINGKV_BIN:-}" ]; then
  cargo build --release --quiet --bin ringkv
  RINGKV_BIN=target/release/ringkv
fi
bin=$(realpath "$RINGKV_BIN")
export RINGKV_BIN=$bin
if [ -z "${RINGKV_TOOLS_BIN:-}" ]; then
  cargo build --release --quiet -p ringkv-tools
  RINGKV_TOOLS_BIN=target/release/ringkv-tools
fi
tools=$(realpath "$RINGKV_TOOLS_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-scale-out.XXXXXX")
record=$work/record.tsv
nodes_file=$work/nodes
table=$work/table.md
churn_pid=

log() { echo "scale-out: $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ----- orchestration: local processes through scripts/cluster.sh -----
# (a later --docker mode replaces these five functions)
export RINGKV_CLUSTER_DIR=$work/cluster
orch_url() { echo "http://127.0.0.1:$((base + 10 * $1))"; }
orch_check_ports() {
  local i p
  for i in $(seq 1 "$nodes"); do
    for p in $((base + 10 * i)) $((base + 10 * i + 1)); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        log "port $p is in use: set RINGKV_BASE_PORT to a free range"; return 1
      fi
    done
  done
}
orch_start_first() { RINGKV_WAIT_SECS=60 scripts/cluster.sh start 1 >/dev/null; }
orch_add() { RINGKV_WAIT_SECS=$join_timeout scripts/cluster.sh add "$1" >/dev/null; }
orch_stop() { scripts/cluster.sh stop >/dev/null 2>&1 || true; }
orch_logs() { echo "$RINGKV_CLUSTER_DIR/node*.log"; }

# ----- orchestration: containers of docker-compose.yml (--docker) -----
if [ "$docker" -eq 1 ]; then
  project=ringkv-scale-out
  compose_files=()
  # shellcheck source=scripts/docker-lib.sh
  . scripts/docker-lib.sh
  dbase=${RINGKV_DOCKER_BASE_PORT:-28080}
  for i in 1 2 3 4 5; do export "RINGKV_HOST_PORT_$i=$((dbase + i))"; done
  orch_url() { echo "http://127.0.0.1:$((dbase + $1))"; }
  orch_check_ports() {
    if [ -n "$(dc ps -q 2>/dev/null)" ]; then
      log "compose project $project has containers (an earlier run?): removing them"
      dc down -v --remove-orphans >/dev/null 2>&1
    fi
    check_host_ports "$dbase" "$nodes" RINGKV_DOCKER_BASE_PORT
  }
  # node1 has no depends_on; the others wait for node1's health check (in the compose
  # file), which node1 passes by then.
  orch_start_first() {
    ensure_image >&2
    dc up -d node1 >"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; return 1; }
    wait_ready_url "$(orch_url 1)" 60
  }
  orch_add() {
    dc up -d --no-deps "node$1" >>"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; return 1; }
    wait_ready_url "$(orch_url "$1")" "$join_timeout"
  }
  orch_stop() {
    save_logs "$RINGKV_CLUSTER_DIR"
    dc down -v --remove-orphans >>"$work/compose.log" 2>&1 || true
  }
fi

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$churn_pid" ] && kill -0 "$churn_pid" 2>/dev/null; then
    touch "$work/stop"
    for _ in $(seq 100); do kill -0 "$churn_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$churn_pid" 2>/dev/null || true
    wait "$churn_pid" 2>/dev/null || true
  fi
  orch_stop
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc). Kept $work: node logs $(orch_logs), churn.log, verify.jsonl, record.tsv"
    for f in "$RINGKV_CLUSTER_DIR"/node*.log; do
      [ -f "$f" ] || continue
      echo "--- last lines of $f" >&2; tail -n 5 "$f" >&2
    done
  elif [ "$keep" -eq 1 ]; then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----- reading the nodes -----
node_id() { curl -sf "$(orch_url "$1")/cluster" | sed -n 's/.*"node_id":"\([0-9a-f]*\)".*/\1/p'; }
# counter NAME I...: the sum of a /debug/replication counter over nodes I...
counter() {
  local name=$1 sum=0 i v; shift
  for i in "$@"; do
    v=$(curl -sf "$(orch_url "$i")/debug/replication" | grep -o "\"$name\":[0-9]*" | cut -d: -f2)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
urls() { local i out=; for i in $(seq 1 "$1"); do out+="${out:+,}$(orch_url "$i")"; done; echo "$out"; }
# wait_normal ID I: until nodes 1..I all show member ID as normal.
wait_normal() {
  local id=$1 upto=$2 deadline=$((SECONDS + join_timeout)) i ok
  while :; do
    ok=1
    for i in $(seq 1 "$upto"); do
      curl -sf "$(orch_url "$i")/ready" >/dev/null || { ok=0; break; }
      curl -sf "$(orch_url "$i")/cluster" | grep -o "{\"id\":\"$id\"[^}]*}" \
        | grep -q '"state":"normal"' || { ok=0; break; }
    done
    [ $ok -eq 1 ] && return 0
    [ $SECONDS -lt $deadline ] || { log "node $id not normal everywhere after ${join_timeout}s"; return 1; }
    sleep 0.2
  done
}
# verify I [VERIFY FLAGS]: checks nodes 1..I and appends a row to the table.
verify() {
  local upto=$1; shift
  "$tools" verify --node "$(urls "$upto")" --record "$record" --settle-secs "$settle_secs" \
    --json-out "$work/verify.jsonl" --row-out "$table" "$@" >>"$work/verify.log" 2>&1
}

orch_check_ports
: >"$table"
if [ "$docker" -eq 1 ]; then
  log "work dir $work; containers of project $project, image ringkv:local; $keys keys; nodes 1..$nodes on ports from $((dbase + 1))"
else
  log "work dir $work; binary $bin; $keys keys; nodes 1..$nodes on ports from $base"
fi
orch_start_first
orch_url 1 >"$nodes_file"

echo "| nodes | join s | keys moved | readable % | share of keys per node % | misplaced | settle s |"
echo "|---:|---:|---:|---:|---|---:|---:|"
failed=0
# row VERIFY-ARGS...: runs verify and prints the row it made; marks the run failed if the
# row does not hold or no row came out.
row() {
  local before after
  before=$(wc -l <"$table")
  if ! "$@"; then
    failed=1
    log "verify failed; its last output:"; tail -n 3 "$work/verify.log" | cut -c1-3000 >&2
  fi
  after=$(wc -l <"$table")
  if [ "$after" -gt "$before" ]; then tail -n 1 "$table"; else echo "| $2 | (verify did not finish: see $work/verify.log) |"; failed=1; fi
}

t0=$(now)
"$tools" load --node "$(orch_url 1)" --keys "$keys" --record "$record" >"$work/load.json" 2>"$work/load.log" \
  || { log "load failed: $(cat "$work/load.json" "$work/load.log" | tail -n 5)"; exit 1; }
log "loaded $keys keys in $(elapsed "$t0" "$(now)")s: $(cat "$work/load.json")"
row verify 1

"$tools" churn --nodes-file "$nodes_file" --record "$record" --rate "$churn_rate" \
  --seconds $((join_timeout * nodes + 600)) --stop-file "$work/stop" --summary "$work/churn.json" \
  >"$work/churn.log" 2>&1 &
churn_pid=$!

details=()
for i in $(seq 2 "$nodes"); do
  old=$(seq 1 $((i - 1)))
  # shellcheck disable=SC2086
  pulled_before=$(counter ae_keys_pulled $old)
  # shellcheck disable=SC2086
  handed_before=$(counter keys_handed_off $old)
  t0=$(now)
  orch_add "$i" || { log "node $i did not join within ${join_timeout}s"; exit 1; }
  id=$(node_id "$i")
  wait_normal "$id" "$i" || exit 1
  t1=$(now)
  join_secs=$(elapsed "$t0" "$t1")
  new_pulled=$(counter ae_keys_pulled "$i")
  # shellcheck disable=SC2086
  moved=$(( $(counter ae_keys_pulled $old) - pulled_before + new_pulled ))
  orch_url "$i" >>"$nodes_file"
  row verify "$i" --join-secs "$join_secs" --moved "$moved"
  # shellcheck disable=SC2086
  handed=$(( $(counter keys_handed_off $old) - handed_before ))
  rate=$(awk -v m="$moved" -v s="$join_secs" 'BEGIN { printf "%.0f", (s > 0 ? m / s : 0) }')
  details+=("$((i - 1)) → $i nodes: joined in ${join_secs}s; node $i pulled $new_pulled keys, all nodes $moved (≈$rate keys/s); old owners handed off and dropped $handed")
done

touch "$work/stop"
wait "$churn_pid" || log "churn exited non-zero (see $work/churn.log)"
churn_pid=
echo
for d in "${details[@]}"; do echo "- $d"; done
echo "- load: $(cat "$work/load.json")"
echo "- churn during the joins: $(cat "$work/churn.json" 2>/dev/null || echo 'no summary')"
if [ "$failed" -ne 0 ]; then
  log "a row does not hold (readable < 100% or misplaced > 0); details in $work/verify.jsonl"
  exit 1
fi
log "every row holds"
