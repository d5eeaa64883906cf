#!/usr/bin/env bash
# Faults across containers: a 5-node cluster of docker-compose.yml under a light, bounded
# read/write load, through a kill, a pause and network cuts; then the invariants.
#
#   scripts/docker-faults.sh [--short] [--keys K] [--hold SECS] [--keep]
#
# Starts node1..node5 (compose project "ringkv-faults", HTTP on 127.0.0.1:BASE+I), loads
# K keys (default 5000; 1000 with --short) recording every acknowledged write, and keeps
# `ringkv-tools churn` going (reads, read-modify-writes and inserts at SCALE_CHURN_RATE/s,
# bounded in time and count; it records its writes too). Then, one after the other, each
# held for SECS (default 20; 6 with --short) and healed before the next:
#   kill        docker kill node3, then docker start it (same volume)
#   pause       docker pause node2, then unpause (a gray failure: the socket accepts,
#               nothing answers)
#   cut one     docker network disconnect node4, then connect it again (same IP)
#   cut two     disconnect node2 and node5 at once, then connect both
# After each heal it waits until every node sees 5 live members again. Then it stops the
# load, lets the cluster settle and checks, as tests/cluster_node_down.rs does:
#   1. hints drain: hints_pending_total is 0 on every node (polled up to FAULTS_SETTLE_SECS)
#   2. every acknowledged write is readable at the default quorum, with its last
#      acknowledged value or a later attempt (`ringkv-tools verify`)
#   3. replicas converge: every acknowledged key's /debug/local is the same on each member
#      of its preference list (`ringkv-tools verify --replicas`), and no key is misplaced
# It prints a summary and exits non-zero if any of them fails. Containers, the network
# and the volumes are removed on exit, whatever happens; on failure the work dir keeps
# the node logs, the record and the JSON of the checks.
#
# The containers are only on the project's own bridge network (a /24 picked so it
# overlaps no other Docker network or host route, so that a cut node can come back on
# its old address) and reach the host only through the 127.0.0.1 ports.
#
# Settings (environment):
#   RINGKV_FAULTS_BASE_PORT  node I's HTTP on 127.0.0.1:BASE+I (default 24080)
#   RINGKV_FAULTS_SUBNET     the network's subnet (default: the first free 10.213.X.0/24)
#   FAULTS_SETTLE_SECS       time for hints to drain and replicas to converge (default 180)
#   FAULTS_RECOVER_SECS      time for 5 live members after a heal (default 120)
#   FAULTS_AE_INTERVAL       the nodes' --anti-entropy-interval (default 3s)
#   SCALE_CHURN_RATE         churn operations per second (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."

keys='' hold='' keep=0 short=0
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1; shift ;;
    --keys) keys=${2:?--keys needs a number}; shift 2 ;;
    --hold) hold=${2:?--hold needs seconds}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "docker-faults.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$short" -eq 1 ]; then keys=${keys:-1000} hold=${hold:-6}; else keys=${keys:-5000} hold=${hold:-20}; fi
settle_secs=${FAULTS_SETTLE_SECS:-180}
recover_secs=${FAULTS_RECOVER_SECS:-120}
churn_rate=${SCALE_CHURN_RATE:-40}
fbase=${RINGKV_FAULTS_BASE_PORT:-24080}
for i in 1 2 3 4 5; do export "RINGKV_HOST_PORT_$i=$((fbase + i))"; done
# A write that failed its quorum may have been applied on its coordinator alone, with no
# hint anywhere (the coordinator was the node cut off): by design only anti-entropy
# repairs it. The check waits for that, so the fault cluster runs anti-entropy often
# enough to finish within the settle time.
export RINGKV_ANTI_ENTROPY_INTERVAL=${FAULTS_AE_INTERVAL:-3s}

project=ringkv-faults
network=${project}_default
work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-faults.XXXXXX")
compose_files=("$work/network.yml")
# shellcheck source=scripts/docker-lib.sh
. scripts/docker-lib.sh

