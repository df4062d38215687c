#!/usr/bin/env bash
# Docker backend: one step, its image reused or rebuilt after an env property change
# (BENCHMARKS.md). A base runner image is built FROM scratch (nothing can be pulled) with the static
# agent, busybox and the opschain-exec link; a one-step change of a repository with the default
# Dockerfile runs once to fill the build cache, then hyperfine times, side by side in one run:
#   step        `opschain change run --backend docker` of that commit and properties: the step
#               image is reused (no `docker build`), the container run with --rm;
#   env-change  the same after a new value of an opschain.env property before each run: a new step
#               image, `docker build` with every layer from the cache up to the RUN line, which reads
#               the env context and so reruns;
#   container   `docker run --rm --entrypoint /bin/true BASE`: the floor, starting and removing one
#               container;
#   run-line    `docker build` of the same build context with a new OPSCHAIN_CONTEXT_DIGEST: the
#               build's floor, the client, the context and the one RUN line that must rerun.
# Prints the medians and the ratios: step / container (target <= 1.2) and
# env-change / (container + run-line) (target <= 1.0). Skips, saying why, where no engine runs.
# Usage: crates/opschain/benches/docker.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-10}
docker=/usr/bin/docker   # Debian's client: builds with BuildKit (see README)
if ! "$docker" info --format '{{.ServerVersion}}' >/dev/null 2>&1; then
  echo "crates/opschain/benches/docker.sh: skipped: no Docker engine answers \`$docker info\`"
  exit 0
fi
command -v hyperfine >/dev/null || { echo "crates/opschain/benches/docker.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
[ -x /bin/busybox ] || { echo "crates/opschain/benches/docker.sh: installing busybox-static" >&2; apt-get install -y -qq busybox-static >/dev/null; }
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
cargo build -q --release --bin opschain --bin opschain-runner
agent=$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner
opschain=$PWD/target/release/opschain
runner=$PWD/target/release/opschain-runner
base=opschain-runner-bench-base:$$

work=$(mktemp -d)
before=$("$docker" images --format '{{.Repository}}:{{.Tag}}' opschain-step | sort)
cleanup() {
  # The step images this run built, and the base.
  comm -13 <(printf '%s\n' "$before") <("$docker" images --format '{{.Repository}}:{{.Tag}}' opschain-step | sort) | xargs -r "$docker" rmi -f >/dev/null 2>&1 || true
  "$docker" rmi -f "$base" opschain-bench-run-line:$$ >/dev/null 2>&1 || true
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
printf '[actions.noop]\ncommand = ["true"]\n' > "$repo/.opschain/actions.toml"
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=bench commit -qm bench
state=$work/state
"$opschain" --state-dir "$state" project create --code bench >/dev/null && "$opschain" --state-dir "$state" environment create -p bench --code dev >/dev/null
env_props() { "$opschain" --state-dir "$state" properties set --project bench --json "{\"opschain\": {\"env\": {\"N\": \"$1\"}}}" >/dev/null; }
env_props fixed
step="$opschain change run --state-dir $state --repo $repo --project bench --environment dev --action noop --backend docker --docker-bin $docker --docker-base-image $base"
$step >"$work/cold.log" 2>&1 || { tail -20 "$work/cold.log"; exit 1; }   # fills the build cache

# The run-line floor: the same build context, written by the same pipeline, built with a new
# context digest each time (the RUN line reruns, the layers before it come from the cache).
"$runner" --repo "$repo" build-context --out "$work/ctx" --base-runner "$base" >/dev/null
cat > "$work/run-line.sh" <<SCRIPT
#!/bin/sh
exec env DOCKER_BUILDKIT=1 $docker build -q --file $work/ctx/Dockerfile \\
  --build-arg OPSCHAIN_BASE_RUNNER=$base --build-arg GIT_REV=HEAD --build-arg GIT_SHA=\$(git -C $repo rev-parse HEAD) \\
  --build-arg OPSCHAIN_VERSION=0.1.0 --build-arg OPSCHAIN_CONTEXT_DIGEST=\$(date +%s%N) \\
  --secret id=step_context_env,src=$work/ctx/step_context_env.json --secret id=opschain-build-secrets,src=$work/ctx.build-secrets.json \\
  --tag opschain-bench-run-line:$$ $work/ctx >/dev/null
SCRIPT
cat > "$work/new-env.sh" <<SCRIPT
#!/bin/sh
exec $opschain --state-dir $state properties set --project bench --json "{\"opschain\": {\"env\": {\"N\": \"\$(date +%s%N)\"}}}" >/dev/null
SCRIPT
chmod +x "$work/run-line.sh" "$work/new-env.sh"

# One --prepare per command, in order: only `env-change` gets a new env property before each run
# (and runs after `step`, whose image stays the one of the fixed value).
hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$work/h.json" \
  --prepare true --prepare "$work/new-env.sh" --prepare true --prepare true \
  -n step "$step" \
  -n env-change "$step" \
  -n container "$docker run --rm --entrypoint /bin/true $base" \
  -n run-line "$work/run-line.sh" >/dev/null
python3 - "$work/h.json" <<'PY'
import json, statistics, sys
med = {r["command"]: statistics.median(r["times"]) * 1e3 for r in json.load(open(sys.argv[1]))["results"]}
floor, run_line = med["container"], med["run-line"]
print(f"docker step, step image reused:        median {med['step']:.0f} ms = {med['step'] / floor:.2f}x the floor (target <= 1.2x)")
print(f"docker step after an env change:        median {med['env-change']:.0f} ms = {med['env-change'] / (floor + run_line):.2f}x floor + RUN line (target <= 1.0x)")
print(f"floor: docker run --rm:                 median {floor:.0f} ms")
print(f"RUN line: docker build rerunning it:    median {run_line:.0f} ms")
PY
