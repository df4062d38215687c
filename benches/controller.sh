#!/usr/bin/env bash
# Controller throughput: one change whose root step adds N trivial children that run in parallel,
# on the process backend (BENCHMARKS.md). Prints steps per second over the change's wall time.
# Usage: benches/controller.sh [CHILDREN]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
children=${1:-1000}
cargo build -q --release --bin opschain --bin opschain-runner
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
start=$(date +%s.%N)
./target/release/opschain change run --state-dir "$work/state" --repo "$repo" --project bench --environment dev \
  --action fanout >"$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
end=$(date +%s.%N)
python3 -c "
import sys; s, e, n = float('$start'), float('$end'), $children + 1
print(f'{n} steps in {e - s:.2f} s: {n / (e - s):.0f} steps/s (target >= 300 on 2 cores)')"
