#!/usr/bin/env bash
# Validates deploy/k8s/ offline: no cluster is needed (nor reached).
#
#   scripts/k8s-validate.sh [--install] [--k8s-version X.Y.Z]
#
# 1. Schemas: every manifest against the Kubernetes OpenAPI schemas that the PyPI
#    package kubernetes-validate ships (strict: unknown fields fail too).
# 2. Wiring, which no schema knows: the StatefulSet's serviceName is the headless Service
#    (clusterIP None, not-ready pods published); the seed is pod 0 of that Service; the
#    advertised host is the pod's own name under it; the Services and the PDB select the
#    pods; every port a Service or probe names is declared; readiness is /ready and
#    liveness /health; a volume claim per pod is mounted at the data dir; every container
#    has resource limits; the PDB allows one pod down; the kustomization lists every file.
# 3. Flags: every RINGKV_* variable the manifest sets is one the binary reads (from
#    `ringkv serve --help` and `ringkv status --help`), when a binary is at hand.
# 4. Self-check: broken copies of the manifests (a wrong type, an unknown field, a probe
#    on another path, a seed that is not pod 0) must each fail, or the checks prove nothing.
#
#   --install            pip-install the pinned kubernetes-validate into
#                        target/k8s-validate-venv first when it is missing
#   --k8s-version X.Y.Z  the Kubernetes version to validate against (default: the
#                        package's newest)
#
# Settings (environment):
#   K8S_VALIDATE_VENV  the venv (default target/k8s-validate-venv)
#   RINGKV_BIN  the ringkv binary for step 3 (default target/release/ringkv, else
#               target/debug/ringkv; skipped, and said so, when there is none)
#
# What this does not test: that the pods start, join and serve in a real cluster (no
# cluster can be run here), DNS, volume provisioning, or the image pull.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
install=0
k8s_version=
while [ $# -gt 0 ]; do
  case $1 in
    --install) install=1; shift ;;
    --k8s-version) k8s_version=${2:?--k8s-version needs a version}; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "k8s-validate.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "k8s-validate.sh: $*" >&2; exit 1; }

