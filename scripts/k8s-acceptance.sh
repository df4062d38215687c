#!/usr/bin/env bash
# Acceptance of the Kubernetes backend on a cluster you point it at (kind, k3s, minikube or any
# other): the demo change (fixtures/demo: 3 levels of steps, sequential and parallel children,
# files, env, property changes, a secret) as Jobs, then a cancelled step, checked from both sides
# (the controller's store and `kubectl`). Nothing here runs without a cluster; the repository's
# own tests cover what needs none (README, "Kubernetes backend").
#
# Needs: the current kubectl context (or KUBECONFIG) pointing at the cluster, with rights in the
# namespace to create/get/patch/delete Jobs, create Secrets, list/get Pods and get pods/log; a
# Docker engine here (it builds the step images); a registry that this engine pushes to and the
# cluster's nodes pull from (kind: a registry container joined to the kind network and a
# containerd mirror, see https://kind.sigs.k8s.io/docs/user/local-registry/; k3s: registries.yaml).
#
# Usage: scripts/k8s-acceptance.sh --registry HOST:PORT [--namespace NS] [--base-image IMAGE]
#   --registry    where step images are pushed and pulled (required)
#   --namespace   the namespace of the Jobs (default: opschain-acceptance, created if missing)
#   --base-image  a base runner image on this engine (default: one built here FROM scratch with
#                 the static agent and busybox, pushed nowhere: the step images built on it are)
set -euo pipefail
cd "$(dirname "$0")/.."
registry="" namespace=opschain-acceptance base=""
while [ $# -gt 0 ]; do
  case $1 in
    --registry) registry=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --base-image) base=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "k8s-acceptance: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
[ -n "$registry" ] || { echo "k8s-acceptance: --registry HOST:PORT is required (see --help)" >&2; exit 64; }
docker=${OPSCHAIN_DOCKER_BIN:-/usr/bin/docker}
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "PASS: $*"; }

kubectl version >/dev/null 2>&1 || fail "kubectl cannot reach a cluster (kubectl version): point KUBECONFIG or the current context at one"
"$docker" info >/dev/null 2>&1 || fail "no Docker engine answers $docker info (it builds the step images)"
kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace" >/dev/null
for verb in "create jobs" "patch jobs" "delete jobs" "create secrets" "list pods" "get pods/log"; do
  [ "$(kubectl auth can-i $verb -n "$namespace")" = yes ] || fail "the current user may not $verb in $namespace"
done
pass "cluster reachable, rights in namespace $namespace"

echo "==> building the controller with the kubernetes feature and the static agent"
cargo build -q --release -p opschain --features kubernetes --bin opschain
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
opschain=$PWD/target/release/opschain
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$base" ]; then
  base=opschain-acceptance-base:latest
  mkdir -p "$work/base/rootfs/usr/local/bin" "$work/base/rootfs/bin"
  cp target/x86_64-unknown-linux-musl/release/opschain-runner "$work/base/rootfs/usr/local/bin/"
  busybox=$(command -v busybox || true)
  [ -n "$busybox" ] && file -L "$busybox" | grep -q static || fail "a static busybox is needed for the default base image (apt-get install busybox-static), or give --base-image"
  cp "$busybox" "$work/base/rootfs/bin/busybox"
  cat > "$work/base/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
# The pods run as uid 10001 (non-root): the demo's absolute opschain.files path, /etc/demo/motd,
# must be writable by that user, as a runner image must provide for its projects' paths.
RUN mkdir -p -m 1777 /tmp && mkdir -p /opt/opschain /etc/demo && chown -R 10001:10001 /opt/opschain /etc/demo
ENV PATH=/usr/local/bin:/bin
WORKDIR /opt/opschain
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/opschain-runner"]
DOCKERFILE
  DOCKER_BUILDKIT=1 "$docker" build -q -t "$base" "$work/base" >/dev/null
fi
state=$work/state
"$opschain" --state-dir "$state" project create --code demo >/dev/null && "$opschain" --state-dir "$state" environment create -p demo --code dev >/dev/null
run() { "$opschain" --state-dir "$state" change run --backend kubernetes --registry "$registry" --kube-namespace "$namespace" \
  --docker-bin "$docker" --docker-base-image "$base" --grace-secs 5 "$@"; }

