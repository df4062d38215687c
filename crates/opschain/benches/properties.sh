#!/usr/bin/env bash
# Properties at scale (BENCHMARKS.md): what a step costs when the project holds a large properties
# document, beside the same work with empty properties, in one run.
#
# The document: 10,000 server objects under `servers` (about 1.3 MB of JSON), generated here.
# The work, on the process backend with the static agent:
#   change   a change whose root step adds CHILDREN parallel children, each setting one project
#            key with `opschain-runner property set` (a version of the project properties each);
#   single   a change of one such step alone;
#   agent    that step's agent alone (`opschain-runner step` on a step context holding the
#            document), timed by hyperfine: the agent's own cost, `property set` included.
# Reported for each document: steps/s of the change, wall time of the single step, per-step agent
# time (hyperfine median, and the CPU it took: the machine may be shared; and the mean of the
# agent's own phase timings inside the change, from its log), the CPU the change took a step
# (controller and agents), controller peak RSS (/usr/bin/time -v) and database growth over the
# change.
#
# Usage: crates/opschain/benches/properties.sh [CHILDREN]   (default 200)
#   BASELINE=DIR crates/opschain/benches/properties.sh   also runs DIR/opschain with DIR/opschain-runner (an older
#   build: copy both binaries there) the same way, in the same run, and prints this build's
#   figures as ratios to it. RUNS=N sets hyperfine's runs of the agent alone (default 30);
#   KEEP=1 keeps the work directory (repository, documents, logs, state directories).
set -euo pipefail
cd "$(dirname "$0")/../../.."
children=${1:-200}
runs=${RUNS:-30}

command -v hyperfine >/dev/null || { echo "crates/opschain/benches/properties.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
cargo build -q --release --bin opschain
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir -p "$work/this"
cp target/release/opschain target/x86_64-unknown-linux-musl/release/opschain-runner "$work/this/"
builds=(this)
if [ -n "${BASELINE:-}" ]; then
  mkdir -p "$work/baseline"
  cp "$BASELINE/opschain" "$BASELINE/opschain-runner" "$work/baseline/"
  builds=(baseline this)
fi

# The repository: `fanout` adds set_1 .. set_N as parallel children; set_I sets project key step_I.
repo=$work/repo
mkdir -p "$repo/.opschain"
{
  echo '[actions.fanout]'
  echo "description = \"Adds $children children that each set one project key, run in parallel\""
  echo "run = 'for i in \$(seq $children); do echo set_\$i; done >> \"\$OPSCHAIN_CHILD_STEPS\"'"
  echo 'run_as = "parallel"'
  for i in $(seq "$children"); do
    echo "[actions.set_$i]"
    echo "run = 'opschain-runner property set --project step_$i done'"
  done
} > "$repo/.opschain/actions.toml"
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=bench commit -qm bench

# The documents: 10,000 servers, and empty.
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
servers = {f"srv-{i:05}": {"ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "roles": ["web", "app"] if i % 2 else ["db"],
                           "os": "almalinux-9.4", "cpus": 4 + i % 4, "memory_gb": 16, "tags": {"zone": "ap-southeast-2" + "abc"[i % 3], "tier": i % 3}}
           for i in range(10000)}
json.dump({"servers": servers}, open(f"{work}/large.json", "w"))
json.dump({}, open(f"{work}/empty.json", "w"))
PY
echo "documents: large $(stat -c %s "$work/large.json") bytes, empty $(stat -c %s "$work/empty.json") bytes; $children children"

db_size() { local s=0; for f in "$1"/opschain.db "$1"/opschain.db-wal; do [ -f "$f" ] && s=$((s + $(stat -c %s "$f"))); done; echo "$s"; }

# One change on a fresh state directory: build BUILD, document DOC. Writes $work/fig-BUILD-DOC.
measure() {
  local build=$1 doc=$2 bin=$work/$1 state=$work/state-$1-$2 out=$work/fig-$1-$2
  export OPSCHAIN_RUNNER_BIN=$bin/opschain-runner
  "$bin/opschain" --state-dir "$state" properties set --project bench "$work/$doc.json" >/dev/null
  "$bin/opschain" --state-dir "$state" environment create -p bench --code dev >/dev/null
  "$bin/opschain" --state-dir "$state" change run --repo "$repo" --project bench --environment dev --action set_1 >/dev/null 2>&1
  local before; before=$(db_size "$state")
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$work/time-$1-$2" "$bin/opschain" --state-dir "$state" change run --repo "$repo" --project bench --environment dev \
    --action fanout >"$work/log-$1-$2" 2>&1 || { tail -20 "$work/log-$1-$2"; exit 1; }
  end=$(date +%s.%N)
  local after; after=$(db_size "$state")
  local rss; rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time-$1-$2")
  local cpu; cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$work/time-$1-$2")
  local id; id=$("$bin/opschain" --state-dir "$state" change list | awk 'NR > 0 && /fanout/ {print $1}' | tail -1 | tr -dc 0-9)
  "$bin/opschain" --state-dir "$state" change logs "$id" -o json > "$work/steplog-$1-$2" 2>/dev/null || true
  # The single step, three times; the median wall time.
  local singles=()
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N)
    "$bin/opschain" --state-dir "$state" change run --repo "$repo" --project bench --environment dev --action set_2 >/dev/null 2>&1
    e=$(date +%s.%N)
    singles+=("$(python3 -c "print($e - $s)")")
  done
  python3 - "$out" "$start" "$end" "$rss" "$before" "$after" "$work/steplog-$1-$2" "$children" "$cpu" "${singles[@]}" <<'PY'
import json, re, statistics, sys
out, start, end, rss, before, after, log, children, cpu = sys.argv[1:10]
singles = [float(s) for s in sys.argv[10:]]
phases = {}
for line in open(log, errors="replace"):
    m = re.search(r'phase=\\?"?(initialise|action|completing)\\?"?.*duration_ms=([0-9.]+)', line)
    if m:
        phases.setdefault(m.group(1), []).append(float(m.group(2)))
steps = int(children) + 1
wall = float(end) - float(start)
fig = {"steps_per_s": steps / wall, "wall_s": wall, "cpu_ms_per_step": float(cpu) * 1000 / steps, "rss_mb": int(rss) / 1024, "db_growth_mb": (int(after) - int(before)) / 1e6,
       "single_s": statistics.median(singles),
       "phase_ms": {k: statistics.mean(v) for k, v in phases.items()}}
json.dump(fig, open(out, "w"))
PY
}

