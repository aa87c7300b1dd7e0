#!/usr/bin/env bash
# Comparison 2: ospreyd under osprey-bench next to redis-server under
# redis-benchmark, on this machine, in the same run.
#
#   bash perf/compare/redis.sh [--quick] [--keys N] [--value-size BYTES]
#        [--seconds S] [--connections C] [--poll-mode adaptive|busy]
#        [--client-spin-us US] [--no-build] [--bin-dir DIR] [--json FILE]
#
# What it does, in order:
#  1. Installs Debian's redis-server and redis-tools when missing (apt-get,
#     as root; skipped when both are there). The packaged service is not
#     used: this script starts its own redis-server.
#  2. Builds the release ospreyd and osprey-bench (skip with --no-build).
#  3. Osprey: starts ospreyd (1 service core, the given poll mode, a 1 GiB
#     file device and config in a temp dir, a free port, a shm-key-base of
#     its own) pinned to core 1 with taskset. "Records cached": its
#     post-write cache holds every block of the file (1024 blocks of 1 MiB),
#     so, as in Redis, every read is served from RAM however the updates
#     spread the records over the blocks (with the default 64 blocks, reads
#     of records last written before the newest 64 MiB go to the device).
#     Loads N keys with one blob bin of the value size (osprey-bench -w I);
#     then runs osprey-bench -w RU,50 for S seconds with 1 thread x C
#     connections, pinned to core 0, with --spin-us US (default 1000): the
#     client's thread owns core 0 and polls while commands are in flight,
#     so the server's replies find it awake instead of paying a wake-up
#     each (redis-benchmark is rarely asleep when Redis answers either: it
#     is busy with the other connections). The server's CPU time (utime +
#     stime of /proc/PID/stat) is read just before and after the measured
#     run. Then stops it (SIGTERM).
#  4. Redis: starts redis-server pinned to core 1 with Debian's
#     /etc/redis/redis.conf (so persistence as shipped: RDB save points,
#     no AOF) but its own dir, port, pid and log file in the temp dir, in
#     the foreground; loads the same N keys ("key:%012d", the names
#     redis-benchmark -r uses) with values of the same size through
#     redis-cli --pipe; then runs redis-benchmark -t set,get with C
#     connections, -r N, -d SIZE, pinned to core 0, each test for as many
#     requests as osprey-bench made in total / 2, with the server's CPU
#     time read before and after. Then SHUTDOWN NOSAVE.
#  5. Prints requests/s (for redis: the 50/50 mix of its SET and GET runs,
#     total requests / total time), requests per server CPU-second, p50/p99
#     of reads (GET) and writes (SET) in microseconds, and osprey/redis
#     ratios (for latency, lower is better, so a ratio below 1 favours
#     osprey).
#
# --bin-dir DIR: take ospreyd and osprey-bench from DIR (no build).
# --client-spin-us US: osprey-bench's --spin-us; 0 lets the client sleep in
# epoll_wait at once, as redis-benchmark does (and is not passed at all).
# --quick: 2000 keys of 100 bytes, 2 s, 4 connections (a smoke run).
# Every wait is bounded; only the processes this script started are
# signalled (by pid); the temp dir and the shm segments are removed on exit.
set -euo pipefail

keys=100000
value_size=512
seconds=10
connections=16
poll_mode=adaptive
client_spin_us=1000
build=1
json_out=""
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) keys=2000; value_size=100; seconds=2; connections=4 ;;
    --keys) keys="${2:?--keys needs a value}"; shift ;;
    --value-size) value_size="${2:?--value-size needs a value}"; shift ;;
    --seconds) seconds="${2:?--seconds needs a value}"; shift ;;
    --connections) connections="${2:?--connections needs a value}"; shift ;;
    --poll-mode) poll_mode="${2:?--poll-mode needs a value}"; shift ;;
    --client-spin-us) client_spin_us="${2:?--client-spin-us needs a value}"; shift ;;
    --no-build) build=0 ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a value}"; build=0; shift ;;
    --json) json_out="${2:?--json needs a value}"; shift ;;
    -h|--help) sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "redis.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in "$keys" "$value_size" "$seconds" "$connections"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "redis.sh: $n is not a positive integer" >&2; exit 2; }
