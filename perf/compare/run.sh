#!/usr/bin/env bash
# The side-by-side comparisons, in one run, printed and saved as ratios.
#
#   bash perf/compare/run.sh [--quick] [--out DIR] [--bin-dir DIR]
#
# Every figure has its baseline measured in the same run on the same
# machine (style habit 10):
#  1. device limit  storage-bench (engine on an io_uring file device): random
#                   4 KiB-record gets vs fio randread 4k at the same queue
#                   depth on the same file; sustained 1 KiB writes vs fio
#                   1 MiB sequential writes (its cold-scan and warm-start rows
#                   come along). A full run reserves 1.2 GiB of hugepages
#                   for the engine's index when run as root, as deployed,
#                   and releases them after.
#  2. redis         perf/compare/redis.sh: ospreyd + osprey-bench vs
#                   redis-server + redis-benchmark (requests/s, requests per
#                   server CPU-second, p50/p99).
#  3. flash reads   ospreyd (1 service core, core 1) with a data set of 4x
#                   its post-write cache in 4,096-byte record images; uniform
#                   random gets (osprey-bench -w RU,100, core 0, Q in flight)
#                   vs fio randread 4k at queue depth Q over the bytes the
#                   records occupy in the same file (half before the server
#                   runs, half after; the mean); and vs the same gets of
#                   keys that sit in the post-write cache (the server's
#                   ceiling without the device).
#  4. restart       per record count (1M and 10M; --quick: 20k and 100k)
#                   of small records (-o I): load, SIGTERM, restart -> warm,
#                   time to 'ready'; SIGTERM, ipcrm the index segments,
#                   restart -> cold, time to 'ready'; the cold scan's
#                   records/s vs fio sequential read (1 MiB, depth 8) of the
#                   scanned bytes, as records/s.
#  5. spdk          spdk-bench (built with --features spdk): random 4 KiB-
#                   record gets through the engine on the SPDK backend vs
#                   spdk_nvme_perf randread 4k at the same queue depth on the
#                   same NVMe/TCP target (nvmf_tgt on core 0 serving a file),
#                   and the same gets on the uring backend over that file:
#                   gets/s and CPU per get. Runs when SPDK is found
#                   (pkg-config --exists spdk_nvme, honouring PKG_CONFIG_PATH,
#                   or SPDK_DIR); otherwise, or when the host cannot run SPDK,
#                   skipped with the reason. It needs 1 GiB of free 2 MiB
#                   hugepages: when they are missing and this runs as root,
#                   scripts/setup-hugepages.sh reserves them (and mounts
#                   hugetlbfs) for this comparison only, and the previous
#                   state is restored right after it (also on exit).
#
# Writes OUT/<stem>.json (stem = UTC date YYYYMMDD-HHMM and the short
# commit), PNG plots in OUT/<stem>/ and a markdown table OUT/<stem>.md
# (both by perf-report). OUT defaults to perf/results. A full run (no
# --quick) into perf/results also rewrites README.md's section between
# <!-- perf:begin --> and <!-- perf:end -->.
#
# --quick       small sizes, short phases: a CI smoke run (under ~90 s).
# --out DIR     where the results go (created if missing).
# --bin-dir DIR take ospreyd, osprey-bench, storage-bench and perf-report
#               from DIR instead of building the release binaries, and
#               spdk-bench if DIR has it (when SPDK is found and it is
#               missing, or was built without SPDK, comparison 5 is skipped
#               with that reason).
#
# Environment: OSPREY_PERF_NO_INSTALL=1 forbids installing redis when it is
# missing (the redis comparison is then skipped with the reason).
#
# The server runs on core 1 and every client (osprey-bench, fio is the
# device's own limit and runs where the server ran) on core 0, with taskset.
# storage-bench (no server) is not pinned: its write phase uses every core.
# Shared-memory keys: a free slot in 0x5E000000..0x60000000 per ospreyd
# instance; every segment in it is removed. spdk-bench: a free base
# 0x5A008000 + n << 16 (its keys are base + 0x1000..0x1FFF, clear of
# index-bench's), removed too. Temp files live in one temp dir (under
# /var/tmp: device files need a real disk, not tmpfs) removed on exit. Only processes this script started are signalled, by pid; every
# wait is bounded. Exit code 1 when a comparison failed (the JSON still
# says which and why), 2 on bad flags.
set -euo pipefail

quick=0
out=""
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/perf/compare"
say() { printf 'run.sh: %s\n' "$*"; }
[ -n "$out" ] || out="$repo/perf/results"
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "$(nproc --all)" -lt 2 ]; then
  echo "run.sh: needs 2 cores (clients on core 0, servers on core 1)" >&2
  exit 2
fi
for tool in python3 taskset ipcs ipcrm fio; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not installed (scripts/install-deps.sh)" >&2; exit 2; }
done

run_started=$SECONDS
# The commit and work-tree state are taken once, here: others may commit
# to the same tree while the run goes on.
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
dirty_files=$(git -C "$repo" status --porcelain 2>/dev/null | wc -l)
stem="$(date -u +%Y%m%d-%H%M)-${commit:0:7}"
mode=full; [ "$quick" = 1 ] && mode=quick
say "$mode run $stem -> $out"

# --- SPDK -------------------------------------------------------------------
# Comparison 5 runs when SPDK is found; spdk_skip says why not otherwise.
spdk_skip=""
if pkg-config --exists spdk_nvme 2>/dev/null; then
  say "SPDK found by pkg-config (PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-})"
