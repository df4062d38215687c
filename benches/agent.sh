#!/usr/bin/env bash
# Whole-process figures of the static agent, measured side by side in one run (BENCHMARKS.md):
#   1. `opschain-runner step` with a trivial action on a typical context (50 KB of properties,
#      10 files, 20 env vars) against running the same action directly: overhead and peak RSS;
#   2. `opschain-exec CMD` against exec'ing CMD directly;
#   3. the static binary's size;
#   4. beside them, Debian's `tini-static -s -- true` and `dumb-init true`: the step's overhead as
#      a multiple of tini's (targets: empty context <= 2x, typical context <= 3x);
#   5. the same commands interleaved round by round (INTERLEAVED_ROUNDS, default 300), so that
#      each meets the disk in the same state (see below).
# On a disk, file creation sets much of the step's cost: `TMPDIR=/dev/shm benches/agent.sh` runs
# it all on tmpfs, which separates the agent's own cost from the disk's.
# Beside the step it times its floor (benches/step_floor.rs): the same files created, the same
# action spawned and the result written (temp file, rename), with nothing parsed, merged or logged;
# what this disk and kernel cost a step whatever the agent does.
# Usage: benches/agent.sh [RUNS]   (default 300 runs of each command)
#   BASELINE=/path/to/an/older/opschain-runner benches/agent.sh   also times that agent's step and
#   opschain-exec against this one's (e.g. one built from an earlier commit), in pairs run in both
#   orders, for a side-by-side ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
# Rounds of the interleaved timing (each runs every command once).
INTERLEAVED_ROUNDS=${INTERLEAVED_ROUNDS:-300}