done
[[ "$client_spin_us" =~ ^[0-9]+$ ]] || { echo "redis.sh: --client-spin-us $client_spin_us is not a whole number" >&2; exit 2; }
case "$poll_mode" in adaptive|busy) ;; *) echo "redis.sh: --poll-mode is adaptive or busy" >&2; exit 2 ;; esac
if [ "$(nproc --all)" -lt 2 ]; then
  echo "redis.sh: needs 2 cores (client on core 0, server on core 1)" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
say() { printf 'redis.sh: %s\n' "$*"; }

# --- 1. Debian packages -----------------------------------------------------
missing=()
for p in redis-server redis-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "redis.sh: missing Debian packages ${missing[*]}; run as root or install them" >&2
    exit 2
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  # Do not let the package start its own service on port 6379.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- 2. builds --------------------------------------------------------------
if [ "$build" = 1 ]; then
  say "building release ospreyd and osprey-bench"
  (cd "$repo" && cargo build --release -q -p osprey-appliance -p osprey-perf --bin ospreyd --bin osprey-bench)
fi
[ -n "$bin_dir" ] || bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
ospreyd="$bin_dir/ospreyd"
bench="$bin_dir/osprey-bench"
for b in "$ospreyd" "$bench"; do
  [ -x "$b" ] || { echo "redis.sh: $b not built (run without --no-build)" >&2; exit 2; }
done

# --- helpers ----------------------------------------------------------------
work=$(mktemp -d /tmp/osprey-redis-compare.XXXXXX)
started_pids=()
key_base=""
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$key_base" ]; then
    for key in $(shm_keys "$key_base"); do ipcrm -M "$key" 2>/dev/null || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# SIGTERM (e.g. from run.sh's time limit): exit, so that cleanup runs.
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Keys (hex) of shm segments in base..base+0x2000.
shm_keys() {
  awk -v lo="$(( $1 ))" -v hi="$(( $1 + 0x2000 ))" \
    'NR > 1 { k = $1 + 0; if (k < 0) k += 4294967296; if (k >= lo && k < hi) printf "0x%08x\n", k }' \
    /proc/sysvipc/shm
}

# utime + stime of a process, in seconds.
cpu_seconds() {
  local ticks
  ticks=$(getconf CLK_TCK)
  # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
  sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$ticks" '{ printf "%.3f\n", ($12 + $13) / t }'
}

# Waits (at most $3 seconds) for $2 to appear in file $1.
wait_for_line() {
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.1
  done
}

# SIGTERM, then SIGKILL after 10 s. The data is thrown away, so a clean
# stop only matters for the shm segments, which cleanup removes anyway; an
# ospreyd with a long defrag queue can take minutes to shut down cleanly.
stop_pid() {
  local pid=$1 name=$2
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  say "$name (pid $pid) did not stop within 10 s of SIGTERM; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  { wait "$pid"; } 2>/dev/null || true
}

# --- 3. osprey --------------------------------------------------------------
for slot in $(seq 0 255); do
  candidate=$(( 0x5D000000 + ((($$ + slot) % 256) * 0x2000) ))
  if [ -z "$(shm_keys "$candidate")" ]; then key_base=$candidate; break; fi
done
[ -n "$key_base" ] || { echo "redis.sh: no free shm key slot in 0x5D000000.." >&2; exit 1; }
osprey_port=$(free_port)
mkdir -p "$work/osprey"
cat > "$work/osprey/ospreyd.toml" <<EOF
# Written by perf/compare/redis.sh.
[service]
address = "127.0.0.1"
port = $osprey_port
cores = 1
poll-mode = "$poll_mode"

[logging]
level = "info"
ticker-interval = 60

[[namespace]]
name = "test"

[namespace.storage]
devices = ["$work/osprey/dev0.dat"]
file-size = "1G"
# Every block of the file stays in RAM once written: records cached.
post-write-cache = 1024

