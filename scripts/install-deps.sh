#!/usr/bin/env bash
# Installs what building and testing Osprey needs on Debian 12, idempotently.
# Rust itself comes from rustup (Debian 12's rustc is too old); this script
# checks for it and adds the rustfmt and clippy components when missing.
set -euo pipefail

need_rust="1.89"
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Install Rust >= $need_rust with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -n1)" != "$need_rust" ]; then
  echo "install-deps: rustc $have is older than $need_rust; run 'rustup update stable'." >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

# Debian packages the build and the tests use.
packages=(pkg-config build-essential fio redis-server redis-tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  # Packages that ship a service (redis-server) must not start it: the
  # benchmarks start their own on free ports. policy-rc.d refuses service
  # starts during this install only (unless the host already has one).
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && added_policy=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || status=$?
  if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi
  [ "$status" = 0 ] || exit "$status"
fi
echo "rustc $have, cargo fmt and clippy present; Debian packages present: ${packages[*]}"

# The Python client the end-to-end tests drive (appliance/tests/python_client.rs)
# lives in a venv under target/; the tests look for it there or at $OSPREY_PYTHON.
# The pinned release ships a manylinux wheel for CPython 3.8-3.13 on x86_64 and
# aarch64, so nothing is compiled (pip is told to refuse source builds).
aerospike_py="19.3.0"
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/target/python-venv"
venv_python="$venv/bin/python3"
if ! "$venv_python" -c 'import sys, aerospike, importlib.metadata as m; sys.exit(m.version("aerospike") != sys.argv[1])' "$aerospike_py" >/dev/null 2>&1; then
  if [ ! -x "$venv_python" ] || ! "$venv_python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's python3 keeps ensurepip in a separate package.
      rm -rf "$venv"
      if [ "$(id -u)" != 0 ]; then
        echo "install-deps: 'python3 -m venv' failed; install python3-venv (as root) and run this again" >&2
        exit 1
      fi
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv "$venv"
    fi
  fi
  "$venv_python" -m pip install -q --disable-pip-version-check --only-binary=:all: "aerospike==$aerospike_py"
fi
echo "Python client: aerospike $aerospike_py in $venv"
