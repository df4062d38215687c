#!/usr/bin/env bash
# `opschain server` side by side with its own store, in one run (BENCHMARKS.md): pages of changes
# and of log lines read directly from the store and through the API on a store of 100,000 changes
# and 10,000,000 log lines, then 100 followers of a step's live log at 1,000 lines/s (delay,
# lines lost or repeated, the server's peak RSS). The harness is benches/api.rs.
# Usage: benches/api.sh   (CHANGES, LINES, ROUNDS, FOLLOWERS, RATE, SECONDS, BENCH_DIR: see
#                          benches/api.rs; the store is written under BENCH_DIR, default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --bin opschain --bin opschain-runner
cargo bench -q --bench api
