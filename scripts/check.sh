#!/usr/bin/env bash
# The one entry point for checks, used by people and by CI (.ci/run) alike:
# toolchain and packages the tests need, formatting, lints, the whole test
# suite, and a check that the suite left no shared memory behind.
#
#   bash scripts/check.sh            # everything
#   bash scripts/check.sh --no-lint  # tests only
set -euo pipefail
cd "$(dirname "$0")/.."

lint=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) lint=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
bash scripts/install-deps.sh

if [ "$lint" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

# Test key ranges: engine tests 0x20000000..0x30000000 (tests/common), shm unit
# tests 0x3E000000..0x3F000000, index-bench 0x5A000000..0x5B000000,
# storage-bench 0x5B000000..0x5C000000, osprey-bench's test 0x5C000000..0x5E000000,
# perf/compare/run.sh 0x5E000000..0x60000000.
# (ospreyd end-to-end tests use 0x2A000000..0x2C000000, inside the first.)
test_segments() {
  awk 'NR > 1 { k = $1 + 0; if ((k >= 536870912 && k < 805306368) || (k >= 1040187392 && k < 1056964608) || (k >= 1509949440 && k < 1610612736)) print $1 }' /proc/sysvipc/shm | sort
}
before=$(test_segments)

step "cargo test --workspace"
cargo test --workspace --no-fail-fast

step "shared memory left behind by the tests"
# Only segments this run created count: one left by an earlier, aborted run
# is reported but does not fail this one.
leaked=$(comm -13 <(echo "$before") <(test_segments) | grep . || true)
if [ -n "$before" ]; then
  echo "note: segments from an earlier run are present (keys: $(echo $before)); remove them with ipcrm -M <key>"
fi
if [ -n "$leaked" ]; then
  echo "the tests left System V shared memory segments behind (keys):" >&2
  echo "$leaked" >&2
  exit 1
fi
echo "none"
