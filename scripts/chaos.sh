#!/usr/bin/env bash
# Chaos with real processes: N local ringkv nodes on loopback under a seeded schedule of
# faults (SIGKILL and restart, one and two at a time; SIGSTOP/SIGCONT; disk loss, after
# which the node is started empty and its old id removed; a full disk: the node's data dir
# is a tmpfs filled with a ballast file, root only) while bounded clients write, delete
# and add to shared sets, recording every acknowledged write. Then a heal, a bounded
# settle, and the checks: no acknowledged write or set element lost (docs/design.md §1),
# replicas converged, hints drained. The logic is `ringkv-tools chaos`.
#
#   scripts/chaos.sh [--nodes 5] [--minutes 2] [--seed S] [--keep] [-- MORE CHAOS FLAGS]
#
# Prints the seed first (--seed S replays the fault schedule), then each fault, then the
# report: faults by kind, operations by kind and outcome, what was checked, violations.
# Exits non-zero on any violation or if the cluster did not settle; the work dir (node
# logs, schedule.txt, history.jsonl, summary.json) is kept then, and named.
#
# Settings (environment):
#   RINGKV_BASE_PORT   node I uses HTTP BASE+10*I, RPC +1, gossip +2 (default 25000)
#   RINGKV_BIN         the ringkv binary (default target/release/ringkv, built first)
#   RINGKV_TOOLS_BIN   the ringkv-tools binary (default target/release/ringkv-tools, built first)
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=5 minutes=2 seed= keep=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --keep) keep=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "${RINGKV_BIN:-}" ]; then
  cargo build --release --quiet --bin ringkv
  RINGKV_BIN=target/release/ringkv
fi
if [ -z "${RINGKV_TOOLS_BIN:-}" ]; then
  cargo build --release --quiet -p ringkv-tools
  RINGKV_TOOLS_BIN=target/release/ringkv-tools
fi
bin=$(realpath "$RINGKV_BIN")
tools=$(realpath "$RINGKV_TOOLS_BIN")
work=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-chaos.XXXXXX")
tools_pid=

# The tool kills its nodes and unmounts its tmpfs on every exit of its own; this covers
# the tool itself being killed: its pid and mount files name what is left.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$tools_pid" ] && kill -0 "$tools_pid" 2>/dev/null; then
    kill -TERM "$tools_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$tools_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$tools_pid" 2>/dev/null || true
  fi
  for f in "$work"/node*.pid; do
    [ -f "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  if [ -f "$work/mounts" ]; then
    while read -r m; do umount -l "$m" 2>/dev/null || true; done <"$work/mounts"
    rm -f "$work/mounts"
  fi
  if [ "$rc" -ne 0 ] || [ "$keep" -eq 1 ]; then
    echo "chaos.sh: kept $work (node logs, schedule.txt, history.jsonl, summary.json)" >&2
    if [ "$rc" -ne 0 ]; then
      for f in "$work"/node*.log; do
        [ -f "$f" ] || continue
        echo "--- last lines of $f" >&2; tail -n 5 "$f" >&2
      done
    fi
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=(chaos --nodes "$nodes" --minutes "$minutes" --bin "$bin" --work-dir "$work"
  --base-port "${RINGKV_BASE_PORT:-25000}")
[ -n "$seed" ] && args+=(--seed "$seed")
# In the background and waited for, so that a signal to this script runs the trap at once.
"$tools" "${args[@]}" "${extra[@]}" &
tools_pid=$!
wait "$tools_pid"