venv=${K8S_VALIDATE_VENV:-target/k8s-validate-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  [ "$install" = 1 ] || die "needs kubernetes-validate $KV_VERSION in $venv; run with --install"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION"
fi
kv=("$venv/bin/kubernetes-validate" --strict --quiet)
[ -n "$k8s_version" ] && kv+=(-k "$k8s_version")
py="$venv/bin/python"

manifests=(deploy/k8s/service-headless.yaml deploy/k8s/service-client.yaml
  deploy/k8s/pdb.yaml deploy/k8s/statefulset.yaml)

bin=${RINGKV_BIN:-}
if [ -z "$bin" ]; then
  for b in target/release/ringkv target/debug/ringkv; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
envs=$(mktemp)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-k8s.XXXXXX")
trap 'rm -rf "$tmp" "$envs"' EXIT
if [ -n "$bin" ]; then
  [ -x "$bin" ] || die "no ringkv binary at $bin"
  { "$bin" serve --help; "$bin" status --help; } | grep -o 'env: RINGKV_[A-Z_]*' |
    sed 's/^env: //' | sort -u >"$envs"
  [ -s "$envs" ] || die "$bin --help names no RINGKV_* variable"
else
  echo "k8s-validate.sh: no ringkv binary (RINGKV_BIN): the RINGKV_* names are not checked"
fi

# The wiring checks, on the four manifests given as arguments (in the order above).
wiring() {
  ENVS="$envs" "$py" - "$@" <<'PY'
import os, sys, yaml

def load(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if len(docs) != 1:
        sys.exit(f"{path}: expected one document, found {len(docs)}")
    return docs[0]

headless, client, pdb, sts = (load(p) for p in sys.argv[1:5])
errors = []
def check(ok, what):
    if not ok:
        errors.append(what)

check(headless["kind"] == "Service" and headless["spec"].get("clusterIP") == "None",
      "the headless Service has clusterIP None")
check(headless["spec"].get("publishNotReadyAddresses") is True,
      "the headless Service publishes not-ready pods (a joining node must be found)")
spec = sts["spec"]
name, ns_service = sts["metadata"]["name"], headless["metadata"]["name"]
check(sts["kind"] == "StatefulSet", "statefulset.yaml is a StatefulSet")
check(spec["serviceName"] == ns_service, "serviceName is the headless Service")
check(spec.get("replicas") == 3, "3 replicas")
labels = spec["template"]["metadata"]["labels"]
def selects(selector):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
check(selects(spec["selector"]["matchLabels"]), "the StatefulSet selects its pods")
check(selects(headless["spec"]["selector"]), "the headless Service selects the pods")
check(selects(client["spec"]["selector"]), "the client Service selects the pods")
check(selects(pdb["spec"]["selector"]["matchLabels"]), "the PDB selects the pods")
check(pdb["spec"].get("maxUnavailable") == 1, "the PDB allows one pod down")

(container,) = spec["template"]["spec"]["containers"]
ports = {p["name"]: p for p in container["ports"]}
for svc in (headless, client):
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort")
        check(target in ports, f"{svc['metadata']['name']}: targetPort {target} is declared")
        if target in ports:
            check(ports[target].get("protocol", "TCP") == p.get("protocol", "TCP"),
                  f"{svc['metadata']['name']}: {target} has the container's protocol")
check(ports.get("gossip", {}).get("protocol") == "UDP", "gossip is UDP")
for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
    get = container.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"{probe} is GET {path}")
    check(get.get("port") in ports, f"{probe} names a declared port")

env = {e["name"]: e for e in container["env"]}
value = lambda n: env.get(n, {}).get("value", "")
check(value("RINGKV_SEEDS").startswith(f"{name}-0.{ns_service}.$(POD_NAMESPACE).svc."),
      "the seed is pod 0 under the headless Service")
check(value("RINGKV_SEEDS").endswith(":7946"), "the seed is pod 0's gossip port")
check(value("RINGKV_ADVERTISE_HOST").startswith(f"$(POD_NAME).{ns_service}.$(POD_NAMESPACE).svc."),
      "the advertised host is the pod's own stable name")
seed_host = value("RINGKV_SEEDS").rsplit(":", 1)[0]
check(seed_host.replace(f"{name}-0.", "$(POD_NAME).", 1) == value("RINGKV_ADVERTISE_HOST"),
      "pod 0's advertised host is its seed's host (so it knows it is the seed)")
for var in ("POD_NAME", "POD_NAMESPACE"):
    check(env.get(var, {}).get("valueFrom", {}).get("fieldRef"), f"{var} from the downward API")
    names = list(env)
    users = [n for n in names if f"$({var})" in value(n)]
    check(all(names.index(var) < names.index(u) for u in users),
          f"{var} is defined before the variables that use it")
for addr in ("RINGKV_HTTP_ADDR", "RINGKV_RPC_ADDR", "RINGKV_GOSSIP_ADDR"):
    port = value(addr).rsplit(":", 1)[-1]
    check(any(str(p["containerPort"]) == port for p in ports.values()),
          f"{addr} listens on a declared port")

claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
check(claims, "a volume claim per pod")
check(any(mounts.get(c) == value("RINGKV_DATA_DIR") for c in claims),
      "a claim is mounted at RINGKV_DATA_DIR")
limits = container.get("resources", {}).get("limits", {})
check("cpu" in limits and "memory" in limits, "cpu and memory limits")

known = os.environ.get("ENVS")
if known and os.path.getsize(known) > 0:
    accepted = set(open(known).read().split())
    for n in env:
        if n.startswith("RINGKV_"):
            check(n in accepted, f"{n} is a variable ringkv reads")

kust = yaml.safe_load(open(os.path.join(os.path.dirname(sys.argv[4]), "kustomization.yaml")))
check(sorted(kust["resources"]) == sorted(os.path.basename(p) for p in sys.argv[1:5]),
      "the kustomization lists every manifest")

for e in errors:
    print(f"FAIL {e}")
sys.exit(1 if errors else 0)
PY
}

echo "== schemas (kubernetes-validate $KV_VERSION, strict)"
"${kv[@]}" "${manifests[@]}"
echo "== wiring"
wiring "${manifests[@]}"

echo "== self-check: broken copies must fail"
broken() { # name, file to break, sed expression
  local dir="$tmp/$1"
  mkdir -p "$dir"
  cp deploy/k8s/*.yaml "$dir/"
  sed -i "$3" "$dir/$2"
  cmp -s "$dir/$2" "deploy/k8s/$2" && die "self-check $1: the edit changed nothing"
  local copies=("$dir/service-headless.yaml" "$dir/service-client.yaml" "$dir/pdb.yaml"
    "$dir/statefulset.yaml")
  if "${kv[@]}" "${copies[@]}" >/dev/null 2>&1 && wiring "${copies[@]}" >/dev/null 2>&1; then
    die "self-check $1: a broken manifest passed"
  fi
  echo "caught: $1"
}
broken wrong-type statefulset.yaml 's/replicas: 3/replicas: three/'
broken unknown-field statefulset.yaml 's/containerPort: 7070/containerPortt: 7070/'
broken probe-path statefulset.yaml 's|path: /ready|path: /healthz|'
broken seed-not-pod-0 statefulset.yaml 's|value: ringkv-0.ringkv|value: ringkv-1.ringkv|'
broken pdb-selector pdb.yaml 's|app.kubernetes.io/name: ringkv|app.kubernetes.io/name: other|'
broken cluster-ip service-headless.yaml 's|clusterIP: None|clusterIP: 10.0.0.1|'
if [ -s "$envs" ]; then
  broken unknown-env statefulset.yaml 's|name: RINGKV_LOG_FORMAT|name: RINGKV_LOG_FORMATS|'
fi
echo "k8s-validate.sh: deploy/k8s is valid"