log() { echo "faults: $*" >&2; }
url() { echo "http://127.0.0.1:$((fbase + $1))"; }
urls() { local i out=; for i in 1 2 3 4 5; do out+="${out:+,}$(url "$i")"; done; echo "$out"; }

cargo build --release --quiet -p ringkv-tools
tools=$(realpath target/release/ringkv-tools)
record=$work/record.tsv
churn_pid=

# ----- cleanup: heal whatever is still broken, then remove everything -----
heal_all() {
  local i c ip
  for i in 1 2 3 4 5; do
    c=$(container "$i"); [ -n "$c" ] || continue
    [ "$(docker inspect -f '{{.State.Paused}}' "$c" 2>/dev/null)" = true ] && docker unpause "$c" >/dev/null
    if [ -f "$work/ip.$i" ] && ! docker inspect -f '{{json .NetworkSettings.Networks}}' "$c" | grep -q "\"$network\""; then
      ip=$(cat "$work/ip.$i")
      docker network connect --ip "$ip" --alias "node$i" "$network" "$c"
    fi
    [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] || docker start "$c" >/dev/null
  done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$churn_pid" ] && kill -0 "$churn_pid" 2>/dev/null; then
    touch "$work/stop"
    for _ in $(seq 100); do kill -0 "$churn_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$churn_pid" 2>/dev/null || true
    wait "$churn_pid" 2>/dev/null || true
  fi
  heal_all >/dev/null 2>&1 || true
  save_logs "$work"
  dc down -v --remove-orphans >>"$work/compose.log" 2>&1 || log "compose down failed: see $work/compose.log"
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc). Kept $work: node*.log, churn.log, verify.json, record.tsv"
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

# ----- the network: a /24 that overlaps nothing, so a cut node gets its address back -----
ip2int() { local IFS=.; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
# overlaps A/LEN B/LEN: whether two IPv4 prefixes overlap.
overlaps() {
  local a=${1%/*} al=${1#*/} b=${2%/*} bl=${2#*/} l
  l=$((al < bl ? al : bl))
  [ "$l" -eq 0 ] && return 0
  local mask=$(((0xffffffff << (32 - l)) & 0xffffffff))
  [ $(($(ip2int "$a") & mask)) -eq $(($(ip2int "$b") & mask)) ]
}
taken() {
  docker network ls -q | xargs -r docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}'
  ip -4 route 2>/dev/null | awk '$1 ~ /^[0-9.]+\/[0-9]+$/ { print $1 }'
}
pick_subnet() {
  local x s t used
  used=$(taken | tr ' ' '\n' | grep -E '^[0-9.]+/[0-9]+$' || true)
  for x in $(seq 0 255); do
    s=10.213.$x.0/24
    for t in $used; do overlaps "$s" "$t" && continue 2; done
    echo "$s"; return 0
  done
  return 1
}

if [ -n "$(dc ps -q 2>/dev/null || true)" ]; then
  log "compose project $project has containers (an earlier run?): removing them"
  dc down -v --remove-orphans >/dev/null 2>&1 || true
fi
check_host_ports "$fbase" 5 RINGKV_FAULTS_BASE_PORT || exit 1
subnet=${RINGKV_FAULTS_SUBNET:-$(pick_subnet)} || { log "no free 10.213.X.0/24: set RINGKV_FAULTS_SUBNET"; exit 1; }
cat >"$work/network.yml" <<YAML
networks:
  default:
    ipam:
      config:
        - subnet: $subnet
YAML