command -v hyperfine >/dev/null || { echo "benches/agent.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
# The peers: Debian's tini (static) and dumb-init, the init processes of many containers.
command -v tini-static >/dev/null || { echo "benches/agent.sh: installing tini" >&2; apt-get install -y -qq tini >/dev/null; }
command -v dumb-init >/dev/null || { echo "benches/agent.sh: installing dumb-init" >&2; apt-get install -y -qq dumb-init >/dev/null; }
tini=$(command -v tini-static)
dumb_init=$(command -v dumb-init)
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner --example step_floor
bin=$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner
floor=$PWD/target/x86_64-unknown-linux-musl/release/examples/step_floor
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
repo=$work/repo
mkdir -p "$repo/.opschain"
ln -s "$bin" "$work/opschain-exec"
true_bin=$(command -v true)

# The typical context: 50 KB of properties, 10 files, 20 env vars; the action runs `true`.
python3 - "$repo" "$true_bin" <<'PY'
import json, sys
repo, true_bin = sys.argv[1], sys.argv[2]
env = {f"VAR_{i:02}": f"value-{i}-" + "x" * 20 for i in range(20)}
files = {f"~/config/file-{i}.conf": {"mode": "0600", "content": f"setting_{i} = {i}\n" * 20} for i in range(10)}
servers = [{"name": f"server-{i}", "ip": f"10.0.{i // 250}.{i % 250}", "roles": ["web", "app"], "tags": {"zone": "a", "tier": i % 3}} for i in range(400)]
props = {"app": {"servers": servers}, "opschain": {"env": env, "files": files}}
ctx = {"context": {"project": {"code": "bench"}, "environment": {"code": "dev"}, "step": {"action": "noop"}},
       "project": {"properties": props}, "environment": {"properties": {"region": "ap-southeast-2"}}}
open(f"{repo}/.opschain/step_context.json", "w").write(json.dumps(ctx))
open(f"{repo}/.opschain/actions.toml", "w").write(f'[actions.noop]\ncommand = ["{true_bin}"]\n')
PY
# The same step with an empty context: what the agent costs before it reads any properties.
empty=$work/empty
mkdir -p "$empty/.opschain"
cp "$repo/.opschain/actions.toml" "$empty/.opschain/"
echo '{"context": {"step": {"action": "noop"}}}' > "$empty/.opschain/step_context.json"
size=$(stat -c %s "$repo/.opschain/step_context.json")
echo "context: $size bytes"
"$bin" --repo "$repo" step >/dev/null 2>&1 || { echo "the step failed"; "$bin" --repo "$repo" step; exit 1; }

export OPSCHAIN_REPO_DIR=$repo
# Every run starts as a step does in its fresh container: no runtime copies, no result and no
# declared files yet (replacing an existing file by rename makes ext4 flush it first, a cost a
# real step never pays). The same preparation runs before every command, `direct` included.
hyperfine -N --style basic --warmup 20 --runs "$runs" --prepare "rm -rf $repo/.opschain/step $repo/.opschain/step_result.json $repo/config $empty/.opschain/step $empty/.opschain/step_result.json" --export-json "$work/h.json" \
  -n direct "$true_bin" \
  -n step "$bin --repo $repo step" \
  -n floor "$floor $repo 10 $true_bin" \
  -n step-empty "$bin --repo $empty step" \
  -n exec "$work/opschain-exec $true_bin" \
  -n tini "$tini -s -- $true_bin" \
  -n dumb-init "$dumb_init $true_bin" >/dev/null

# An older agent (BASELINE): timed in pairs, each order once (hyperfine runs one command's runs,
# then the next's, and this disk slows as a run ages it: the order would favour the first).
if [ -n "${BASELINE:-}" ]; then
  mkdir "$work/b" && ln -s "$BASELINE" "$work/b/opschain-exec"
  prep="rm -rf $repo/.opschain/step $repo/.opschain/step_result.json $repo/config"
  for order in "new old" "old new"; do
    args=()
    for who in $order; do
      if [ "$who" = new ]; then args+=(-n "step-$who" "$bin --repo $repo step" -n "exec-$who" "$work/opschain-exec $true_bin")
      else args+=(-n "step-$who" "$BASELINE --repo $repo step" -n "exec-$who" "$work/b/opschain-exec $true_bin"); fi
    done
    hyperfine -N --style basic --warmup 20 --runs "$runs" --prepare "$prep" --export-json "$work/pair-${order// /-}.json" "${args[@]}" >/dev/null
  done
  python3 - "$work/pair-new-old.json" "$work/pair-old-new.json" <<'PY'
import json, math, statistics, sys
ratios = {"step": [], "exec": []}
for path in sys.argv[1:]:
    med = {r["command"]: statistics.median(r["times"]) * 1e3 for r in json.load(open(path))["results"]}
    for what in ratios:
        ratios[what].append(med[f"{what}-old"] / med[f"{what}-new"])
        print(f"{path.rsplit('/', 1)[-1]}: {what} old {med[what + '-old']:.3f} ms, new {med[what + '-new']:.3f} ms")
for what, r in ratios.items():
    print(f"baseline / this agent, {what}: {math.sqrt(r[0] * r[1]):.2f}x (geometric mean of both orders: {r[0]:.2f}x, {r[1]:.2f}x)")
PY
fi

# The same commands interleaved: hyperfine runs each command's runs in one block, so the step's
# block creates and removes its 17 inodes 300 times in a row while tini's creates none, and on an
# ext4 disk each block of creations finds the inode allocator slower than the last (it skips
# inodes freed in the last minutes). Interleaved, every command meets the disk as it is at that
# moment, as steps in a stream of containers do. Each round runs every command once (the order
# rotating), each after the same preparation; timed from Python (its fork and wait are in every
# command's time, `direct` included, so they cancel out of the overheads).
python3 - "$work/interleaved.json" "$INTERLEAVED_ROUNDS" <<PY
import json, os, subprocess, sys, time
rounds = int(sys.argv[2])
prep = "rm -rf $repo/.opschain/step $repo/.opschain/step_result.json $repo/config $empty/.opschain/step $empty/.opschain/step_result.json"
commands = {
    "direct": ["$true_bin"],
    "tini": ["$tini", "-s", "--", "$true_bin"],
    "dumb-init": ["$dumb_init", "$true_bin"],
    "step": ["$bin", "--repo", "$repo", "step"],
    "floor": ["$floor", "$repo", "10", "$true_bin"],
    "step-empty": ["$bin", "--repo", "$empty", "step"],
}
names = list(commands)
times = {name: [] for name in names}
null = open(os.devnull, "w")
for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
        subprocess.run(prep, shell=True, check=True)
        start = time.perf_counter()
        subprocess.run(commands[name], stdout=null, stderr=null, check=True)
        times[name].append(time.perf_counter() - start)
json.dump(times, open(sys.argv[1], "w"))
PY
/usr/bin/time -o "$work/rss_step" -f %M "$bin" --repo "$repo" step >/dev/null 2>&1
/usr/bin/time -o "$work/rss_direct" -f %M "$true_bin"
rss_step=$(tail -1 "$work/rss_step")
rss_direct=$(tail -1 "$work/rss_direct")
python3 - "$work/h.json" "$rss_step" "$rss_direct" "$(stat -c %s "$bin")" "$work/interleaved.json" <<'PY'
import json, statistics, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = {name: statistics.median(r["times"]) * 1e3 for name, r in results.items()}
direct = med["direct"]
print(f"{'command':13} {'median ms':>10} {'over direct ms':>15} {'ratio':>7}")
for name in ["direct", "tini", "dumb-init", "step", "floor", "step-empty", "exec"]:
    if name in med:
        print(f"{name:13} {med[name]:10.3f} {med[name] - direct:15.3f} {med[name] / direct:7.2f}")
print(f"agent overhead: {med['step'] - direct:.3f} ms over direct (target <= 1 ms); with an empty context {med['step-empty'] - direct:.3f} ms")
print(f"  of which the floor (the contract's files and the action's spawn, nothing parsed: benches/step_floor.rs) {med['floor'] - direct:.3f} ms; the agent's own {med['step'] - med['floor']:.3f} ms")
tini = med["tini"] - direct
print(f"beside the init processes (overhead over direct): tini {tini:.3f} ms, dumb-init {med['dumb-init'] - direct:.3f} ms;"
      f" empty-context step {(med['step-empty'] - direct) / tini:.2f}x tini's (target <= 2x),"
      f" typical step {(med['step'] - direct) / tini:.2f}x tini's (target <= 3x)")
print(f"opschain-exec overhead: {med['exec'] - direct:.3f} ms over direct (target <= 0.5 ms)")
print(f"peak RSS: step {int(sys.argv[2]) / 1024:.1f} MB, direct {int(sys.argv[3]) / 1024:.1f} MB (target <= 4 MB)")
print(f"static binary: {int(sys.argv[4]) / 1e6:.2f} MB (target <= 1.5 MB)")
inter = json.load(open(sys.argv[5]))
rounds = len(inter["direct"])
inter = {name: statistics.median(t) * 1e3 for name, t in inter.items()}
d, t = inter["direct"], inter["tini"] - inter["direct"]
print(f"interleaved ({rounds} rounds, medians over direct): tini {t:.3f} ms, dumb-init {inter['dumb-init'] - d:.3f} ms,"
      f" floor {inter['floor'] - d:.3f} ms, empty-context step {inter['step-empty'] - d:.3f} ms ({(inter['step-empty'] - d) / t:.2f}x tini's),"
      f" typical step {inter['step'] - d:.3f} ms ({(inter['step'] - d) / t:.2f}x tini's)")
PY
