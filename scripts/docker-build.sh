#!/usr/bin/env bash
# Builds the image ringkv:local with no registry: the release binary from this checkout,
# the shared libraries `ldd` lists for it and the dynamic loader, on a `FROM scratch` base.
#
#   scripts/docker-build.sh [--tag TAG]
#
# The build context is staged in target/docker-context (rebuilt each time):
#   usr/local/bin/ringkv          the binary
#   lib*/…                        every library ldd names, and the loader, at its own path
#   etc/{nsswitch.conf,passwd,group}  from docker/
#   data/                         the volume's mount point (owned by uid 10001 in the image)
# Settings (environment): RINGKV_BIN, a prebuilt binary to use instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=ringkv:local
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "docker-build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "docker-build: $*" >&2; }
start=$SECONDS

if [ -z "${RINGKV_BIN:-}" ]; then
  log "building the release binary"
  cargo build --release --quiet --bin ringkv
  RINGKV_BIN=target/release/ringkv
fi
[ -x "$RINGKV_BIN" ] || { log "no binary at $RINGKV_BIN"; exit 1; }

ctx=target/docker-context
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/data"
cp Dockerfile "$ctx/"
cp "$RINGKV_BIN" "$ctx/rootfs/usr/local/bin/ringkv"
# The image carries no debug info: strip the copy (the host binary keeps its symbols).
strip --strip-debug "$ctx/rootfs/usr/local/bin/ringkv" 2>/dev/null || true
cp docker/nsswitch.conf docker/passwd docker/group "$ctx/rootfs/etc/"

# stage FILE: copies FILE (following symlinks) to the same path under the context.
stage() {
  local dest=$ctx/rootfs$1
  mkdir -p "$(dirname "$dest")"
  cp -L "$1" "$dest"
}
# ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)",
# "linux-vdso.so.1 (0x…)" (in the kernel, no file). A library ldd cannot find is fatal.
libs=$(ldd "$RINGKV_BIN")
if grep -q 'not found' <<<"$libs"; then
  log "missing libraries: $(grep 'not found' <<<"$libs" | tr -s '\n\t' ' ')"; exit 1
fi
while read -r path; do
  stage "$path"
  log "staged $path"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)
# glibc 2.34+ has the files and dns NSS modules inside libc.so.6; an older glibc loads them
# from these files, so they come along when the host has them.
libdir=$(dirname "$(awk '$1 == "libc.so.6" { print $3 }' <<<"$libs")")
for nss in libnss_files.so.2 libnss_dns.so.2; do
  [ -e "$libdir/$nss" ] && stage "$libdir/$nss"
done

log "building $tag from $ctx ($(du -sh "$ctx" | cut -f1))"
# The legacy builder (no buildx here) warns that it is deprecated: show its output only
# when the build fails.
if ! docker build --tag "$tag" "$ctx" >"$ctx.log" 2>&1; then
  cat "$ctx.log" >&2; exit 1
fi
log "built $tag in $((SECONDS - start))s: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
