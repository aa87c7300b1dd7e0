#!/usr/bin/env bash
# Lists NVMe controllers and moves chosen ones between the kernel's nvme
# driver and vfio-pci (which SPDK drives from user space). Refuses to touch a
# controller whose namespaces hold a mounted file system, active swap, or a
# device-mapper/md holder. Idempotent: binding a controller that is already
# on the wanted driver does nothing.
#
# Usage: scripts/setup-vfio.sh [options] [list]
#        scripts/setup-vfio.sh [options] bind   BDF...   (nvme -> vfio-pci)
#        scripts/setup-vfio.sh [options] unbind BDF...   (vfio-pci -> nvme)
#   BDF               a PCI address such as 0000:01:00.0 (or 01:00.0)
#   --no-iommu        allow binding without an IOMMU by enabling vfio's
#                     unsafe no-IOMMU mode (any DMA can reach all memory:
#                     only on hosts where that is acceptable)
#   --dry-run         print what would be done, change nothing
#   -h, --help        this text
#
# Exit codes: 0 done (or nothing to do; with --dry-run: the plan is fine),
# 1 a step failed, 2 usage error (or an unknown/non-NVMe BDF),
# 3 refused: the controller is in use (mounted, swap, holders),
# 4 no IOMMU and --no-iommu not given, 5 changes are needed and we are not root.
set -euo pipefail

prog=setup-vfio.sh
# Tests point these at a fake tree; normally the real ones.
sysfs=${OSPREY_SYSFS:-/sys}
mounts=${OSPREY_PROC_MOUNTS:-/proc/mounts}
dry_run=0
no_iommu=0
action=""
bdfs=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die_usage() { echo "$prog: $*" >&2; echo "try: $prog --help" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --no-iommu) no_iommu=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die_usage "unknown option '$1'" ;;
    list|bind|unbind)
      [ -z "$action" ] || die_usage "one action at a time ('$action', then '$1')"
      action=$1 ;;
    *)
      [ -n "$action" ] || die_usage "unknown action '$1' (list, bind or unbind)"
      bdfs+=("$1") ;;
  esac
  shift
done
action=${action:-list}

pci=$sysfs/bus/pci/devices
NVME_CLASS=0x010802

is_nvme() { [ -r "$pci/$1/class" ] && [ "$(cat "$pci/$1/class")" = "$NVME_CLASS" ]; }
driver_of() {
  if [ -L "$pci/$1/driver" ]; then basename "$(readlink "$pci/$1/driver")"; else echo none; fi
}
nvme_controllers() {
  local d
  for d in "$pci"/*; do
    [ -e "$d/class" ] || continue
    [ "$(cat "$d/class")" = "$NVME_CLASS" ] && basename "$d"
  done
  return 0
}

# Block devices (namespaces and their partitions) of a controller bound to nvme.
block_devices() {
  local b part
  for b in "$pci/$1"/nvme/nvme*/nvme*n* "$pci/$1"/nvme/nvme*/nvme*c*n*; do
    [ -e "$b" ] || continue
    echo "${b##*/}"
    for part in "$b"/"${b##*/}"p*; do
      [ -e "$part" ] && echo "${part##*/}"
    done
  done
  return 0
}

# Why a controller must not be touched: one line per use, nothing if free.
uses_of() {
  local dev major_minor
  while read -r dev; do
    [ -n "$dev" ] || continue
    awk -v d="/dev/$dev" '$1 == d { print d " is mounted at " $2 }' "$mounts"
    awk -v d="/dev/$dev" 'NR > 1 && $1 == d { print d " is active swap" }' /proc/swaps
    if [ -r "$sysfs/class/block/$dev/dev" ]; then
      major_minor=$(cat "$sysfs/class/block/$dev/dev")
      # Mounts by device number catch /dev/mapper or by-id spellings.
      awk -v mm="$major_minor" -v d="$dev" '$3 == mm { print "/dev/" d " is mounted at " $5 }' /proc/self/mountinfo
    fi
    if [ -d "$sysfs/class/block/$dev/holders" ] && [ -n "$(ls -A "$sysfs/class/block/$dev/holders" 2>/dev/null)" ]; then
      echo "/dev/$dev is held by $(ls "$sysfs/class/block/$dev/holders" | tr '\n' ' ')(device-mapper, md or LVM)"
    fi
  done < <(block_devices "$1")
  return 0
}

iommu_on() { [ -d "$sysfs/kernel/iommu_groups" ] && [ -n "$(ls -A "$sysfs/kernel/iommu_groups" 2>/dev/null)" ]; }
noiommu_on() { [ "$(cat "$sysfs/module/vfio/parameters/enable_unsafe_noiommu_mode" 2>/dev/null)" = Y ]; }

