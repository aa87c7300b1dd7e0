#!/usr/bin/env bash
# Reserves hugepages for SPDK's DMA memory (and Osprey's shared-memory index),
# mounts hugetlbfs where SPDK's environment looks for it, and shows what is
# reserved and free. Idempotent: running it twice changes nothing the second
# time.
#
# Usage: scripts/setup-hugepages.sh [options]
#   --pages N         reserve N pages of the chosen size (0 releases them;
#                     default: only show)
#   --size 2M|1G      page size (default 2M)
#   --mount DIR       hugetlbfs mount point (default /dev/hugepages)
#   --persist         also keep the reservation and the mount across reboots
#                     (/etc/sysctl.d/80-osprey-hugepages.conf and /etc/fstab;
#                     for 1G pages, prints the kernel command line to set)
#   --status          only show what is reserved, free and mounted
#   --dry-run         print what would be changed, change nothing
#   -h, --help        this text
#
# Exit codes: 0 done (or nothing to do; with --dry-run: the plan is
# printable), 1 the kernel reserved fewer pages than asked or a step failed,
# 2 usage error, 3 changes are needed and we are not root.
set -euo pipefail

prog=setup-hugepages.sh
pages=""
size=2M
mount_dir=/dev/hugepages
persist=0
status_only=0
dry_run=0
sysfs=${OSPREY_SYSFS:-/sys}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die_usage() { echo "$prog: $*" >&2; echo "try: $prog --help" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --pages) [ $# -ge 2 ] || die_usage "--pages needs a number"; pages=$2; shift 2 ;;
    --pages=*) pages=${1#*=}; shift ;;
    --size) [ $# -ge 2 ] || die_usage "--size needs 2M or 1G"; size=$2; shift 2 ;;
    --size=*) size=${1#*=}; shift ;;
    --mount) [ $# -ge 2 ] || die_usage "--mount needs a directory"; mount_dir=$2; shift 2 ;;
    --mount=*) mount_dir=${1#*=}; shift ;;
    --persist) persist=1; shift ;;
    --status) status_only=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

case "$size" in
  2M|2m|2048k|2048kB) size=2M; size_kb=2048 ;;
  1G|1g|1048576k|1048576kB) size=1G; size_kb=1048576 ;;
  *) die_usage "--size must be 2M or 1G, not '$size'" ;;
esac
if [ -n "$pages" ] && ! [[ "$pages" =~ ^[0-9]+$ ]]; then
  die_usage "--pages must be a non-negative integer, not '$pages'"
fi
if [ "$persist" = 1 ] && [ -z "$pages" ]; then
  die_usage "--persist needs --pages N"
fi

pool_dir() { echo "$sysfs/kernel/mm/hugepages/hugepages-$1kB"; }
read_or() { if [ -r "$1" ]; then cat "$1"; else echo "$2"; fi; }

# The hugetlbfs mount at DIR and its page size, if any ("" when not mounted).
mount_pagesize() {
  awk -v dir="$1" '$2 == dir && $3 == "hugetlbfs" {
      ps = "default"; n = split($4, o, ",");
      for (i = 1; i <= n; i++) if (o[i] ~ /^pagesize=/) ps = substr(o[i], 10);
      print ps; found = 1; exit }
    END { if (!found) print "" }' /proc/mounts
}