elif [ -n "${SPDK_DIR:-}" ]; then
  say "SPDK from SPDK_DIR=$SPDK_DIR"
else
  spdk_skip="SPDK was not found: 'pkg-config --exists spdk_nvme' failed (PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-unset}) and SPDK_DIR is not set; install SPDK and set PKG_CONFIG_PATH=<prefix>/lib/pkgconfig to run it"
fi

# --- binaries ---------------------------------------------------------------
spdk_bench=""
if [ -z "$bin_dir" ]; then
  say "building release ospreyd, osprey-bench, storage-bench, perf-report"
  (cd "$repo" && cargo build --release -q -p osprey-appliance -p osprey-perf \
    --bin ospreyd --bin osprey-bench --bin storage-bench --bin perf-report)
  bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
  if [ -z "$spdk_skip" ]; then
    # A build of its own: --features spdk must not reach ospreyd's build.
    say "building release spdk-bench --features spdk"
    if (cd "$repo" && cargo build --release -q -p osprey-perf --features spdk --bin spdk-bench); then
      spdk_bench="$bin_dir/spdk-bench"
    else
      spdk_skip="SPDK was found but 'cargo build --release -p osprey-perf --features spdk --bin spdk-bench' failed (see the output above)"
    fi
  fi
fi
bin_dir=$(cd "$bin_dir" && pwd)
for b in ospreyd osprey-bench storage-bench perf-report; do
  [ -x "$bin_dir/$b" ] || { echo "run.sh: $bin_dir/$b missing" >&2; exit 2; }
done
ospreyd="$bin_dir/ospreyd"
bench="$bin_dir/osprey-bench"
if [ -z "$spdk_skip" ] && [ -z "$spdk_bench" ]; then
  if [ -x "$bin_dir/spdk-bench" ]; then
    spdk_bench="$bin_dir/spdk-bench"
  else
    spdk_skip="SPDK was found but --bin-dir $bin_dir has no spdk-bench (build it with --features spdk)"
  fi
fi

# --- state and cleanup ------------------------------------------------------
work=$(mktemp -d /var/tmp/osprey-compare.XXXXXX)
started_pids=()
used_key_bases=()
cleanup() {
  local pid base key
  # (Defined further down; not yet when an early step fails.)
  if declare -F release_hugepages > /dev/null; then release_hugepages; fi
  for pid in "${started_pids[@]}"; do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    { wait "$pid"; } 2>/dev/null || true
  done
  for base in "${used_key_bases[@]}"; do
    for key in $(shm_keys "$base"); do ipcrm -M "$key" 2>/dev/null || true; done
  done
  rm -rf "$work"
}
trap cleanup EXIT
# SIGTERM or Ctrl-C: exit, so that the EXIT trap stops the servers.
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p "$work/results"

