#!/usr/bin/env bash
# The controller's output masking (BENCHMARKS.md): one step whose action prints LINES lines of 90
# bytes, run by `opschain change run` on the process backend, side by side with hyperfine:
#   plain:  no secret set applies to the change: every line is copied as it is;
#   masked: the default build secret set `opschain-build-env` holds two values, which the agent
#           never sees (build secrets do not reach the action), so only the controller masks
#           them: every line is searched for both values and their encodings, and a tenth of
#           the lines hold one.
# Usage: crates/opschain/benches/mask_output.sh [LINES] [RUNS]   (default 20000 lines, 10 runs of each; the agent
# drops records of an action that prints faster than its log writer drains, so far more lines would
# time runs of different lengths)
set -euo pipefail
cd "$(dirname "$0")/../../.."
lines=${1:-20000}
runs=${2:-10}
command -v hyperfine >/dev/null || { echo "crates/opschain/benches/mask_output.sh: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
cargo build -q --release --bin opschain
cargo build -q --release --target x86_64-unknown-linux-musl -p opschain-runner --no-default-features --bin opschain-runner
export OPSCHAIN_RUNNER_BIN=${OPSCHAIN_RUNNER_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/opschain-runner}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$work/repo
mkdir -p "$repo/.opschain"
# 90-byte lines; every tenth holds the first build secret.
cat > "$repo/.opschain/actions.toml" <<TOML
[actions.print]
run = '''awk 'BEGIN { for (i = 0; i < $lines; i++) if (i % 10 == 0) printf "%08d build-secret-value-one-%057d\\n", i, 0; else printf "%08d %081d\\n", i, i }' '''
TOML
git -C "$repo" init -q && git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=bench commit -qm bench
echo '{"FIRST": "build-secret-value-one", "SECOND": "another-build-secret-two"}' > "$work/build.json"
opschain=$PWD/target/release/opschain
"$opschain" --state-dir "$work/masked" secrets set opschain-build-env --file "$work/build.json" >/dev/null
for s in plain masked; do "$opschain" --state-dir "$work/$s" project create --code bench >/dev/null && "$opschain" --state-dir "$work/$s" environment create -p bench --code dev >/dev/null; done
run="change run --repo $repo --project bench --environment dev --action print"
hyperfine -N --runs "$runs" --warmup 1 \
  -n plain "$opschain --state-dir $work/plain $run" \
  -n masked "$opschain --state-dir $work/masked $run"
# The last masked run stored every line, a tenth of them masked, and no secret.
logs=$("$opschain" --state-dir "$work/masked" change logs "$((runs + 1))" -o json)
echo "last masked run: $(grep -c 'print stdout|' <<<"$logs") lines stored, $(grep -c '\*\*\*\*' <<<"$logs") masked (expected $lines and $((lines / 10)))"
! grep -q 'build-secret-value-one' <<<"$logs" || { echo "a secret was stored unmasked" >&2; exit 1; }