echo "==> 1. the demo change as Jobs"
printf '{"API_TOKEN": "acceptance-token"}' > "$work/secret.json"
"$opschain" --state-dir "$state" secrets set demo --file "$work/secret.json" >/dev/null
run --repo fixtures/demo --project demo --environment dev --action deploy --secrets demo | tee "$work/demo.log" || fail "the demo change did not succeed (log above)"
grep -q "demo-app is managed by opschain" "$work/demo.log" || fail "the step log lacks the action's output"
! grep -q "opschain-result" "$work/demo.log" || fail "a result frame line reached the log"
project_props=$("$opschain" --state-dir "$state" properties show --project demo | tr -d ' \n')
[ "$project_props" = '{"deploy_count":1}' ] || fail "project properties: $project_props"
env_props=$("$opschain" --state-dir "$state" properties show --project demo --environment dev | tr -d ' \n')
[ "$env_props" = '{"web":{"version":"2.4.1"},"worker":{"version":"2.4.1"},"last_verified":"2.4.1"}' ] || fail "environment properties: $env_props"
pass "demo change: 6 steps, properties applied, logs streamed"
jobs=$(kubectl get jobs -n "$namespace" -l app.kubernetes.io/managed-by=opschain,opschain.io/change=1 -o json)
count=$(echo "$jobs" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
[ "$count" = 6 ] || fail "expected 6 Jobs of change 1, found $count"
echo "$jobs" | python3 -c '
import json, sys
for job in json.load(sys.stdin)["items"]:
    s, p = job["spec"], job["spec"]["template"]["spec"]
    c = p["containers"][0]
    assert s["backoffLimit"] == 0 and "ttlSecondsAfterFinished" in s, job["metadata"]["name"]
    assert p["automountServiceAccountToken"] is False and p["securityContext"]["runAsUser"] == 10001 and p["securityContext"]["runAsNonRoot"] is True
    assert job["status"].get("succeeded") == 1, job["status"]
' || fail "a Job lacks a required field or did not succeed"
secrets=$(kubectl get secrets -n "$namespace" -l opschain.io/change=1 -o json | python3 -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin)["items"] if s["metadata"]["ownerReferences"][0]["kind"] == "Job"))')
[ "$secrets" = 6 ] || fail "expected 6 Secrets owned by their Jobs, found $secrets"
pass "6 Jobs (no retries, TTL, uid 10001, non-root, no token), 6 Secrets owned by them"

echo "==> 2. cancel: the Job is deleted, the agent's grace ladder runs, its result comes back"
mkdir -p "$work/slow/.opschain"
cat > "$work/slow/.opschain/actions.toml" <<'TOML'
[actions.slow]
run = '''
trap 'echo got TERM; opschain-runner property set --environment stopped yes; exit 143' TERM
echo started; while true; do sleep 1; done
'''
TOML
"$opschain" --state-dir "$state" project create --code slow >/dev/null && "$opschain" --state-dir "$state" environment create -p slow --code dev >/dev/null
run --repo "$work/slow" --project slow --environment dev --action slow > "$work/slow.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q started "$work/slow.log" && break; sleep 1; done
grep -q started "$work/slow.log" || { kill $pid; fail "the slow step did not start within 300 s"; }
change=$("$opschain" --state-dir "$state" change list | awk '$3 == "slow" {print $1}' | tail -1)
"$opschain" --state-dir "$state" change cancel "$change"
status=0; wait $pid || status=$?
cat "$work/slow.log"
[ "$status" = 2 ] || fail "the cancelled change exited $status, not 2"
grep -q "got TERM" "$work/slow.log" || fail "the action did not get SIGTERM"
stopped=$("$opschain" --state-dir "$state" properties show --project slow --environment dev | tr -d ' \n')
[ "$stopped" = '{"stopped":"yes"}' ] || fail "the cancelled step's result did not come back: $stopped"
for _ in $(seq 1 60); do
  [ -z "$(kubectl get jobs -n "$namespace" -l opschain.io/change="$change" -o name)" ] && break; sleep 1
done
[ -z "$(kubectl get jobs -n "$namespace" -l opschain.io/change="$change" -o name)" ] || fail "the cancelled step's Job is still there"
pass "cancel: SIGTERM reached the action, its property change came back, the Job and Secret are gone"
echo "==> all acceptance checks passed on $(kubectl config current-context)"