# Keys (hex) of shm segments in base..base+0x2000 (one namespace, id 1,
# uses base + 0x1000 ..= base + 0x1FFF).
shm_keys() {
  awk -v lo="$(( $1 ))" -v hi="$(( $1 + 0x2000 ))" \
    'NR > 1 { k = $1 + 0; if (k < 0) k += 4294967296; if (k >= lo && k < hi) printf "0x%08x\n", k }' \
    /proc/sysvipc/shm
}
remove_segments() {
  local key
  for key in $(shm_keys "$1"); do ipcrm -M "$key" 2>/dev/null || true; done
}
# Sets key_base to a base in 0x5E000000..0x60000000 whose slot nobody holds
# (not in a subshell: cleanup must know every base used).
new_key_base() {
  local slot candidate
  key_base=""
  for slot in $(seq 0 255); do
    candidate=$(( 0x5E000000 + ((($$ + ${#used_key_bases[@]} * 7 + slot) % 256) * 0x2000) ))
    if [ -z "$(shm_keys "$candidate")" ]; then
      used_key_bases+=("$candidate")
      key_base=$candidate
      return 0
    fi
  done
  echo "run.sh: no free shm key slot in 0x5E000000..0x60000000" >&2
  return 1
}
# True while process $1 runs (a zombie, exited but not yet reaped, does not).
alive() {
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now_ms() { date +%s%3N; }
loadavg() { awk '{ printf "[%s, %s, %s]", $1, $2, $3 }' /proc/loadavg; }

# Writes an ospreyd config: $1 file, $2 port, $3 device, $4 file size,
# $5 key base, $6 post-write-cache blocks, $7 stage size.
write_config() {
  cat > "$1" <<EOF
# Written by perf/compare/run.sh.
[service]
address = "127.0.0.1"
port = $2
cores = 1
poll-mode = "adaptive"

[logging]
level = "info"
ticker-interval = 3600

[[namespace]]
name = "test"
nsup-period = 0

[namespace.storage]
devices = ["$3"]
file-size = "$4"
post-write-cache = $6

[namespace.index]
shm-key-base = $(printf '0x%08X' "$5")
stage-size = "$7"
EOF
}

# Starts ospreyd ($1 config, $2 log) on core 1 and waits (at most $3 s) for
# 'ready on'. Sets server_pid and server_start_ms; returns 1 when it does
# not get ready.
start_server() {
  server_start_ms=$(now_ms)
  taskset -c 1 "$ospreyd" --config "$1" > "$2" 2>&1 &
  server_pid=$!
  started_pids+=("$server_pid")
  local deadline=$((SECONDS + $3))
  until grep -q "ready on" "$2" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! alive "$server_pid"; then
      say "ospreyd did not get ready within $3 s:"
      tail -20 "$2" >&2
      return 1
    fi
    sleep 0.02
  done
}
# Milliseconds from server_start_ms to the log line matching $2 in log $1
# (the log's own HH:MM:SS.mmm stamp, UTC, so polling does not count).
ms_to_line() {
  local stamp
  stamp=$(grep -m1 "$2" "$1" | awk '{ print $1 }')
  python3 - "$stamp" "$server_start_ms" <<'EOF'
import sys
h, m, s = sys.argv[1].split(":")
start_ms = int(sys.argv[2])
line_ms_of_day = (int(h) * 3600 + int(m) * 60) * 1000 + round(float(s) * 1000)
day_ms = 86400 * 1000
delta = (line_ms_of_day - start_ms % day_ms) % day_ms
print(delta)
EOF
}
# SIGTERM, wait at most $2 s, then SIGKILL. Sets stop_seconds to the time
# it took and returns 1 when it had to kill. (A clean shutdown can take long
# while defrag drains: known, being fixed.) Not in a subshell: the server
# is this shell's child and only this shell can reap it.
stop_server() {
  local pid=$1 limit=$2 t0
  t0=$(now_ms)
  stop_seconds=0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + limit)) rc=0
  while alive "$pid"; do
    if [ $SECONDS -ge $deadline ]; then
      kill -KILL "$pid" 2>/dev/null || true
      rc=1
      break
    fi
    sleep 0.05
  done
  { wait "$pid"; } 2>/dev/null || true
  stop_seconds=$(python3 -c 'import sys; print((int(sys.argv[1]) - int(sys.argv[2])) / 1000)' "$(now_ms)" "$t0")
  return $rc
}
# Writes the status file of comparison $1: $2 = ok|skipped|failed, $3 reason.
status() {
  python3 -c 'import json,sys; json.dump({"status": sys.argv[2], "reason": sys.argv[3]}, open(sys.argv[1], "w"))' \
    "$work/results/$1.status.json" "$2" "${3:-}"
}
# Runs "$@" for at most $1 seconds (then SIGTERM, and SIGKILL 10 s later):
# a client or benchmark that hangs must not hang the harness.
bounded() {
  local limit=$1; shift
  timeout --kill-after=10 "$limit" "$@"
}
# Seconds a client step may take: generous, the host is shared.
if [ "$quick" = 1 ]; then step_limit=120; else step_limit=900; fi
# fio on core 1 (where the servers run). $1 output json, the rest fio flags.
run_fio() {
  local json=$1; shift
  bounded "$step_limit" taskset -c 1 fio --output-format=json --direct=1 --ioengine=io_uring "$@" > "$json"
}
# Writes $2 MiB of zeros to file $1 (so no read lands on a hole and no write
# pays for the file system's first allocation).
prefill() {
  dd if=/dev/zero of="$1" bs=1M count="$2" oflag=direct status=none
}

load_start=$(loadavg)
say "load average at start: $load_start"

# --- 1. device limit (storage-bench) ----------------------------------------
device_limit() {
  say "1. device limit: storage-bench"
  # storage-bench keeps its keys in 0x5B000000..0x5C000000 and picks
  # base 0x5B000000 + (pid & 0xFF) << 16 by default; a base at +0x8000 in
  # a free 64 Ki-key block never meets those, and lets this script remove
  # the segments if it has to kill the bench (a killed bench cannot).
  local block sb_base="" rc=0
  for block in $(seq 0 255); do
    local candidate=$(( 0x5B008000 + ((($$ + block) % 256) << 16) ))
    if [ -z "$(shm_keys "$candidate")" ]; then sb_base=$candidate; break; fi
  done
  [ -n "$sb_base" ] || { status device_limit failed "no free shm key slot for storage-bench"; return 0; }
  local args=(--dir "$work" --json "$work/results/storage-bench.json" --shm-key-base "$(printf '0x%08X' "$sb_base")")
  [ "$quick" = 1 ] && args+=(--quick)
  # The index as deployed: on hugepages (design: "the index in hugepage
  # shared memory"). A full run reserves 1.2 GiB for it when it can (root)
  # and gives them back after; storage-bench's notes say which pages the
  # index got. (The quick run leaves the host's pages alone.)
  local hp=0 saved_skip=$spdk_skip
  if [ "$quick" = 0 ] && reserve_hugepages 1200; then hp=1; fi
  spdk_skip=$saved_skip
  # Not pinned: its sustained-write phase runs one storage core per CPU
  # core (--write-cores), as ospreyd would; its other phases use one.
  bounded "$step_limit" "$bin_dir/storage-bench" "${args[@]}" > "$work/storage-bench.txt" 2>&1 || rc=$?
  remove_segments "$sb_base"
  [ "$hp" = 1 ] && release_hugepages
  rm -f "$work"/storage-bench-*.dat
  if [ "$rc" = 0 ]; then
    sed -n '/^figure/,$p' "$work/storage-bench.txt" | grep -v '^storage-bench:'
    status device_limit ok
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    tail -5 "$work/storage-bench.txt" >&2
    status device_limit failed "storage-bench did not finish within $step_limit s (killed); its last line: $(tail -1 "$work/storage-bench.txt")"
  else
    tail -20 "$work/storage-bench.txt" >&2
    status device_limit failed "storage-bench exited with code $rc: $(tail -1 "$work/storage-bench.txt")"
  fi
}

# --- 2. redis ----------------------------------------------------------------
redis_compare() {
  say "2. server efficiency: perf/compare/redis.sh"
  if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    if [ "${OSPREY_PERF_NO_INSTALL:-0}" = 1 ]; then
      status redis skipped "redis-server/redis-benchmark not installed and OSPREY_PERF_NO_INSTALL=1 forbids installing them (scripts/install-deps.sh installs them)"
      say "redis: skipped (not installed, installing not allowed)"
      return 0
    fi
    if [ "$(id -u)" != 0 ]; then
      status redis skipped "redis-server/redis-benchmark not installed and not root to install them (scripts/install-deps.sh installs them)"
      say "redis: skipped (not installed, not root)"
      return 0
    fi
  fi
  local args=(--bin-dir "$bin_dir" --json "$work/results/redis.json")
  [ "$quick" = 1 ] && args+=(--quick)
  if bounded "$step_limit" bash "$here/redis.sh" "${args[@]}" > "$work/redis.txt" 2>&1; then
    sed -n '/^figure/,$p' "$work/redis.txt"
    status redis ok
  elif grep -q "missing Debian packages\|installing" "$work/redis.txt" && ! command -v redis-server >/dev/null; then
    status redis skipped "redis could not be installed: $(tail -1 "$work/redis.txt")"
  else
    tail -20 "$work/redis.txt" >&2
    status redis failed "redis.sh exited with an error: $(tail -1 "$work/redis.txt")"
  fi
}

# --- 3. flash-resident reads ------------------------------------------------
# The record image is exactly 4,096 bytes, one 4 KiB unit, as in
# storage-bench: header + set name "testset" + bin header (name length,
# "testbin", particle type, value length) + value.
image_header_bytes() {
  sed -n 's/^pub const IMAGE_HEADER_BYTES: usize = \([0-9]*\);.*/\1/p' "$repo/engine/src/record.rs" | head -1
}
flash_reads() {
  say "3. flash-resident reads: ospreyd + osprey-bench -w RU,100 vs fio randread 4k"
  local pwc seconds depth=32 header value records data_mib file_mib dir="$work/flash"
  if [ "$quick" = 1 ]; then pwc=4; seconds=3; else pwc=128; seconds=20; fi
  header=$(image_header_bytes)
  [ -n "$header" ] || { status flash_reads failed "IMAGE_HEADER_BYTES not found in engine/src/record.rs"; return 0; }
  value=$(( 4096 - header - 7 - (1 + 7 + 1 + 4) ))
  records=$(( 4 * pwc * 256 ))            # 256 images of 4 KiB per 1 MiB write block
  data_mib=$(( 4 * pwc ))
  file_mib=$(( 8 + 2 * data_mib + 16 ))
  mkdir -p "$dir"
  local device="$dir/dev0.dat" base port
  new_key_base || { status flash_reads failed "no free shm key slot"; return 0; }
  base=$key_base
  port=$(free_port)
  write_config "$dir/ospreyd.toml" "$port" "$device" "${file_mib}M" "$base" "$pwc" "64M"
  prefill "$device" "$file_mib"
  local fio_args=(--filename="$device" --rw=randread --bs=4k --iodepth="$depth"
    --offset=8M --size="${data_mib}M" --time_based --runtime="$(( seconds * 500 ))ms")
  run_fio "$dir/fio-before.json" --name=randread-4k "${fio_args[@]}"
  if ! start_server "$dir/ospreyd.toml" "$dir/log" 60; then
    status flash_reads failed "ospreyd did not start"; return 0
  fi
  say "  load: $records records of ${value}-byte blobs (4096-byte images), post-write cache $pwc MiB"
  if ! bounded "$step_limit" taskset -c 0 "$bench" -h "127.0.0.1:$port" -w I -k "$records" -o "B$value" -z 1 -c 16 \
      --quiet --json "$dir/load.json" > "$dir/load.txt" 2>&1; then
    cat "$dir/load.txt" >&2; stop_server "$server_pid" 30 || true
    status flash_reads failed "load failed: $(tail -1 "$dir/load.txt")"; return 0
  fi
  local io_before io_after cpu_before
  io_before=$(awk '/^read_bytes/ { print $2 }' "/proc/$server_pid/io")
  say "  osprey-bench -w RU,100 -k $records -z 1 -c $depth -t $seconds"
  if ! bounded "$step_limit" taskset -c 0 "$bench" -h "127.0.0.1:$port" -w RU,100 -k "$records" -o "B$value" -z 1 -c "$depth" \
      -t "$seconds" --json "$dir/run.json" > "$dir/run.txt" 2>&1; then
    cat "$dir/run.txt" >&2; stop_server "$server_pid" 30 || true
    status flash_reads failed "osprey-bench failed: $(tail -1 "$dir/run.txt")"; return 0
  fi
  io_after=$(awk '/^read_bytes/ { print $2 }' "/proc/$server_pid/io")
  # The same gets from RAM: the last eighth of the keys was written last and
  # sits in the post-write cache (a quarter of the data set), so this is the
  # server's ceiling without the device, and the ratio says how much of the
  # gap to fio is the device read path.
  local cached_first=$(( records * 7 / 8 )) cached_keys=$(( records / 8 )) io_cached
  say "  osprey-bench -w RU,100 -K $cached_first -k $cached_keys (keys in the post-write cache) -t $(( (seconds + 1) / 2 ))"
  if ! bounded "$step_limit" taskset -c 0 "$bench" -h "127.0.0.1:$port" -w RU,100 -K "$cached_first" -k "$cached_keys" -o "B$value" \
      -z 1 -c "$depth" -t "$(( (seconds + 1) / 2 ))" --json "$dir/cached.json" > "$dir/cached.txt" 2>&1; then
    cat "$dir/cached.txt" >&2; stop_server "$server_pid" 30 || true
    status flash_reads failed "osprey-bench (cached keys) failed: $(tail -1 "$dir/cached.txt")"; return 0
  fi
  io_cached=$(awk '/^read_bytes/ { print $2 }' "/proc/$server_pid/io")
  stop_server "$server_pid" 30 || say "  ospreyd needed SIGKILL after 30 s of SIGTERM"
  remove_segments "$base"
  run_fio "$dir/fio-after.json" --name=randread-4k "${fio_args[@]}"
  python3 - "$dir" "$work/results/flash_reads.json" "$records" "$value" "$pwc" "$depth" "$seconds" \
    "$io_before" "$io_after" "$io_cached" <<'EOF'
import json, sys
d, out, records, value, pwc, depth, seconds, io0, io1, io2 = sys.argv[1:11]
run = json.load(open(f"{d}/run.json"))
fio = [json.load(open(f"{d}/fio-{w}.json"))["jobs"][0]["read"] for w in ("before", "after")]
fio_iops = sum(f["iops"] for f in fio) / 2
pct = lambda f, p: f["clat_ns"]["percentile"].get(p, 0) / 1000.0
fio_p = {name: sum(pct(f, key) for f in fio) / 2 for name, key in
         (("p50", "50.000000"), ("p90", "90.000000"), ("p99", "99.000000"),
          ("p99.9", "99.900000"), ("p99.99", "99.990000"))}
read = next(k for k in run["kinds"] if k["kind"] == "read")
lat = read["latency_us"]
gets = read["ops"]
bytes_per_get = (int(io1) - int(io0)) / gets if gets else None
cached_run = json.load(open(f"{d}/cached.json"))
cached = next(k for k in cached_run["kinds"] if k["kind"] == "read")
cached_bytes_per_get = (int(io2) - int(io1)) / cached["ops"] if cached["ops"] else None
figures = [
    {"name": "uniform random gets", "unit": "ops/s", "osprey": read["ops_per_s"], "baseline": fio_iops,
     "baseline_what": f"fio randread 4k IOPS, QD {depth}, same file and byte range", "ratio": read["ops_per_s"] / fio_iops,
     "better": "higher"},
    {"name": "gets: flash-resident vs from the post-write cache", "unit": "ops/s", "osprey": read["ops_per_s"],
     "baseline": cached["ops_per_s"], "baseline_what": "the same server and client, keys in the post-write cache (RAM)",
     "ratio": read["ops_per_s"] / cached["ops_per_s"], "better": "higher"},
    {"name": "get p50 latency", "unit": "us", "osprey": lat["p50"], "baseline": fio_p["p50"],
     "baseline_what": "fio randread 4k completion p50", "ratio": lat["p50"] / fio_p["p50"], "better": "lower"},
    {"name": "get p99 latency", "unit": "us", "osprey": lat["p99"], "baseline": fio_p["p99"],
     "baseline_what": "fio randread 4k completion p99", "ratio": lat["p99"] / fio_p["p99"], "better": "lower"},
]
json.dump({
    "records": int(records), "image_bytes": 4096, "value_bytes": int(value),
    "post_write_cache_bytes": int(pwc) << 20, "data_set_bytes": int(records) * 4096,
    "queue_depth": int(depth), "seconds": float(seconds),
    "errors": run["total"]["errors"], "not_found": read["not_found"],
    "device_bytes_read_per_get": bytes_per_get,
    "fio_iops_before_after": [f["iops"] for f in fio],
    "cached_gets_per_s": cached["ops_per_s"], "cached_device_bytes_read_per_get": cached_bytes_per_get,
    "cached_errors": cached_run["total"]["errors"], "cached_not_found": cached["not_found"],
    "latency_us": {"osprey": {k: lat[k] for k in ("p50", "p90", "p99", "p99.9", "p99.99")}, "fio": fio_p},
    "intervals": [{"elapsed_s": i["elapsed_s"], "ops_per_s": i["ops_per_s"].get("read", 0)} for i in run["intervals"]],
    "figures": figures,
}, open(out, "w"), indent=1)
print(f"  gets {read['ops_per_s']:.0f}/s vs fio {fio_iops:.0f} IOPS: ratio {read['ops_per_s'] / fio_iops:.2f}; "
      f"device bytes read per get {bytes_per_get:.0f}; errors {run['total']['errors']}, not found {read['not_found']}")
print(f"  cached gets {cached['ops_per_s']:.0f}/s, device bytes read per cached get {cached_bytes_per_get:.0f}")
if run["total"]["errors"] or read["not_found"] or cached_run["total"]["errors"] or cached["not_found"]:
    sys.exit("errors or missing records in the read run")
EOF
  if [ $? = 0 ]; then status flash_reads ok; else status flash_reads failed "the read run had errors or missing records"; fi
  rm -f "$device"
}

# --- 4. restart: warm vs cold -----------------------------------------------
restart_one() {
  local records=$1 dir="$work/restart-$1" base port file_mib stop_s
  mkdir -p "$dir"
  # ~112 bytes per small record (image rounded to 16) + headroom.
  file_mib=$(( 8 + records * 112 * 3 / 2 / 1048576 + 16 ))
  local device="$dir/dev0.dat"
  new_key_base || return 1
  base=$key_base
  port=$(free_port)
  local stage="64M"; [ "$records" -gt 1000000 ] && stage="1G"
  write_config "$dir/ospreyd.toml" "$port" "$device" "${file_mib}M" "$base" 64 "$stage"
  prefill "$device" "$file_mib"
  start_server "$dir/ospreyd.toml" "$dir/log-load" 60 || return 1
  say "  $records records: load (-w I -o I)"
  bounded "$step_limit" taskset -c 0 "$bench" -h "127.0.0.1:$port" -w I -k "$records" -o I -z 2 -c 32 \
    --quiet --json "$dir/load.json" > "$dir/load.txt" 2>&1 || { cat "$dir/load.txt" >&2; return 1; }
  stop_server "$server_pid" 120 || { say "  ospreyd did not stop within 120 s of SIGTERM (killed)"; return 1; }
  echo "$stop_seconds" > "$dir/stop-after-load.txt"
  # warm
  start_server "$dir/ospreyd.toml" "$dir/log-warm" 300 || return 1
  grep -q "start: warm" "$dir/log-warm" || { say "  restart after SIGTERM was not warm:"; grep "start:" "$dir/log-warm" >&2; return 1; }
  ms_to_line "$dir/log-warm" "ready on" > "$dir/warm-ms.txt"
  stop_server "$server_pid" 120 || { say "  ospreyd did not stop within 120 s of SIGTERM (killed)"; return 1; }
  echo "$stop_seconds" > "$dir/stop-after-warm.txt"
  # cold: the index is gone
  remove_segments "$base"
  start_server "$dir/ospreyd.toml" "$dir/log-cold" 600 || return 1
  grep -q "start: cold" "$dir/log-cold" || { say "  restart without the index was not cold"; return 1; }
  ms_to_line "$dir/log-cold" "ready on" > "$dir/cold-ms.txt"
  stop_server "$server_pid" 120 || say "  ospreyd did not stop within 120 s of SIGTERM (killed)"
  echo "$stop_seconds" > "$dir/stop-after-cold.txt"
  remove_segments "$base"
  # fio reads the bytes the scan read, once, sequentially.
  local scanned_mib
  scanned_mib=$(sed -n 's/.*scanned \([0-9]*\) MiB in.*/\1/p' "$dir/log-cold" | head -1)
  [ "${scanned_mib:-0}" -ge 1 ] || scanned_mib=1
  echo "$scanned_mib" > "$dir/scanned-mib.txt"
  run_fio "$dir/fio-read.json" --name=read-1M --filename="$device" --rw=read --bs=1M --iodepth=8 \
    --offset=8M --size="${scanned_mib}M"
  rm -f "$device"
}
restart_compare() {
  say "4. restart: warm vs cold start, cold scan vs fio sequential read"
  local counts n
  if [ "$quick" = 1 ]; then counts="20000 100000"; else counts="1000000 10000000"; fi
  for n in $counts; do
    if ! restart_one "$n"; then
      status restart failed "the $n-record round failed (see the output above)"
      return 0
    fi
  done
  python3 - "$work" "$work/results/restart.json" $counts <<'EOF'
import json, re, sys
work, out, counts = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3:]]
points, figures = [], []
for n in counts:
    d = f"{work}/restart-{n}"
    cold_log = open(f"{d}/log-cold").read()
    m = re.search(r"scanned (\d+) MiB in ([0-9.]+) s: (\d+) images read, (\d+) unique", cold_log)
    scan_s, unique = float(m.group(2)), int(m.group(4))
    warm_log = open(f"{d}/log-warm").read()
    w = re.search(r"\((\d+) index entries re-attached in ([0-9.]+) s\)", warm_log)
    load = json.load(open(f"{d}/load.json"))
    fio = json.load(open(f"{d}/fio-read.json"))["jobs"][0]["read"]
    scanned_bytes = int(open(f"{d}/scanned-mib.txt").read()) << 20
    fio_s = scanned_bytes / fio["bw_bytes"]
    p = {
        "records": n, "loaded": load["total"]["ops"], "load_errors": load["total"]["errors"],
        "load_ops_per_s": load["total"]["ops_per_s"],
        "warm_ready_s": int(open(f"{d}/warm-ms.txt").read()) / 1000.0,
        "warm_attach_s": float(w.group(2)), "warm_entries": int(w.group(1)),
        "cold_ready_s": int(open(f"{d}/cold-ms.txt").read()) / 1000.0,
        "cold_scan_s": scan_s, "cold_unique": unique, "scanned_bytes": scanned_bytes,
        "cold_scan_records_per_s": unique / scan_s if scan_s > 0 else None,
        "fio_seq_read_bytes_per_s": fio["bw_bytes"], "fio_seq_read_s": fio_s,
        "fio_records_per_s": unique / fio_s,
        "stop_s": {k: float(open(f"{d}/stop-after-{k}.txt").read()) for k in ("load", "warm", "cold")},
    }
    if p["loaded"] != n or p["load_errors"] or unique != n or p["warm_entries"] != n:
        sys.exit(f"{n} records: loaded {p['loaded']} ({p['load_errors']} errors), warm {p['warm_entries']}, cold {unique}")
    points.append(p)
    label = f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"
    figures.append({"name": f"warm vs cold start, {label} records", "unit": "s", "osprey": p["warm_ready_s"],
                    "baseline": p["cold_ready_s"], "baseline_what": "cold start (index rebuilt by scanning the device), time to ready",
                    "ratio": p["warm_ready_s"] / p["cold_ready_s"], "better": "lower"})
    figures.append({"name": f"cold scan, {label} records", "unit": "records/s", "osprey": p["cold_scan_records_per_s"],
                    "baseline": p["fio_records_per_s"], "baseline_what": "fio read 1M QD8 of the scanned bytes, as records/s",
                    "ratio": p["cold_scan_records_per_s"] / p["fio_records_per_s"], "better": "higher"})
    print(f"  {label}: warm ready {p['warm_ready_s']:.3f} s (attach {p['warm_attach_s']:.3f} s), cold ready {p['cold_ready_s']:.3f} s "
          f"(scan {scan_s:.3f} s, {p['cold_scan_records_per_s']:.0f} rec/s) vs fio {p['fio_records_per_s']:.0f} rec/s "
          f"({fio['bw_bytes'] / 1e6:.0f} MB/s over {scanned_bytes >> 20} MiB)")
json.dump({"points": points, "figures": figures}, open(out, "w"), indent=1)
EOF
  if [ $? = 0 ]; then status restart ok; else status restart failed "record counts did not match (see above)"; fi
}

# --- 5. spdk -----------------------------------------------------------------
# Hugepages this script reserved for comparison 5, and what to restore:
# hp_restore_pages is the 2 MiB pool's size before (empty: nothing changed),
# hp_unmount=1 when the script mounted hugetlbfs at /dev/hugepages.
hp_restore_pages=""
hp_unmount=0
hugepages_free_mb() {
  awk '/^HugePages_Free:/ { f = $2 } /^Hugepagesize:/ { s = $2 } END { print int(f * s / 1024) }' /proc/meminfo
}
hugetlbfs_mounted() { awk '$3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts; }
# Makes $1 MiB of 2 MiB hugepages free (and hugetlbfs mounted) if they are
# not; sets spdk_skip and returns 1 when it cannot.
reserve_hugepages() {
  local need=$1 free pool=/sys/kernel/mm/hugepages/hugepages-2048kB before
  free=$(hugepages_free_mb)
  if [ "$free" -ge "$need" ] && hugetlbfs_mounted; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    spdk_skip="SPDK needs $need MiB of free hugepages and hugetlbfs mounted (have $free MiB), and this is not root to reserve them: run sudo scripts/setup-hugepages.sh --pages $((need / 2)) first"
    return 1
  fi
  if [ ! -w "$pool/nr_hugepages" ] || ! grep -q '^Hugepagesize: *2048 kB' /proc/meminfo; then
    spdk_skip="SPDK needs $need MiB of free hugepages (have $free MiB) and this host has no default 2 MiB hugepage pool to reserve them from"
    return 1
  fi
  # The persistent pool: nr_hugepages counts surplus pages too (pages
  # others' hugepage segments hold beyond it), and writing it back would
  # make those persistent. The new size counts them: the kernel turns
  # surplus pages into persistent ones first when the pool grows.
  local total surplus want
  total=$(cat "$pool/nr_hugepages")
  surplus=$(cat "$pool/surplus_hugepages" 2>/dev/null || echo 0)
  before=$(( total - surplus ))
  want=$total
  [ "$free" -lt "$need" ] && want=$(( total + (need - free + 1) / 2 ))
  say "  reserving hugepages: scripts/setup-hugepages.sh --pages $want (now $before)"
  hp_restore_pages=$before
  if ! awk '$2 == "/dev/hugepages" && $3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts; then
    hp_unmount=1
  fi
  if ! bash "$repo/scripts/setup-hugepages.sh" --pages "$want" > "$work/hugepages.txt" 2>&1; then
    spdk_skip="could not reserve $need MiB of hugepages: $(tail -1 "$work/hugepages.txt")"
    release_hugepages
    return 1
  fi
  free=$(hugepages_free_mb)
  if [ "$free" -lt "$need" ]; then
    spdk_skip="reserved hugepages, but only $free MiB are free ($need needed)"
    release_hugepages
    return 1
  fi
}
# Puts the hugepage pool and mount back as they were before reserve_hugepages.
# Pages first: setup-hugepages.sh mounts hugetlbfs when asked for N > 0.
release_hugepages() {
  if [ -n "$hp_restore_pages" ]; then
    say "  releasing hugepages: scripts/setup-hugepages.sh --pages $hp_restore_pages"
    bash "$repo/scripts/setup-hugepages.sh" --pages "$hp_restore_pages" > /dev/null 2>&1 \
      || say "  could not set the 2 MiB hugepage pool back to $hp_restore_pages pages"
    hp_restore_pages=""
  fi
  if [ "$hp_unmount" = 1 ]; then
    umount /dev/hugepages 2>/dev/null || say "  could not unmount /dev/hugepages (still in use?)"
    hp_unmount=0
  fi
}
spdk_compare() {
  say "5. spdk: spdk-bench (engine on SPDK vs spdk_nvme_perf, same NVMe/TCP target; and vs uring)"
  if [ -n "$spdk_skip" ]; then
    status spdk skipped "$spdk_skip"
    say "5. spdk: skipped: $spdk_skip"
    return 0
  fi
  local block base="" rc=0
  for block in $(seq 0 255); do
    local candidate=$(( 0x5A008000 + ((($$ + block) % 256) << 16) ))
    if [ -z "$(shm_keys "$candidate")" ]; then base=$candidate; break; fi
  done
  [ -n "$base" ] || { status spdk failed "no free shm key slot for spdk-bench"; return 0; }
  if ! reserve_hugepages 1024; then
    status spdk skipped "$spdk_skip"
    say "5. spdk: skipped: $spdk_skip"
    return 0
  fi
  local args=(--dir "$work" --json "$work/results/spdk.json" --shm-key-base "$(printf '0x%08X' "$base")")
  [ "$quick" = 1 ] && args+=(--quick)
  # spdk-bench pins itself to core 1 and gives nvmf_tgt core 0.
  bounded "$step_limit" "$spdk_bench" "${args[@]}" > "$work/spdk-bench.txt" 2>&1 || rc=$?
  remove_segments "$base"
  rm -rf "$work"/spdk-bench-*
  release_hugepages
  if [ "$rc" = 0 ]; then
    sed -n '/^figure/,$p' "$work/spdk-bench.txt"
    status spdk ok
  elif [ "$rc" = 3 ]; then
    local why
    why=$(sed -n 's/^spdk-bench: skipped: //p' "$work/spdk-bench.txt" | tail -1)
    status spdk skipped "${why:-spdk-bench skipped: $(tail -1 "$work/spdk-bench.txt")}"
    say "5. spdk: skipped: ${why:-see the output of spdk-bench}"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    tail -5 "$work/spdk-bench.txt" >&2
    status spdk failed "spdk-bench did not finish within $step_limit s (killed); its last line: $(tail -1 "$work/spdk-bench.txt")"
  else
    tail -20 "$work/spdk-bench.txt" >&2
    status spdk failed "spdk-bench exited with code $rc: $(tail -1 "$work/spdk-bench.txt")"
  fi
}

# Each comparison records its own status; a failure in one does not stop
# the others (set -e is off inside them via the || below).
timed() {
  local name=$1 t0=$SECONDS
  "$2" || status "$name" failed "unexpected error"
  echo $((SECONDS - t0)) > "$work/results/$name.elapsed"
}
timed device_limit device_limit
timed redis redis_compare
timed flash_reads flash_reads
timed restart restart_compare
timed spdk spdk_compare
load_end=$(loadavg)
say "load average at end: $load_end"

# --- results JSON -----------------------------------------------------------
json="$out/$stem.json"
python3 - "$work/results" "$json" "$stem" "$mode" "$load_start" "$load_end" \
  "$commit" "$dirty_files" "$((SECONDS - run_started))" \
  "$(df -h --output=source,fstype,size "$work" | tail -1)" <<'EOF'
import json, os, platform, sys
res, out, stem, mode, load0, load1, commit, dirty, elapsed, disk = sys.argv[1:11]
def load(name):
    p = f"{res}/{name}"
    return json.load(open(p)) if os.path.exists(p) else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
comparisons = {}
sources = {"device_limit": "storage-bench.json", "redis": "redis.json", "flash_reads": "flash_reads.json",
           "restart": "restart.json", "spdk": "spdk.json"}
for name, src in sources.items():
    st = load(f"{name}.status.json") or {"status": "failed", "reason": "did not run"}
    c = {"status": st["status"], "reason": st["reason"]}
    if os.path.exists(f"{res}/{name}.elapsed"):
        c["elapsed_s"] = int(open(f"{res}/{name}.elapsed").read())
    data = load(src) if src else None
    if st["status"] == "ok" and data is None:
        c.update(status="failed", reason=f"{src} missing")
    if data is not None:
        if name == "device_limit":
            c["figures"] = [dict(f, better="lower" if f["unit"] == "s" else "higher")
                            for f in data["figures"] if f["ratio"] is not None]
            c["other_cpu_pct"] = data.get("other_cpu_pct")
            c["detail"] = data
        elif name == "redis":
            c["figures"] = [{"name": f["name"], "unit": "us" if "us" in f["name"] else "ops/s", "osprey": f["osprey"],
                             "baseline": f["redis"], "baseline_what": "redis-server under redis-benchmark",
                             "ratio": f["ratio"], "better": f["better"]} for f in data["figures"]]
            c["detail"] = {k: v for k, v in data.items() if k != "figures"}
        else:
            c["figures"] = data.pop("figures")
            c["detail"] = data
    comparisons[name] = c
doc = {
    "schema": 1, "stem": stem, "mode": mode, "commit": commit, "dirty_files": int(dirty),
    "elapsed_s": int(elapsed),
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1),
                "kernel": platform.release(), "disk": disk, "host": platform.node()},
    "load_average": {"start": json.loads(load0), "end": json.loads(load1)},
    "comparisons": comparisons,
}
json.dump(doc, open(out, "w"), indent=1)
print(f"run.sh: wrote {out}")
bad = [n for n, c in comparisons.items() if c["status"] == "failed"]
if bad:
    print("run.sh: failed: " + ", ".join(f"{n} ({comparisons[n]['reason']})" for n in bad))
EOF

# --- plots, table, README ---------------------------------------------------
report_args=("$json")
update_readme=0
if [ "$quick" = 0 ] && [ "$out" = "$repo/perf/results" ]; then
  update_readme=1
  report_args+=(--readme-section "$work/section.md" --link-prefix "perf/results/")
fi
"$bin_dir/perf-report" "${report_args[@]}"
cat "$out/$stem.md"
if [ "$update_readme" = 1 ]; then
  python3 - "$repo/README.md" "$work/section.md" <<'EOF'
import sys
readme, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(readme).read()
begin, end = "<!-- perf:begin -->", "<!-- perf:end -->"
a, b = text.find(begin), text.find(end)
if a < 0 or b < a:
    sys.exit("run.sh: README.md has no <!-- perf:begin --> ... <!-- perf:end --> markers")
open(readme, "w").write(text[:a + len(begin)] + "\n" + section + "\n" + text[b:])
print("run.sh: README.md's Performance section updated")
EOF
fi
say "done in $((SECONDS - run_started)) s"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(1 if any(c["status"]=="failed" for c in d["comparisons"].values()) else 0)' "$json"
