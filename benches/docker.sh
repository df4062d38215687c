#!/usr/bin/env bash
# Docker backend: one step with a warm build cache (BENCHMARKS.md). A base runner image is built
# FROM scratch (nothing can be pulled) with the static agent and busybox; a one-step change runs
# once to fill the build cache, then hyperfine times, side by side in one run:
#   step       `opschain change run --backend docker`: a one-step change of a commit already run
#              (its step image is reused: no `docker build`), the container run with --rm;
#   rebuild    the same after an empty commit before each run: a new step image, so `docker build`
#              runs, every layer from BuildKit's warm cache;
#   container  `docker run --rm --entrypoint /bin/true BASE`: the floor, starting and removing one container.
# Prints the medians and the step's time over the floor. Skips, saying why, where no engine runs.
# Usage: benches/docker.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
docker=/usr/bin/docker   # Debian's client: builds with BuildKit (see README)
if ! "$docker" info --format '{{.ServerVersion}}' >/dev/null 2>&1; then
  echo "benches/docker.sh: skipped: no Docker engine answers \`$docker info\`"
  exit 0
fi
command -v hyperfine >/dev/null || { echo "benches/docker.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
[ -x /bin/busybox ] || { echo "benches/docker.sh: installing busybox-static" >&2; apt-get install -y -qq busybox-static >/dev/null; }
cargo build -q --release --target x86_64-unknown-linux-musl --no-default-features --bin opschain-runner
cargo build -q --release --bin opschain
agent=$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner
opschain=$PWD/target/release/opschain
base=opschain-runner-bench-base:latest

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base/rootfs/usr/local/bin" "$work/base/rootfs/bin"
cp "$agent" "$work/base/rootfs/usr/local/bin/opschain-runner"
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
step="$opschain change run --state-dir $work/state --repo $repo --project bench --environment dev --action noop --backend docker --docker-bin $docker --docker-base-image $base"
$step >"$work/cold.log" 2>&1 || { tail -20 "$work/cold.log"; exit 1; }   # fills the build cache

commit="git -C $repo -c user.email=b@b -c user.name=bench commit -q --allow-empty -m again"
# One --prepare per command, in order: only `rebuild` gets a new commit before each run.
hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$work/h.json" \
  --prepare true --prepare "$commit" --prepare true \
  -n step "$step" \
  -n rebuild "$step" \
  -n container "$docker run --rm --entrypoint /bin/true $base" >/dev/null
python3 - "$work/h.json" <<'PY'
import json, statistics, sys
med = {r["command"]: statistics.median(r["times"]) * 1e3 for r in json.load(open(sys.argv[1]))["results"]}
print(f"docker step, step image reused: median {med['step']:.0f} ms (target <= 1000 ms)")
print(f"docker step, new commit, warm BuildKit cache: median {med['rebuild']:.0f} ms")
print(f"docker run --rm (the floor):   median {med['container']:.0f} ms; the step is {med['step'] / med['container']:.1f}x the floor")
PY
