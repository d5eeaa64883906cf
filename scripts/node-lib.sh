# Sourced by the scripts that run one node of their own (api-fuzz.sh, promtool-check.sh,
# readme-test.sh): stopping it, and waiting for it to be ready. The caller defines `die`.

# node_stop PID: SIGTERM, up to 10 s to exit (a node drains its writer first), then SIGKILL.
node_stop() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# node_wait_ready OUT LOG PID: waits up to 20 s for the node's ready line in OUT (its
# stdout), then up to 20 s for /ready to answer 200; sets `base` to http://ADDR. On
# failure, shows the end of LOG (its stderr) and dies.
node_wait_ready() {
  local out=$1 log=$2 pid=$3 http=
  for _ in $(seq 200); do
    http=$(awk '$1=="ringkv" && $2=="ready" { for (i=3;i<=NF;i++) if ($i ~ /^http=/) { sub(/^http=/,"",$i); print $i } }' "$out")
    [ -n "$http" ] && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "the node exited before its ready line"; }
    sleep 0.1
  done
  [ -n "$http" ] || { tail -20 "$log" >&2; die "no ready line within 20 s"; }
  base="http://$http"
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/ready")" = 200 ] && return 0
    sleep 0.2
  done
  tail -20 "$log" >&2
  die "$base/ready never answered 200"
}
