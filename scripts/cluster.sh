#!/usr/bin/env bash
# Runs a local ringkv cluster on loopback ports, one process per node.
#
#   scripts/cluster.sh start N [-- EXTRA SERVE FLAGS]   start N nodes; node 1 is the seed
#   scripts/cluster.sh stop                              stop every node (SIGTERM)
#   scripts/cluster.sh status                            the members, from node 1
#   scripts/cluster.sh kill I | restart I | add I        one node: SIGKILL, start again, start new
#
# Settings (environment):
#   RINGKV_CLUSTER_DIR  where data dirs, logs and pids go (default ./cluster-data)
#   RINGKV_BASE_PORT    node I uses HTTP BASE+10*I, RPC BASE+10*I+1, gossip BASE+10*I+2 (default 17000)
#   RINGKV_BIN          the ringkv binary (default target/release/ringkv, built if missing)
set -euo pipefail

dir=${RINGKV_CLUSTER_DIR:-./cluster-data}
base=${RINGKV_BASE_PORT:-17000}
bin=${RINGKV_BIN:-}
wait_secs=${RINGKV_WAIT_SECS:-30}

die() { echo "cluster.sh: $*" >&2; exit 1; }
http_port() { echo $((base + 10 * $1)); }
url() { echo "http://127.0.0.1:$(http_port "$1")"; }

ensure_bin() {
  if [ -z "$bin" ]; then
    bin=target/release/ringkv
    [ -x "$bin" ] || cargo build --release --quiet --bin ringkv
  fi
  [ -x "$bin" ] || die "no ringkv binary at $bin"
}

# start_node I [EXTRA...]: starts node I in the background, joined through node 1.
start_node() {
  local i=$1; shift
  local p=$((base + 10 * i))
  mkdir -p "$dir/node$i"
  if [ -f "$dir/node$i.pid" ] && kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
    die "node $i is already running"
  fi
  local seed=()
  [ "$i" -ne 1 ] && seed=(--seed "127.0.0.1:$((base + 12))")
  [ -f "$dir/extra-args" ] && mapfile -t saved < "$dir/extra-args" || saved=()
  "$bin" serve --data-dir "$dir/node$i" \
    --http-addr "127.0.0.1:$p" --rpc-addr "127.0.0.1:$((p + 1))" --gossip-addr "127.0.0.1:$((p + 2))" \
    "${seed[@]}" "${saved[@]}" "$@" >>"$dir/node$i.log" 2>&1 &
  echo $! > "$dir/node$i.pid"
}

# wait_ready I: until node I answers /ready with 200.
wait_ready() {
  local deadline=$((SECONDS + wait_secs))
  until curl -sf -o /dev/null "$(url "$1")/ready"; do
    [ $SECONDS -lt $deadline ] || die "node $1 not ready after ${wait_secs}s (see $dir/node$1.log)"
    sleep 0.2
  done
}

# wait_members N: until every running node sees N live members and one ring hash.
wait_members() {
  local want=$1 deadline=$((SECONDS + wait_secs))
  while :; do
    local hashes="" ok=1
    for pidfile in "$dir"/node*.pid; do
      local i=${pidfile##*/node}; i=${i%.pid}
      kill -0 "$(cat "$pidfile")" 2>/dev/null || continue
      local body; body=$(curl -sf "$(url "$i")/cluster") || { ok=0; break; }
      local live; live=$(grep -o '"live":true' <<<"$body" | wc -l)
      [ "$live" -eq "$want" ] || { ok=0; break; }
      hashes+="$(sed -n 's/.*"ring_hash":"\([0-9a-f]*\)".*/\1/p' <<<"$body")"$'\n'
    done
    if [ $ok -eq 1 ] && [ "$(sort -u <<<"$hashes" | grep -c .)" -eq 1 ]; then return 0; fi
    [ $SECONDS -lt $deadline ] || die "nodes did not agree on $want live members within ${wait_secs}s"
    sleep 0.2
  done
}

running() { local n=0; for f in "$dir"/node*.pid; do [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && n=$((n + 1)); done; echo $n; }

cmd=${1:-}; shift || true
case "$cmd" in
  start)
    n=${1:?usage: cluster.sh start N [-- FLAGS]}; shift
    [ "${1:-}" = "--" ] && shift
    ensure_bin
    mkdir -p "$dir"
    printf '%s\n' "$@" | grep . > "$dir/extra-args" || true
    for i in $(seq 1 "$n"); do start_node "$i"; wait_ready "$i"; done
    wait_members "$n"
    echo "started $n nodes: $(for i in $(seq 1 "$n"); do printf '%s ' "$(url "$i")"; done)"
    ;;
  stop)
    for f in "$dir"/node*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$f"
    done
    echo "stopped"
    ;;
  status)
    ensure_bin
    first=$(ls "$dir"/node*.pid 2>/dev/null | head -1) || true
    [ -n "$first" ] || die "no nodes in $dir"
    i=${first##*/node}; i=${i%.pid}
    "$bin" status --node "$(url "$i")"
    ;;
  kill)
    i=${1:?usage: cluster.sh kill I}
    kill -KILL "$(cat "$dir/node$i.pid")" && rm -f "$dir/node$i.pid"
    ;;
  restart|add)
    i=${1:?usage: cluster.sh $cmd I}
    ensure_bin
    start_node "$i"; wait_ready "$i"
    wait_members "$(running)"
    ;;
  *)
    sed -n '2,13p' "$0"; exit 2
    ;;
esac