# ----- reading the cluster -----
# live_count I: live members in node I's view ('' when it does not answer).
live_count() { curl -sf -m 3 "$(url "$1")/cluster" | grep -o '"live":true' | wc -l; }
ring_hash() { curl -sf -m 3 "$(url "$1")/cluster" | sed -n 's/.*"ring_hash":"\([0-9a-f]*\)".*/\1/p'; }
# wait_whole SECS: until every node is ready, sees 5 live members, and all share one ring.
wait_whole() {
  local deadline=$((SECONDS + $1)) i ok hashes
  while :; do
    ok=1 hashes=
    for i in 1 2 3 4 5; do
      if ! curl -sf -m 3 -o /dev/null "$(url "$i")/ready" || [ "$(live_count "$i")" -ne 5 ]; then
        ok=0; break
      fi
      hashes+="$(ring_hash "$i")"$'\n'
    done
    [ $ok -eq 1 ] && [ "$(sort -u <<<"$hashes" | grep -c .)" -eq 1 ] && return 0
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}
# counter NAME: a /debug/replication counter summed over the nodes that answer.
counter() {
  local sum=0 i v
  for i in 1 2 3 4 5; do
    v=$(curl -sf -m 3 "$(url "$i")/debug/replication" | grep -o "\"$1\":[0-9]*" | cut -d: -f2) || v=0
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# seen_down I WATCHER: whether node WATCHER's /cluster shows node I's member as not live.
seen_down() {
  local id; id=$(cat "$work/id.$1")
  curl -sf -m 3 "$(url "$2")/cluster" | grep -o "{\"id\":\"$id\"[^}]*}" | grep -q '"live":false'
}

# ----- the faults -----
# Each takes the node numbers it acts on.
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$(container "$1")"; }
kill_nodes() { local n; for n; do docker kill "$(container "$n")" >/dev/null; done; }
start_nodes() { local n; for n; do docker start "$(container "$n")" >/dev/null; done; }
pause_nodes() { local n; for n; do docker pause "$(container "$n")" >/dev/null; done; }
unpause_nodes() { local n; for n; do docker unpause "$(container "$n")" >/dev/null; done; }
# A cut node keeps running with its address; it comes back on that same address (and
# its service name), as peers know it by the address it advertised.
cut_nodes() {
  local n
  for n; do ip_of "$n" >"$work/ip.$n"; docker network disconnect "$network" "$(container "$n")"; done
}
uncut_nodes() {
  local n
  for n; do docker network connect --ip "$(cat "$work/ip.$n")" --alias "node$n" "$network" "$(container "$n")"; done
}

rows=()
failed=0
# fault NAME BREAK HEAL WATCHER NODE...: BREAK NODE..., hold, HEAL NODE..., wait for the
# whole cluster; one summary row, with whether WATCHER saw the nodes down during the hold.
fault() {
  local name=$1 break_fn=$2 heal_fn=$3 watcher=$4; shift 4
  local stored0 delivered0 t0 seen=no n recovered
  stored0=$(counter hints_stored) delivered0=$(counter hints_delivered)
  log "$name: $break_fn $*"
  t0=$SECONDS
  "$break_fn" "$@"
  while [ $((SECONDS - t0)) -lt "$hold" ]; do
    if [ "$seen" = no ]; then
      local all=1
      for n in "$@"; do seen_down "$n" "$watcher" || all=0; done
      [ $all -eq 1 ] && seen="after $((SECONDS - t0))s"
    fi
    sleep 1
  done
  log "$name: $heal_fn $*"
  "$heal_fn" "$@"
  t0=$SECONDS
  if wait_whole "$recover_secs"; then
    recovered="$((SECONDS - t0))"
  else
    recovered="no (after ${recover_secs}s)"; failed=1
    log "$name: the cluster did not get 5 live members back"
  fi
  rows+=("| $name | $* | $hold | $seen | $recovered | $(($(counter hints_stored) - stored0)) | $(($(counter hints_delivered) - delivered0)) |")
}

# ----- run -----
ensure_image >&2
started=$SECONDS
log "work dir $work; project $project on $subnet; HTTP on 127.0.0.1:$((fbase + 1))..$((fbase + 5)); $keys keys; hold ${hold}s"
dc up -d >"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; exit 1; }
wait_whole 120 || { log "the 5 nodes did not form one cluster in 120s"; exit 1; }
for i in 1 2 3 4 5; do curl -sf "$(url "$i")/cluster" | sed -n 's/.*"node_id":"\([0-9a-f]*\)".*/\1/p' >"$work/id.$i"; done
log "5 nodes up in $((SECONDS - started))s"

"$tools" load --node "$(urls)" --keys "$keys" --record "$record" >"$work/load.json" 2>"$work/load.log" \
  || { log "load failed: $(tail -n 5 "$work/load.log")"; exit 1; }
log "loaded: $(cat "$work/load.json")"

# Bounded: it stops at the stop file, or after an hour, or after 100000 operations.
"$tools" churn --node "$(urls)" --record "$record" --rate "$churn_rate" --seconds 3600 \
  --max-ops 100000 --stop-file "$work/stop" --summary "$work/churn.json" >"$work/churn.log" 2>&1 &
churn_pid=$!

fault "kill + restart" kill_nodes start_nodes 1 3
fault "pause" pause_nodes unpause_nodes 1 2
fault "cut one" cut_nodes uncut_nodes 1 4
fault "cut two" cut_nodes uncut_nodes 1 2 5

touch "$work/stop"
wait "$churn_pid" || log "churn exited non-zero (see $work/churn.log)"
churn_pid=

# ----- settle and check -----
heal_all
t0=$SECONDS
hints=
while :; do
  hints=$(counter hints_pending_total)
  wait_whole 5 && [ "$hints" -eq 0 ] && break
  [ $((SECONDS - t0)) -lt "$settle_secs" ] || break
  sleep 1
done
hints_secs=$((SECONDS - t0))
hints_ok=$([ "$hints" -eq 0 ] && echo PASS || echo FAIL)
[ "$hints_ok" = PASS ] || failed=1

verify_rc=0
"$tools" verify --node "$(urls)" --record "$record" --replicas --settle-secs "$settle_secs" \
  >"$work/verify.json" 2>"$work/verify.log" || verify_rc=$?
field() { grep -o "\"$1\":[^,}]*" "$work/verify.json" | head -n 1 | cut -d: -f2- || true; }
readable_ok=FAIL replicas_ok=FAIL
[ -n "$(field acked_keys)" ] && [ "$(field readable)" = "$(field acked_keys)" ] && readable_ok=PASS
[ "$(field replicas_unequal)" = 0 ] && [ "$(field misplaced)" = 0 ] && replicas_ok=PASS
if [ "$verify_rc" -ne 0 ] || [ "$readable_ok" != PASS ] || [ "$replicas_ok" != PASS ]; then
  failed=1
  log "verify (exit $verify_rc): $(tail -n 3 "$work/verify.log")"
fi

echo "| fault | nodes | held s | seen down by node1 | back to 5 live s | hints stored | hints delivered |"
echo "|---|---|---:|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "- load: $(cat "$work/load.json")"
echo "- churn during the faults: $(cat "$work/churn.json" 2>/dev/null || echo 'no summary')"
echo "- hints drained: $hints_ok ($hints pending on all nodes, ${hints_secs}s after the last heal)"
echo "- acknowledged writes readable: $readable_ok ($(field readable) of $(field acked_keys) keys, $(field readable_pct)%; not found $(field not_found), wrong value $(field wrong_value), read errors $(field read_errors))"
echo "- replicas converged: $replicas_ok ($(field replicas_unequal) keys differ on /debug/local across their preference list; $(field misplaced) misplaced; settled in $(field settle_secs)s)"
echo "- total time $((SECONDS - started))s"
if [ "$failed" -ne 0 ]; then
  log "an invariant does not hold: see $work/verify.json"
  exit 1
fi
log "every invariant holds"