# The agent alone on one step: a step context holding DOC, action set_1.
agent_dir() {
  local doc=$1 dir=$work/agent-$1
  mkdir -p "$dir/.opschain"
  cp "$repo/.opschain/actions.toml" "$dir/.opschain/"
  python3 - "$work/$doc.json" "$dir/.opschain/step_context.json" <<'PY'
import sys
props = open(sys.argv[1]).read()
open(sys.argv[2], "w").write('{"context": {"project": {"code": "bench"}, "environment": {"code": "dev"}, "step": {"action": "set_1"}},'
                             ' "project": {"properties": ' + props + '}, "environment": {"properties": {}}}')
PY
}
agent_dir large
agent_dir empty

for build in "${builds[@]}"; do
  for doc in empty large; do
    echo "running: $build build, $doc properties" >&2
    measure "$build" "$doc"
  done
done

hf=()
prep="rm -rf $work/agent-large/.opschain/step $work/agent-large/.opschain/step_result.json $work/agent-empty/.opschain/step $work/agent-empty/.opschain/step_result.json"
for build in "${builds[@]}"; do
  for doc in empty large; do
    hf+=(-n "$build-$doc" "env PATH=$work/$build:/usr/bin:/bin $work/$build/opschain-runner --repo $work/agent-$doc step")
  done
done
hyperfine -N --style basic --warmup 3 --runs "$runs" --prepare "$prep" --export-json "$work/agent.json" "${hf[@]}" >/dev/null

python3 - "$work" "${builds[@]}" <<'PY'
import json, statistics, sys
work, builds = sys.argv[1], sys.argv[2:]
results = json.load(open(f"{work}/agent.json"))["results"]
agent = {r["command"]: statistics.median(r["times"]) * 1e3 for r in results}
agent_cpu = {r["command"]: (r["user"] + r["system"]) * 1e3 for r in results}
fig = {(b, d): json.load(open(f"{work}/fig-{b}-{d}")) for b in builds for d in ("empty", "large")}
for (b, d), f in fig.items():
    f["agent_ms"] = agent[f"{b}-{d}"]
    f["agent_cpu_ms"] = agent_cpu[f"{b}-{d}"]
    f["phases"] = sum(f["phase_ms"].values())
rows = [("change steps/s", "steps_per_s", "{:.1f}"), ("change wall s", "wall_s", "{:.2f}"),
        ("change CPU ms a step (all)", "cpu_ms_per_step", "{:.1f}"), ("single step s", "single_s", "{:.3f}"),
        ("agent step ms (alone)", "agent_ms", "{:.1f}"), ("agent step CPU ms (alone)", "agent_cpu_ms", "{:.1f}"),
        ("agent phases ms (in change)", "phases", "{:.1f}"),
        ("controller peak RSS MB", "rss_mb", "{:.1f}"), ("database growth MB", "db_growth_mb", "{:.2f}")]
head = f"{'':30}" + "".join(f"{b + ' ' + d:>18}" for b in builds for d in ("empty", "large"))
print(head)
for name, key, form in rows:
    print(f"{name:30}" + "".join(f"{form.format(fig[(b, d)][key]):>18}" for b in builds for d in ("empty", "large")))
for b in builds:
    e, l = fig[(b, "empty")], fig[(b, "large")]
    print(f"{b}: large / empty: steps/s {l['steps_per_s'] / e['steps_per_s']:.2f}x, agent step +{l['agent_ms'] - e['agent_ms']:.1f} ms "
          f"(CPU +{l['agent_cpu_ms'] - e['agent_cpu_ms']:.1f} ms; target <= 15 ms), RSS {l['rss_mb']:.0f} MB (target < 100), "
          f"steps/s {l['steps_per_s']:.0f} (target >= 100; CPU {l['cpu_ms_per_step']:.1f} ms a step)")
if "baseline" in builds:
    o, n = fig[("baseline", "large")], fig[("this", "large")]
    print(f"this / baseline, large properties: steps/s {n['steps_per_s'] / o['steps_per_s']:.1f}x, single step {o['single_s'] / n['single_s']:.1f}x faster, "
          f"agent step {o['agent_ms'] / n['agent_ms']:.1f}x faster ({o['agent_cpu_ms'] / n['agent_cpu_ms']:.1f}x less CPU), "
          f"CPU a step {o['cpu_ms_per_step'] / n['cpu_ms_per_step']:.1f}x less, controller RSS {o['rss_mb'] / n['rss_mb']:.1f}x smaller, "
          f"database growth {o['db_growth_mb'] / max(n['db_growth_mb'], 1e-6):.1f}x smaller")
PY