[namespace.index]
shm-key-base = $(printf '0x%08X' "$key_base")
stage-size = "64M"
EOF
say "ospreyd on 127.0.0.1:$osprey_port (core 1, poll-mode $poll_mode), shm-key-base $(printf '0x%08X' "$key_base")"
taskset -c 1 "$ospreyd" --config "$work/osprey/ospreyd.toml" > "$work/osprey/log" 2>&1 &
osprey_pid=$!
started_pids+=("$osprey_pid")
if ! wait_for_line "$work/osprey/log" "ready on" 60; then
  echo "redis.sh: ospreyd did not get ready within 60 s:" >&2
  cat "$work/osprey/log" >&2
  exit 1
fi

say "osprey: loading $keys keys of $value_size bytes"
taskset -c 0 "$bench" -h "127.0.0.1:$osprey_port" -w I -k "$keys" -o "B$value_size" \
  -z 1 -c "$connections" --quiet --json "$work/osprey-load.json" > "$work/osprey-load.txt"
python3 - "$work/osprey-load.json" "$keys" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
if doc["total"]["ops"] != want or doc["total"]["errors"] != 0:
    sys.exit(f"redis.sh: osprey load stored {doc['total']['ops']} of {want} keys, {doc['total']['errors']} errors")
EOF

client_spin_args=()
[ "$client_spin_us" = 0 ] || client_spin_args=(--spin-us "$client_spin_us")
say "osprey: osprey-bench -w RU,50 -o B$value_size -k $keys -t $seconds -z 1 -c $connections ${client_spin_args[*]-}"
cpu_before=$(cpu_seconds "$osprey_pid")
taskset -c 0 "$bench" -h "127.0.0.1:$osprey_port" -w RU,50 -k "$keys" -o "B$value_size" \
  -t "$seconds" -z 1 -c "$connections" ${client_spin_args[@]+"${client_spin_args[@]}"} \
  --json "$work/osprey-run.json" > "$work/osprey-run.txt"
cpu_after=$(cpu_seconds "$osprey_pid")
echo "$cpu_before $cpu_after" > "$work/osprey-cpu.txt"
sed -n '/^osprey-bench: [0-9.]* s,/,$p' "$work/osprey-run.txt"
stop_pid "$osprey_pid" ospreyd

# --- 4. redis ---------------------------------------------------------------
requests=$(python3 -c 'import json,sys; print(max(1000, json.load(open(sys.argv[1]))["total"]["ops"] // 2))' "$work/osprey-run.json")
redis_port=$(free_port)
mkdir -p "$work/redis"
redis_conf=()
[ -r /etc/redis/redis.conf ] && redis_conf=(/etc/redis/redis.conf)
taskset -c 1 redis-server "${redis_conf[@]}" --port "$redis_port" --bind 127.0.0.1 \
  --dir "$work/redis" --daemonize no --supervised no --pidfile "$work/redis/redis.pid" \
  --logfile "$work/redis/log" > "$work/redis/stdout" 2>&1 &
redis_pid=$!
started_pids+=("$redis_pid")
deadline=$((SECONDS + 30))
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$redis_pid" 2>/dev/null; then
    echo "redis.sh: redis-server did not answer PING within 30 s:" >&2
    cat "$work/redis/log" "$work/redis/stdout" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.1
done

say "redis-server on 127.0.0.1:$redis_port (core 1, config ${redis_conf[0]:-built-in defaults}; save \"$(
  redis-cli -p "$redis_port" config get save | sed -n 2p)\", appendonly $(redis-cli -p "$redis_port" config get appendonly | sed -n 2p))"
say "redis: loading $keys keys of $value_size bytes"
python3 - "$keys" "$value_size" > "$work/redis-load.resp" <<'EOF'
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
value = (b"x" * size)
out = sys.stdout.buffer
for i in range(keys):
    key = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, size, value))
EOF
taskset -c 0 redis-cli -p "$redis_port" --pipe < "$work/redis-load.resp" > "$work/redis-load.txt"
loaded=$(redis-cli -p "$redis_port" dbsize)
[ "$loaded" = "$keys" ] || { echo "redis.sh: redis holds $loaded keys after the load, want $keys" >&2; exit 1; }

