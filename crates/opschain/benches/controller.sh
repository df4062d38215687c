#!/usr/bin/env bash
# Controller throughput: one change whose root step adds N trivial children that run in parallel,
# on the process backend (BENCHMARKS.md). Prints steps per second over the change's wall time.
# Also prints the CPU time the run took (controller and agents), per step: on the 2-core benchmark
# machine the run is CPU-bound with the default worker count, so that is what bounds steps/s.
# Usage: crates/opschain/benches/controller.sh [CHILDREN]   (default 1000); extra `opschain change run` flags
# (e.g. --workers 32) may follow.
set -euo pipefail
cd "$(dirname "$0")/../../.."
children=${1:-1000}
shift || true
cargo build -q --release --bin opschain
# The agent as it ships: the static build (OPSCHAIN_RUNNER_BIN=... overrides it, e.g. with
# target/release/opschain-runner to compare the dynamically linked one).
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
export OPSCHAIN_RUNNER_BIN=${OPSCHAIN_RUNNER_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$work/repo
mkdir -p "$repo/.opschain"
cat > "$repo/.opschain/actions.toml" <<TOML
[actions.fanout]
description = "Adds $children trivial children, run in parallel"
run = 'for i in \$(seq $children); do echo noop; done >> "\$OPSCHAIN_CHILD_STEPS"'
run_as = "parallel"

[actions.noop]
command = ["true"]
TOML
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=bench commit -qm bench
# A change names a project and environment that exist.
./target/release/opschain --state-dir "$work/state" project create --code bench >/dev/null && ./target/release/opschain --state-dir "$work/state" environment create -p bench --code dev >/dev/null
start=$(date +%s.%N)
/usr/bin/time -o "$work/cpu" -f "%U %S" ./target/release/opschain change run --state-dir "$work/state" --repo "$repo" \
  --project bench --environment dev --action fanout "$@" >"$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
end=$(date +%s.%N)
read -r user sys < "$work/cpu"
python3 -c "
s, e, n, u, k = float('$start'), float('$end'), $children + 1, float('$user'), float('$sys')
print(f'{n} steps in {e - s:.2f} s: {n / (e - s):.0f} steps/s (target >= 300 on 2 cores); '
      f'CPU {u:.2f} s user + {k:.2f} s system = {(u + k) / n * 1000:.1f} ms a step')"