list() {
  local ids
  mapfile -t ids < <(nvme_controllers)
  if iommu_on; then
    echo "IOMMU: on ($(ls "$sysfs/kernel/iommu_groups" | wc -l) groups)"
  elif noiommu_on; then
    echo "IOMMU: off; vfio no-IOMMU mode is ENABLED (unsafe)"
  else
    echo "IOMMU: off (binding to vfio-pci needs intel_iommu=on / amd_iommu=on, or --no-iommu)"
  fi
  if [ ${#ids[@]} -eq 0 ]; then
    echo "no NVMe controllers found"
    return 0
  fi
  printf '%-14s %-11s %-10s %-5s %s\n' BDF VENDOR:DEV DRIVER NUMA "BLOCK DEVICES / IN USE"
  local id vendor device numa blocks uses
  for id in "${ids[@]}"; do
    vendor=$(cat "$pci/$id/vendor"); device=$(cat "$pci/$id/device")
    numa=$(cat "$pci/$id/numa_node" 2>/dev/null || echo -)
    blocks=$(block_devices "$id" | tr '\n' ' ')
    uses=$(uses_of "$id" | sort -u | tr '\n' ';')
    printf '%-14s %-11s %-10s %-5s %s%s\n' "$id" "${vendor#0x}:${device#0x}" "$(driver_of "$id")" "$numa" \
      "${blocks:--}" "${uses:+ IN USE: $uses}"
  done
}

normalise() {
  local b=$1
  [[ "$b" =~ ^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] && b="0000:$b"
  [[ "$b" =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] || die_usage "'$1' is not a PCI address (e.g. 0000:01:00.0)"
  echo "${b,,}"
}

steps=()
descs=()
plan() { descs+=("$1"); steps+=("$2"); }

# Plans moving $1 to driver $2 (vfio-pci or nvme).
plan_move() {
  local id=$1 target=$2 current
  current=$(driver_of "$id")
  if [ "$current" = "$target" ]; then
    echo "$id: already on $target"
    return 0
  fi
  if [ "$target" = vfio-pci ]; then
    plan "$id: let only vfio-pci claim it" "echo vfio-pci > $pci/$id/driver_override"
  else
    plan "$id: clear the driver override" "echo > $pci/$id/driver_override"
  fi
  if [ "$current" != none ]; then
    plan "$id: unbind from $current" "echo $id > $pci/$id/driver/unbind"
  fi
  plan "$id: probe, so that $target binds it" "echo $id > $sysfs/bus/pci/drivers_probe"
}

case "$action" in
  list)
    [ ${#bdfs[@]} -eq 0 ] || die_usage "list takes no addresses"
    list
    exit 0 ;;
  bind|unbind)
    [ ${#bdfs[@]} -gt 0 ] || die_usage "$action needs at least one PCI address"
    ;;
esac

ids=()
for b in "${bdfs[@]}"; do
  id=$(normalise "$b")
  [ -e "$pci/$id" ] || { echo "$prog: no PCI device $id" >&2; exit 2; }
  is_nvme "$id" || { echo "$prog: $id is not an NVMe controller (class $(cat "$pci/$id/class"))" >&2; exit 2; }
  ids+=("$id")
done

if [ "$action" = bind ]; then
  for id in "${ids[@]}"; do
    uses=$(uses_of "$id" | sort -u)
    if [ -n "$uses" ]; then
      echo "$prog: refusing to touch $id: it is in use:" >&2
      echo "$uses" | sed 's/^/  /' >&2
      echo "fix: unmount its file systems (and swapoff / remove holders) first" >&2
      exit 3
    fi
  done
  if ! iommu_on && ! noiommu_on; then
    if [ "$no_iommu" = 0 ]; then
      echo "$prog: no IOMMU is active, so vfio-pci cannot isolate the device's DMA." >&2
      echo "fix: enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt," >&2
      echo "     or, only if unprotected DMA is acceptable on this host, pass --no-iommu" >&2
      exit 4
    fi
    echo "WARNING: enabling vfio's unsafe no-IOMMU mode: the device can DMA anywhere in memory" >&2
    plan "load vfio in unsafe no-IOMMU mode" \
      "modprobe vfio enable_unsafe_noiommu_mode=1 && echo Y > $sysfs/module/vfio/parameters/enable_unsafe_noiommu_mode"
  fi
  if [ ! -d "$sysfs/bus/pci/drivers/vfio-pci" ]; then
    plan "load the vfio-pci driver" "modprobe vfio-pci"
  fi
  for id in "${ids[@]}"; do plan_move "$id" vfio-pci; done
else
  if [ ! -d "$sysfs/bus/pci/drivers/nvme" ]; then
    plan "load the nvme driver" "modprobe nvme"
  fi
  for id in "${ids[@]}"; do plan_move "$id" nvme; done
fi

if [ ${#steps[@]} -eq 0 ]; then
  echo "nothing to do"
  exit 0
fi
if [ "$dry_run" = 1 ]; then
  echo "dry run; would do:"
  for i in "${!steps[@]}"; do printf '  %s\n      %s\n' "${descs[$i]}" "${steps[$i]}"; done
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "$prog: rebinding drivers needs root; run with sudo (or --dry-run to see the plan)" >&2
  exit 5
fi
for i in "${!steps[@]}"; do
  echo "${descs[$i]}"
  bash -c "${steps[$i]}" || { echo "$prog: failed: ${steps[$i]}" >&2; exit 1; }
done
want=vfio-pci; [ "$action" = unbind ] && want=nvme
failed=0
for id in "${ids[@]}"; do
  now=$(driver_of "$id")
  if [ "$now" = "$want" ]; then echo "$id: on $want"; else echo "$prog: $id is on $now, not $want" >&2; failed=1; fi
done
exit $failed
