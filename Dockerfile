# ringkv:local, assembled from files on the host: no base image, nothing pulled.
#
# Build it with scripts/docker-build.sh, which builds the release binary and stages the
# build context (target/docker-context): the binary, the shared libraries `ldd` lists
# and the dynamic loader, each at its own path, plus a few files from docker/. With a
# registry at hand, Dockerfile.multistage builds the same image from source instead.
FROM scratch

# glibc resolves host names through /etc/nsswitch.conf; Docker bind-mounts /etc/hosts and
# /etc/resolv.conf (its embedded DNS, which knows the compose service names) at run time.
COPY rootfs/ /

# The node runs as this numeric user. A fresh named volume mounted at /data takes the
# owner of the image's /data, so it must belong to that user here already.
COPY --chown=10001:10001 data/ /data/
USER 10001:10001
VOLUME ["/data"]

# Listen on every interface of the container; peers are told the container's own address
# (RINGKV_ADVERTISE_HOST, e.g. the compose service name, resolved once at start).
ENV PATH=/usr/local/bin \
    RINGKV_DATA_DIR=/data \
    RINGKV_HTTP_ADDR=0.0.0.0:7070 \
    RINGKV_RPC_ADDR=0.0.0.0:7071 \
    RINGKV_GOSSIP_ADDR=0.0.0.0:7946 \
    RINGKV_NODE=http://127.0.0.1:7070
EXPOSE 7070/tcp 7071/tcp 7946/udp

# No curl in the image: the binary checks its own /ready.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/ringkv", "health", "--timeout", "2s"]

# SIGTERM makes the node finish its requests, sync and exit 0. Arguments after the image
# name go to `serve`; client commands run with exec (`docker exec node1 ringkv status`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ringkv", "serve"]
