#!/usr/bin/env bash
# Checks that this host can run Osprey on SPDK: hugepages, IOMMU, vfio, CPU
# isolation and the SPDK libraries. One line per check, PASS, WARN or FAIL,
# and for each failure the command or setting that fixes it. Changes nothing.
#
# Usage: scripts/check-host.sh [options]
#   --min-hugepages-mb N  hugepage memory to expect free (default 1024)
#   --no-spdk             skip the SPDK library check (io_uring-only hosts)
#   --strict              count WARN lines as failures
#   --dry-run             accepted for symmetry with the setup scripts (this
#                         script never changes anything)
#   -h, --help            this text
#
# SPDK is found with pkg-config (spdk_nvme, spdk_env_dpdk): set
# PKG_CONFIG_PATH=<prefix>/lib/pkgconfig, or SPDK_DIR=<prefix>.
#
# Exit codes: 0 every check passed (WARN allowed unless --strict),
# 1 at least one check failed, 2 usage error.
set -euo pipefail

prog=check-host.sh
sysfs=${OSPREY_SYSFS:-/sys}
min_mb=1024
check_spdk=1
strict=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die_usage() { echo "$prog: $*" >&2; echo "try: $prog --help" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --min-hugepages-mb) [ $# -ge 2 ] || die_usage "--min-hugepages-mb needs a number"; min_mb=$2; shift ;;
    --min-hugepages-mb=*) min_mb=${1#*=} ;;
    --no-spdk) check_spdk=0 ;;
    --strict) strict=1 ;;
    --dry-run) ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
  shift
done
[[ "$min_mb" =~ ^[0-9]+$ ]] || die_usage "--min-hugepages-mb must be a number, not '$min_mb'"

here=$(cd "$(dirname "$0")" && pwd)
fails=0
warns=0
pass() { printf 'PASS %-12s %s\n' "$1" "$2"; }
warn() { printf 'WARN %-12s %s\n     %-12s fix: %s\n' "$1" "$2" "" "$3"; warns=$((warns + 1)); }
fail() { printf 'FAIL %-12s %s\n     %-12s fix: %s\n' "$1" "$2" "" "$3"; fails=$((fails + 1)); }

# --- hugepages: enough free, and hugetlbfs mounted where SPDK's env looks.
free_kb=0
total_kb=0
for d in "$sysfs"/kernel/mm/hugepages/hugepages-*kB; do
  [ -d "$d" ] || continue
  kb=${d##*/hugepages-}; kb=${kb%kB}
  total_kb=$((total_kb + $(cat "$d/nr_hugepages") * kb))
  free_kb=$((free_kb + $(cat "$d/free_hugepages") * kb))
done
want_pages=$(((min_mb + 1) / 2)); [ "$want_pages" -gt 0 ] || want_pages=512
if [ $((free_kb / 1024)) -lt "$min_mb" ]; then
  fail hugepages "$((free_kb / 1024)) MiB free of $((total_kb / 1024)) MiB reserved; need $min_mb MiB" \
    "sudo $here/setup-hugepages.sh --pages $want_pages   (2 MiB pages; --persist to keep at boot)"
elif ! awk '$3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts; then
  fail hugepages "$((free_kb / 1024)) MiB free, but no hugetlbfs is mounted" \
    "sudo $here/setup-hugepages.sh --pages $want_pages   (mounts /dev/hugepages)"
else
  pass hugepages "$((free_kb / 1024)) MiB free of $((total_kb / 1024)) MiB reserved, hugetlbfs at $(awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts)"
fi

# --- IOMMU: vfio-pci needs one to keep a device's DMA inside its buffers.
groups=0
if [ -d "$sysfs/kernel/iommu_groups" ]; then
  groups=$(find "$sysfs/kernel/iommu_groups" -mindepth 1 -maxdepth 1 | wc -l)
fi
if [ "$groups" -gt 0 ]; then
  pass iommu "on ($groups groups)"
elif [ "$(cat "$sysfs/module/vfio/parameters/enable_unsafe_noiommu_mode" 2>/dev/null)" = Y ]; then
  warn iommu "off; vfio's unsafe no-IOMMU mode is enabled (devices can DMA anywhere)" \
    "enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt"
else
  fail iommu "off: no IOMMU groups in $sysfs/kernel/iommu_groups" \
    "enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt; or accept unsafe DMA: setup-vfio.sh --no-iommu bind <BDF>"
fi

# --- vfio: the module loaded (or loadable), so NVMe devices can be bound.
if [ -d "$sysfs/bus/pci/drivers/vfio-pci" ]; then
  bound=$(find "$sysfs/bus/pci/drivers/vfio-pci" -maxdepth 1 -name '[0-9a-f]*:*' | wc -l)
  pass vfio "vfio-pci loaded, $bound device(s) bound"
elif modinfo vfio-pci >/dev/null 2>&1 || grep -qs 'vfio-pci\|vfio_pci' "/lib/modules/$(uname -r)/modules.builtin"; then
  warn vfio "vfio-pci is available but not loaded" "sudo modprobe vfio-pci   (setup-vfio.sh bind does it)"
else
  fail vfio "vfio-pci is not available in this kernel" \
    "install a kernel with CONFIG_VFIO_PCI (Debian: the standard linux-image-amd64 has it)"
fi

# --- CPU isolation: service cores should not be shared with other work.
isolated=$(cat "$sysfs/devices/system/cpu/isolated" 2>/dev/null || true)
nohz=$(cat "$sysfs/devices/system/cpu/nohz_full" 2>/dev/null || true)
[ "$nohz" = "(null)" ] && nohz=""
if [ -n "$isolated" ]; then
  pass cpu-isolation "isolated cores: $isolated${nohz:+, nohz_full: $nohz}"
else
  warn cpu-isolation "no isolated cores (polling service cores share CPUs with other work)" \
    "boot with isolcpus=<service cores> nohz_full=<same> rcu_nocbs=<same>, and give ospreyd those cores"
fi

# --- SPDK libraries: what `cargo build --features spdk` links.
if [ "$check_spdk" = 1 ]; then
  pc_path=${PKG_CONFIG_PATH:-}
  if [ -n "${SPDK_DIR:-}" ]; then pc_path="$SPDK_DIR/lib/pkgconfig${pc_path:+:$pc_path}"; fi
  if ! command -v pkg-config >/dev/null 2>&1; then
    fail spdk "pkg-config is not installed" "sudo apt-get install pkgconf"
  elif PKG_CONFIG_PATH=$pc_path pkg-config --exists spdk_nvme spdk_env_dpdk 2>/dev/null; then
    version=$(PKG_CONFIG_PATH=$pc_path pkg-config --modversion spdk_nvme)
    libdir=$(PKG_CONFIG_PATH=$pc_path pkg-config --variable=libdir spdk_nvme)
    pass spdk "SPDK $version in $libdir"
  else
    fail spdk "no SPDK found by pkg-config (spdk_nvme, spdk_env_dpdk)${pc_path:+ in PKG_CONFIG_PATH=$pc_path}" \
      "install SPDK under a prefix, then export PKG_CONFIG_PATH=<prefix>/lib/pkgconfig (or SPDK_DIR=<prefix>); or pass --no-spdk"
  fi
fi

if [ "$fails" -gt 0 ] || { [ "$strict" = 1 ] && [ "$warns" -gt 0 ]; }; then
  echo "result: $fails failed, $warns warning(s)"
  exit 1
fi
echo "result: ready ($warns warning(s))"
