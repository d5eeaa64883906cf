# shellcheck shell=bash
# shellcheck disable=SC2154  # project and compose_files come from the sourcing script
# Shared by the docker scripts (sourced, not run): the compose command and waits.
#
# Needs: $project (a compose project name of the script's own) and the array
# compose_files (extra compose files after docker-compose.yml; may be empty).

# The compose command: the plugin (`docker compose`) where it exists, else the standalone
# `docker-compose` (1.28+ for profiles). Both read the same file.
if docker compose version >/dev/null 2>&1; then
  compose_bin=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_bin=(docker-compose)
else
  echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2
  exit 1
fi

# dc ARGS...: compose on this project, every profile enabled (so node4/node5 count too).
dc() {
  local files=(-f docker-compose.yml) f
  for f in ${compose_files[@]+"${compose_files[@]}"}; do files+=(-f "$f"); done
  "${compose_bin[@]}" --project-name "$project" "${files[@]}" --profile scale "$@"
}

# container I: the container id of node I ('' when it has none).
container() { dc ps -q "node$1" 2>/dev/null | head -n 1; }

# wait_ready URL SECS: until URL/ready answers 200.
wait_ready_url() {
  local url=$1 deadline=$((SECONDS + $2))
  until curl -sf -m 2 -o /dev/null "$url/ready"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# save_logs DIR: each node's container log to DIR/nodeI.log.
save_logs() {
  local i c
  mkdir -p "$1"
  for i in 1 2 3 4 5; do
    c=$(container "$i")
    if [ -n "$c" ]; then docker logs "$c" >"$1/node$i.log" 2>&1 || true; fi
  done
}

# port_busy P: true when 127.0.0.1:P cannot be published. A listener answers a connect;
# a port held as the local end of some connection (any port in the kernel's ephemeral
# range can be) accepts nothing yet still makes docker-proxy's bind fail, so `ss` is
# asked too where it exists.
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
  command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]
}

# check_host_ports BASE COUNT VAR: every port BASE+1..BASE+COUNT is free, or a message
# naming the setting VAR and status 1. A base inside the ephemeral range is refused up
# front: an outgoing connection may take one of its ports between this check and the bind.
check_host_ports() {
  local base=$1 count=$2 var=$3 lo hi i
  if read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null &&
    [ $((base + count)) -ge "$lo" ] && [ $((base + 1)) -le "$hi" ]; then
    echo "ports $((base + 1))..$((base + count)) lie in the ephemeral range $lo..$hi: set $var below it" >&2
    return 1
  fi
  for i in $(seq 1 "$count"); do
    if port_busy $((base + i)); then
      echo "port $((base + i)) is in use: set $var to a free range" >&2
      return 1
    fi
  done
}

# ensure_image: builds ringkv:local when it is missing.
ensure_image() {
  docker image inspect ringkv:local >/dev/null 2>&1 || scripts/docker-build.sh
}
