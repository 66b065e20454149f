#!/bin/sh
# bench-fuse.sh: the view against fuse2fs and guestmount on one ext4 image.
#
#   scripts/bench-fuse.sh [BUILD_DIR]     (default: the current directory)
#
# For each tool: time from starting the mount to the first listing of the
# guest's root directory, and a sequential read (dd, 1 MiB blocks) of a
# 256 MiB file, page cache dropped before each when we may (so the first
# listing includes loading the tool's shared libraries from disk: for
# tabula-fuse, libtsk's and libnbd's forty).  A second table repeats the
# first listing with everything cached (median of 5 mounts).  tabula-fuse
# reads the image over NBD from nbdkit (file plugin, unix socket) the way it
# reads an appliance's IMAGE@N export.  guestmount runs with
# LIBGUESTFS_BACKEND=direct, force_tcg (KVM hangs on some hosts), and is
# skipped if it cannot start here.
set -eu
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
fuse=$build/fuse/tabula-fuse
[ -x "$fuse" ] || { echo "bench-fuse: $fuse is not built (give the build directory)" >&2; exit 1; }
command -v nbdkit >/dev/null || { echo "bench-fuse: nbdkit is missing" >&2; exit 1; }

T=$(mktemp -d /tmp/tabula-bench-fuse.XXXXXX)
cleanup()
{
  for m in "$T"/m-*; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
  [ -f "$T/nbdkit.pid" ] && kill "$(cat "$T/nbdkit.pid")" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

progress() { [ -t 2 ] && printf '\r%-60s' "$*" >&2 || true; }

progress "building a 512 MiB ext4 image with a 256 MiB file..."
mkdir -p "$T/src/etc" "$T/exports"
head -c 268435456 /dev/urandom >"$T/src/big.bin"
for i in $(seq 1 200); do echo "config $i" >"$T/src/etc/file$i.conf"; done
img=$T/exports/bench@1
truncate -s 512M "$img"
mke2fs -q -F -t ext4 -b 4096 -d "$T/src" "$img"
nbdkit --unix "$T/nbd.sock" -P "$T/nbdkit.pid" file dir="$T/exports"

now_ms() { date +%s%3N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# measure NAME ROOT-DIR-INSIDE-MOUNT MOUNT-COMMAND...
measure()
{
  name=$1; sub=$2; shift 2
  m=$T/m-$name
  mkdir -p "$m"
  progress "$name: mounting..."
  drop_caches
  t0=$(now_ms)
  if ! "$@" "$m" >"$T/$name.log" 2>&1; then
    printf '%-12s %14s %14s   (%s)\n' "$name" "-" "-" "could not mount: $(tail -1 "$T/$name.log")"
    return 0
  fi
  i=0
  until ls "$m/$sub" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 3000 ] || { printf '%-12s %14s\n' "$name" "no listing"; return 0; }
    sleep 0.01
  done
  t1=$(now_ms)
  drop_caches
  r0=$(now_ms)
  dd if="$m/$sub/big.bin" of=/dev/null bs=1M status=none
  r1=$(now_ms)
  mbs=$(awk "BEGIN { printf \"%.0f\", 256 * 1000 / ($r1 - $r0 + 0.001) }")
  printf '%-12s %11d ms %10s MiB/s\n' "$name" $((t1 - t0)) "$mbs"
  echo "$name $((t1 - t0)) $mbs" >>"$T/figures"
  fusermount3 -u "$m" 2>/dev/null || umount "$m"
}

tabula_mount() { "$fuse" --uri "nbd+unix:///?socket=$T/nbd.sock" "$1"; }
fuse2fs_mount() { fuse2fs -o ro,fakeroot "$img" "$1"; }
guest_mount() { LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg timeout 300 guestmount -a "$img" -m /dev/sda --ro "$1"; }

out=$T/table
{
  printf '%-12s %14s %16s\n' tool "first listing" "seq. read 256M"
  measure tabula-fuse images/bench/1/fs/whole-ext4 tabula_mount
  if command -v fuse2fs >/dev/null; then measure fuse2fs . fuse2fs_mount; else echo "fuse2fs      (not installed)"; fi
  if command -v guestmount >/dev/null; then measure guestmount . guest_mount; else echo "guestmount   (not installed)"; fi
} >"$out"
# warm NAME ROOT-DIR MOUNT-COMMAND: median ms of 5 mounts to the first
# listing, after one to warm the caches.
warm()
{
  name=$1; sub=$2; shift 2
  m=$T/m-$name
  for k in 0 1 2 3 4 5; do
    t0=$(now_ms)
    "$@" "$m" >"$T/$name.log" 2>&1 || return 0
    until ls "$m/$sub" >/dev/null 2>&1; do sleep 0.001; done
    t1=$(now_ms)
    [ $k -eq 0 ] || echo $((t1 - t0))
    fusermount3 -u "$m" 2>/dev/null || umount "$m"
  done | sort -n | sed -n 3p
}
progress "warm mounts..."
warm_tabula=$(warm tabula-fuse images/bench/1/fs/whole-ext4 tabula_mount)
warm_fuse2fs=$(command -v fuse2fs >/dev/null && warm fuse2fs . fuse2fs_mount || true)
progress ""
[ -t 2 ] && printf '\r' >&2
cat "$out"
printf '\nwith the page cache warm (median of 5 mounts):\n'
printf '%-12s %11s ms\n' tabula-fuse "$warm_tabula" fuse2fs "${warm_fuse2fs:--}"
figure() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$T/figures" 2>/dev/null; }
for anchor in fuse2fs guestmount; do
  [ -n "$(figure $anchor 2)" ] || continue
  bench_summary "view: mount to first listing" "$(figure tabula-fuse 2) ms" "$anchor" \
    "$(figure $anchor 2) ms" "< 100 ms"
  bench_summary "view: sequential read 256 MiB" "$(figure tabula-fuse 3) MiB/s" "$anchor" \
    "$(figure $anchor 3) MiB/s" ">= 0.5 of fuse2fs"
done
[ -z "$warm_fuse2fs" ] || bench_summary "view: mount to first listing, caches warm" \
  "$warm_tabula ms" fuse2fs "$warm_fuse2fs ms" "< 100 ms"