show_status() {
  echo "hugepage pools:"
  local any=0 d kb total free resv surplus label
  for d in "$sysfs"/kernel/mm/hugepages/hugepages-*kB; do
    [ -d "$d" ] || continue
    any=1
    kb=${d##*/hugepages-}; kb=${kb%kB}
    total=$(read_or "$d/nr_hugepages" 0)
    free=$(read_or "$d/free_hugepages" 0)
    resv=$(read_or "$d/resv_hugepages" 0)
    surplus=$(read_or "$d/surplus_hugepages" 0)
    if [ "$kb" -ge 1048576 ]; then label="$((kb / 1048576))G"; else label="$((kb / 1024))M"; fi
    printf '  %-8s reserved %6s  free %6s  in use %6s  (%s MiB reserved, %s MiB free; resv %s, surplus %s)\n' \
      "$label" "$total" "$free" "$((total - free))" \
      "$((total * kb / 1024))" "$((free * kb / 1024))" "$resv" "$surplus"
  done
  [ "$any" = 1 ] || echo "  none: this kernel has no hugetlb support (CONFIG_HUGETLBFS)"
  echo "hugetlbfs mounts:"
  if ! awk '$3 == "hugetlbfs" { print "  " $2 " (" $4 ")"; n++ } END { exit n == 0 }' /proc/mounts; then
    echo "  none"
  fi
}

if [ "$status_only" = 1 ] || [ -z "$pages" ]; then
  show_status
  if [ -z "$pages" ] && [ "$status_only" = 0 ]; then
    echo "(nothing changed: give --pages N to reserve pages; see --help)"
  fi
  exit 0
fi

pool=$(pool_dir "$size_kb")
if [ ! -d "$pool" ]; then
  echo "$prog: the kernel offers no ${size} hugepages ($pool is missing)." >&2
  if [ "$size" = 1G ]; then
    echo "fix: the CPU needs the pdpe1gb flag; boot with 'default_hugepagesz=1G hugepagesz=1G hugepages=$pages'," >&2
    echo "     or use --size 2M" >&2
  fi
  exit 1
fi

# The plan: a list of steps, each a description and a command.
steps=()
descs=()
plan() { descs+=("$1"); steps+=("$2"); }

current=$(read_or "$pool/nr_hugepages" 0)
if [ "$current" != "$pages" ]; then
  plan "reserve $pages ${size} hugepages (now $current)" \
    "echo $pages > $pool/nr_hugepages"
fi

mounted=$(mount_pagesize "$mount_dir")
if [ "$pages" = 0 ]; then
  : # releasing pages: leave any mount alone
elif [ -z "$mounted" ]; then
  if [ ! -d "$mount_dir" ]; then
    plan "create $mount_dir" "mkdir -p $mount_dir"
  fi
  plan "mount hugetlbfs (pagesize=$size) at $mount_dir" \
    "mount -t hugetlbfs -o pagesize=$size nodev $mount_dir"
elif [ "$mounted" != "$size" ] && [ "$mounted" != default ]; then
  echo "$prog: $mount_dir is already a hugetlbfs mount with pagesize=$mounted, not $size;" >&2
  echo "fix: choose another --mount directory, or 'umount $mount_dir' first" >&2
  exit 1
fi

if [ "$persist" = 1 ]; then
  if [ "$size" = 2M ]; then
    conf=/etc/sysctl.d/80-osprey-hugepages.conf
    want="vm.nr_hugepages = $pages"
    if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
      plan "keep $pages 2M pages across reboots ($conf)" "echo '$want' > $conf"
    fi
  else
    echo "note: 1G pages are reserved reliably only at boot; add to the kernel command line:"
    echo "      default_hugepagesz=1G hugepagesz=1G hugepages=$pages"
  fi
  if ! awk -v dir="$mount_dir" '$2 == dir && $3 == "hugetlbfs" { f = 1 } END { exit !f }' /etc/fstab 2>/dev/null; then
    plan "mount $mount_dir at boot (/etc/fstab)" \
      "echo 'nodev $mount_dir hugetlbfs pagesize=$size 0 0' >> /etc/fstab"
  fi
fi

if [ ${#steps[@]} -eq 0 ]; then
  echo "nothing to do: $pages ${size} pages reserved, hugetlbfs mounted at $mount_dir"
  show_status
  exit 0
fi

if [ "$dry_run" = 1 ]; then
  echo "dry run; would do:"
  for i in "${!steps[@]}"; do
    printf '  %s\n      %s\n' "${descs[$i]}" "${steps[$i]}"
  done
  show_status
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "$prog: changing hugepages needs root; run with sudo (or --dry-run to see the plan)" >&2
  exit 3
fi

for i in "${!steps[@]}"; do
  echo "${descs[$i]}"
  if ! bash -c "${steps[$i]}"; then
    echo "$prog: failed: ${steps[$i]}" >&2
    exit 1
  fi
done

got=$(read_or "$pool/nr_hugepages" 0)
show_status
if [ "$got" -lt "$pages" ]; then
  echo "$prog: asked for $pages ${size} pages, the kernel reserved $got (memory is fragmented or short)." >&2
  echo "fix: run early after boot, free memory ('echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory'), or reserve at boot with 'hugepages=$pages'" >&2
  exit 1
fi
