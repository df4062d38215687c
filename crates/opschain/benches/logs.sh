#!/usr/bin/env bash
# The log path's throughput, measured side by side in one run (BENCHMARKS.md):
#   1. the static agent passing a job's output through, timestamped and masked with two secrets
#      set, to /dev/null, against `cat` of the same file to /dev/null (target: >= 300 MB/s);
#   2. a 1,000,000-line step (16 MB) through the agent and the controller into the store,
#      `opschain change run` to /dev/null, against the same change with a step printing nothing:
#      end-to-end MB/s, every line checked in the store (target: >= 50 MB/s).
# Usage: crates/opschain/benches/logs.sh [MB]   (default 200 MB of 90-byte lines for part 1)
set -euo pipefail
cd "$(dirname "$0")/../../.."
mb=${1:-200}
command -v hyperfine >/dev/null || { echo "crates/opschain/benches/logs.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
cargo build -q --release --bin opschain
bin=$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# 1. Pass-through: 90-byte numbered lines, neither secret in them.
python3 - "$work/out.txt" "$mb" <<'PY'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
line = "line {:012d} " + "x" * 71 + "\n"   # 90 bytes
with open(path, "w") as f:
    n = mb * 1_000_000 // 90
    for start in range(0, n, 100_000):
        f.write("".join(line.format(i) for i in range(start, min(n, start + 100_000))))
PY
size=$(stat -c %s "$work/out.txt")
repo=$work/repo
mkdir -p "$repo/.opschain"
cat_bin=$(command -v cat)
printf '[actions.print]\ncommand = ["%s", "%s"]\n' "$cat_bin" "$work/out.txt" > "$repo/.opschain/actions.toml"
echo '{"context": {"step": {"action": "print"}}, "secrets": {"DB_PASSWORD": "hunter2-correct-horse", "API_TOKEN": "tok_9f8e7d6c5b4a"}}' > "$repo/.opschain/step_context.json"
"$bin" --repo "$repo" step >/dev/null
hyperfine -N --style basic --warmup 1 --runs "${RUNS:-5}" --export-json "$work/pass.json" \
  -n cat "$cat_bin $work/out.txt" \
  -n agent "$bin --repo $repo step" --output=null >/dev/null

# 2. End to end: a million numbered lines through `opschain change run` into the store.
export OPSCHAIN_RUNNER_BIN=$bin
e2e=$work/e2e
mkdir -p "$e2e/.opschain"
# The lines are written beforehand, so that the step's own work is a `cat` (`seq -f` would spend
# more CPU formatting them than the whole log path).
seq -f 'line %010g' 1 1000000 > "$work/lines.txt"
cat > "$e2e/.opschain/actions.toml" <<TOML
[actions.flood]
command = ["$cat_bin", "$work/lines.txt"]

[actions.quiet]
command = ["true"]
TOML
git -C "$e2e" init -q && git -C "$e2e" add -A && git -C "$e2e" -c user.email=b@b -c user.name=bench commit -qm bench
flood_bytes=$(stat -c %s "$work/lines.txt")
n=0
change() { # $1: action; runs a change in a fresh state directory
  n=$((n + 1))
  ./target/release/opschain --state-dir "$work/state-$1-$n" project create --code bench >/dev/null && ./target/release/opschain --state-dir "$work/state-$1-$n" environment create -p bench --code dev >/dev/null
  ./target/release/opschain change run --state-dir "$work/state-$1-$n" --repo "$e2e" --project bench --environment dev --action "$1" >/dev/null
}
export -f change
export work e2e n
hyperfine -N --style basic --warmup 1 --runs "${RUNS:-5}" --export-json "$work/e2e.json" \
  -n quiet "bash -c 'change quiet'" \
  -n flood "bash -c 'change flood'" >/dev/null
./target/release/opschain --state-dir "$work/state-cpu" project create --code bench >/dev/null && ./target/release/opschain --state-dir "$work/state-cpu" environment create -p bench --code dev >/dev/null
/usr/bin/time -o "$work/cpu" -f "%U %S" ./target/release/opschain change run --state-dir "$work/state-cpu" --repo "$e2e" --project bench --environment dev --action flood >/dev/null
state=$(ls -d "$work"/state-flood-* | head -1)
stored=$(./target/release/opschain change logs 1 -o json --state-dir "$state" | grep -c ' stdout| line ')
[ "$stored" = 1000000 ] || { echo "the store holds $stored lines, not 1000000"; exit 1; }

python3 - "$work/pass.json" "$work/e2e.json" "$size" "$flood_bytes" $(cat "$work/cpu") <<'PY'
import json, statistics, sys
def medians(path):
    return {r["command"]: statistics.median(r["times"]) for r in json.load(open(path))["results"]}
p, e = medians(sys.argv[1]), medians(sys.argv[2])
size, flood = int(sys.argv[3]), int(sys.argv[4])
print(f"pass-through of {size / 1e6:.0f} MB, two secrets, timestamped, to /dev/null:")
print(f"  cat   {p['cat']:.3f} s  {size / p['cat'] / 1e6:8.0f} MB/s")
print(f"  agent {p['agent']:.3f} s  {size / p['agent'] / 1e6:8.0f} MB/s  ({p['agent'] / p['cat']:.1f}x cat's time; target >= 300 MB/s)")
print(f"end to end, 1,000,000 lines ({flood / 1e6:.1f} MB) through agent, controller and store (every line stored):")
print(f"  change with a quiet step {e['quiet']:.3f} s; with the flood {e['flood']:.3f} s")
print(f"  {flood / e['flood'] / 1e6:.0f} MB/s over the whole change; {flood / (e['flood'] - e['quiet']) / 1e6:.0f} MB/s over what the flood adds (target >= 50 MB/s)")
cpu = float(sys.argv[5]) + float(sys.argv[6])
print(f"  CPU time of one flood change (controller, agent, job): {cpu:.2f} s, {flood / cpu / 1e6:.0f} MB per CPU second")
PY