say "redis: redis-benchmark -t set,get -n $requests -c $connections -d $value_size -r $keys"
cpu_before=$(cpu_seconds "$redis_pid")
start_ns=$(date +%s%N)
taskset -c 0 redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set,get -n "$requests" \
  -c "$connections" -d "$value_size" -r "$keys" --csv > "$work/redis-run.csv"
end_ns=$(date +%s%N)
cpu_after=$(cpu_seconds "$redis_pid")
echo "$cpu_before $cpu_after $start_ns $end_ns" > "$work/redis-cpu.txt"
cat "$work/redis-run.csv"
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
for _ in $(seq 100); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
stop_pid "$redis_pid" redis-server

# --- 5. figures -------------------------------------------------------------
python3 - "$work" "$keys" "$value_size" "$connections" "$poll_mode" "$requests" "$json_out" <<'EOF'
import csv, json, sys
work, keys, size, conns, poll_mode, requests, json_out = sys.argv[1:8]
o = json.load(open(f"{work}/osprey-run.json"))
o_cpu0, o_cpu1 = map(float, open(f"{work}/osprey-cpu.txt").read().split())
r_cpu0, r_cpu1, t0, t1 = open(f"{work}/redis-cpu.txt").read().split()
r_cpu = float(r_cpu1) - float(r_cpu0)
rows = {row["test"]: row for row in csv.DictReader(open(f"{work}/redis-run.csv"))}
set_row, get_row = rows["SET"], rows["GET"]
n = int(requests)
r_time = n / float(set_row["rps"]) + n / float(get_row["rps"])
r_rps = 2 * n / r_time
kinds = {k["kind"]: k for k in o["kinds"]}
o_ops = o["total"]["ops"]
o_rps = o["total"]["ops_per_s"]
o_cpu = o_cpu1 - o_cpu0
us = lambda ms: float(ms) * 1000.0
figures = [
    ("requests/s (50/50 read/write)", o_rps, r_rps, "higher"),
    ("requests per server CPU-second", o_ops / o_cpu if o_cpu > 0 else float("nan"),
     2 * n / r_cpu if r_cpu > 0 else float("nan"), "higher"),
    ("read p50 us (GET)", kinds["read"]["latency_us"]["p50"], us(get_row["p50_latency_ms"]), "lower"),
    ("read p99 us (GET)", kinds["read"]["latency_us"]["p99"], us(get_row["p99_latency_ms"]), "lower"),
    ("write p50 us (SET)", kinds["write"]["latency_us"]["p50"], us(set_row["p50_latency_ms"]), "lower"),
    ("write p99 us (SET)", kinds["write"]["latency_us"]["p99"], us(set_row["p99_latency_ms"]), "lower"),
]
print()
print(f"{keys} keys, {size}-byte values, {conns} connections, client on core 0, server on core 1, "
      f"ospreyd poll-mode {poll_mode}")
print(f"osprey: {o_ops} requests in {o['elapsed_s']:.2f} s, server CPU {o_cpu:.2f} s, errors {o['total']['errors']}")
print(f"redis:  {2 * n} requests in {r_time:.2f} s (SET {float(set_row['rps']):.0f}/s, GET {float(get_row['rps']):.0f}/s), "
      f"server CPU {r_cpu:.2f} s")
w = max(len(f[0]) for f in figures)
print(f"{'figure':<{w}}  {'osprey':>10}  {'redis':>10}  {'osprey/redis':>12}  better")
print("-" * (w + 46))
out = []
for name, a, b, better in figures:
    ratio = a / b if b else float("nan")
    print(f"{name:<{w}}  {a:>10.0f}  {b:>10.0f}  {ratio:>12.2f}  {better}")
    out.append({"name": name, "osprey": a, "redis": b, "ratio": ratio, "better": better})
if json_out:
    json.dump({"keys": int(keys), "value_size": int(size), "connections": int(conns),
               "poll_mode": poll_mode, "figures": out}, open(json_out, "w"), indent=2)
EOF
