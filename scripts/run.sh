#!/usr/bin/env bash
# Sets up this host and runs Osprey's main job: the ospreyd server on the
# shipped example config (etc/ospreyd.toml: namespace "test" on a 4 GiB
# file under data/, port 3000 on 127.0.0.1, adaptive polling). Hugepages
# are used for the index when reserved and not required.
#
#   bash scripts/run.sh                     # the server, until Ctrl-C / SIGTERM
#   bash scripts/run.sh --config FILE       # another config
#
# Stop it with Ctrl-C, SIGTERM or `target/release/osprey shutdown`: the
# next start is warm (the index is re-attached from shared memory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p osprey-appliance --bin ospreyd --bin osprey
if [ "$#" -eq 0 ]; then
  set -- --config etc/ospreyd.toml
fi
exec ./target/release/ospreyd "$@"
