#!/usr/bin/env bash
# Sets up this host and runs Osprey's main job.
#
# Today the main job is the primary-index benchmark (the server arrives with
# the ospreyd issue and will take its place here): it builds the release
# binaries and measures the shared-memory index next to a std HashMap.
# Hugepages are used when reserved (index.pages = "auto") and not required.
#
#   bash scripts/run.sh [index-bench flags, e.g. --records 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p osprey-perf --bin index-bench
exec ./target/release/index-bench "$@"
