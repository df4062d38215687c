#!/usr/bin/env bash
# The stream transport's cost over the bind mount, on the Docker backend (BENCHMARKS.md,
# docs/transport.md). A base runner image is built FROM scratch (nothing can be pulled) with the
# static agent, busybox and the opschain-exec link; a repository has two actions:
#   noop   a typical step: a few hundred bytes of context in, a ~1 KB result out;
#   big    a step over 5 MB properties: its environment properties hold a 5 MB value, so 5 MB of
#          context goes in and a 5 MB result (the merged properties) comes out.
# Each runs once per transport to build its image and fill the properties, then hyperfine times,
# side by side in one run, `opschain change run --backend docker` of each action with
# `--transport bind-mount` and `--transport stream` (the step image reused: no build).
# Prints the medians and stream/bind-mount ratios. Skips, saying why, where no engine runs.
# Usage: crates/opschain/benches/transport.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-10}
docker=/usr/bin/docker
if ! "$docker" info --format '{{.ServerVersion}}' >/dev/null 2>&1; then
  echo "crates/opschain/benches/transport.sh: skipped: no Docker engine answers \`$docker info\`"
  exit 0
fi
command -v hyperfine >/dev/null || { echo "crates/opschain/benches/transport.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
[ -x /bin/busybox ] || { echo "crates/opschain/benches/transport.sh: installing busybox-static" >&2; apt-get install -y -qq busybox-static >/dev/null; }
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
cargo build -q --release --bin opschain
agent=$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner
opschain=$PWD/target/release/opschain
base=k8s-transport-bench-base:$$

work=$(mktemp -d)
before=$("$docker" images --format '{{.Repository}}:{{.Tag}}' opschain-step | sort)
cleanup() {
  # The step images this run built, and the base.
  comm -13 <(printf '%s\n' "$before") <("$docker" images --format '{{.Repository}}:{{.Tag}}' opschain-step | sort) | xargs -r "$docker" rmi -f >/dev/null 2>&1 || true
  "$docker" rmi -f "$base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/base/rootfs/usr/local/bin" "$work/base/rootfs/bin"
cp "$agent" "$work/base/rootfs/usr/local/bin/opschain-runner"
ln -s opschain-runner "$work/base/rootfs/usr/local/bin/opschain-exec"
cp /bin/busybox "$work/base/rootfs/bin/busybox"
cat > "$work/base/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p -m 1777 /tmp && mkdir -p /opt/opschain
ENV PATH=/usr/local/bin:/bin
WORKDIR /opt/opschain
ENTRYPOINT ["/usr/local/bin/opschain-runner"]
DOCKERFILE
DOCKER_BUILDKIT=1 "$docker" build -q -t "$base" "$work/base" >/dev/null

repo=$work/repo
mkdir -p "$repo/.opschain"
cat > "$repo/.opschain/actions.toml" <<'TOML'
[actions.noop]
command = ["true"]

[actions.big]
run = '''
test -s big.json || { printf '{"big": "'; yes 0123456789abcdef | tr -d '\n' | head -c 5242880; printf '"}'; } > big.json
cp big.json "$OPSCHAIN_ENVIRONMENT_PROPERTIES"
'''
TOML
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=bench commit -qm bench

run() { # STATE ACTION TRANSPORT
  echo "$opschain change run --state-dir $work/$1 --repo $repo --project bench --environment dev --action $2 --backend docker --docker-bin $docker --docker-base-image $base --transport $3"
}
for t in bind-mount stream; do "$opschain" --state-dir "$work/state-$t" project create --code bench >/dev/null && "$opschain" --state-dir "$work/state-$t" environment create -p bench --code dev >/dev/null; done
for t in bind-mount stream; do
  for a in noop big; do
    $(run "state-$t" "$a" "$t") >"$work/cold-$t-$a.log" 2>&1 || { tail -20 "$work/cold-$t-$a.log"; exit 1; }
  done
done
hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$work/h.json" \
  -n noop-bind-mount "$(run state-bind-mount noop bind-mount)" \
  -n noop-stream "$(run state-stream noop stream)" \
  -n big-bind-mount "$(run state-bind-mount big bind-mount)" \
  -n big-stream "$(run state-stream big stream)" >/dev/null
python3 - "$work/h.json" <<'PY'
import json, statistics, sys
results = json.load(open(sys.argv[1]))["results"]
med = {r["command"]: statistics.median(r["times"]) * 1e3 for r in results}
dev = {r["command"]: statistics.stdev(r["times"]) * 1e3 for r in results}
for case, what in (("noop", "typical step (~1 KB result)"), ("big", "5 MB in, 5 MB result out")):
    b, s = med[f"{case}-bind-mount"], med[f"{case}-stream"]
    db, ds = dev[f"{case}-bind-mount"], dev[f"{case}-stream"]
    print(f"{what:30} bind-mount {b:6.0f} ms (sd {db:4.0f})   stream {s:6.0f} ms (sd {ds:4.0f})   stream/bind-mount {s / b:.2f}x   ({s - b:+.0f} ms)")
PY
