#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-fuse.sh: the view side by side with the reference drivers, in one run.
#
#   scripts/bench-fuse.sh [BUILD_DIR]     (default: the current directory;
#                                          build it WITHOUT --enable-sanitizers)
#
# Two images, exported by nbdkit (file plugin, unix socket) the way the
# appliance exports IMAGE@N: an ext4 with a 20,000-entry directory, 500
# small files in a tree and a 256 MiB file; an NTFS (filled by ntfs-3g) with
# a 5,000-entry directory and the same tree.  The references mount the same
# image files: the kernel's ext4 (a loop device, read-only) and ntfs-3g
# (read-only).  The same images imported into a local appliance (a state
# directory, the tabula plugin serving it) are the view's third row
# ("local", tabula-fuse -c): there it reads a version from its file in the
# store, not through nbdkit.  For each: mount to first listing of the root (mount started
# to ls done), `find` and `find -ls` over the whole tree, a sequential
# read of the big file (dd, 1 MiB blocks), and `find -ls` once more on the
# same mount (what the kernel kept: an immutable version's names and
# attributes stay in its cache).  Each figure is the median of 5
# runs, each on a fresh mount with the page cache warm (the image files
# cached; one run first to warm them), so what is measured is the driver,
# not the disk.  Needs root (mount, loop devices).
set -eu
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
fuse=$build/fuse/tabula-fuse
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
ctl=$build/tabulactl/tabulactl
for f in "$fuse" "$plugin" "$ctl"; do
  [ -f "$f" ] || { echo "bench-fuse: $f is not built (give the build directory)" >&2; exit 1; }
done
for c in nbdkit mke2fs mkntfs ntfs-3g losetup; do
  command -v $c >/dev/null || { echo "bench-fuse: $c is missing" >&2; exit 1; }
done

T=$(mktemp -d /tmp/tabula-bench-fuse.XXXXXX)
# Run alone, the summary rows (README's table) are printed at the end.
alone=
[ -n "${TB_BENCH_SUMMARY:-}" ] || { alone=1 TB_BENCH_SUMMARY=$T/summary; }
cleanup()
{
  for m in "$T"/m-*; do mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  [ -f "$T/nbdkit.pid" ] && kill "$(cat "$T/nbdkit.pid")" 2>/dev/null
  [ -f "$T/app.pid" ] && kill "$(cat "$T/app.pid")" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT INT TERM
progress() { [ -t 2 ] && printf '\r%-60s' "$*" >&2 || true; }

progress "building the images..."
mkdir -p "$T/src/many" "$T/src/tree" "$T/exports"
for i in $(seq 1 20000); do : >"$T/src/many/entry-$i"; done
for d in $(seq 1 20); do
  mkdir -p "$T/src/tree/d$d/sub"
  for f in $(seq 1 25); do echo "file $d $f" >"$T/src/tree/d$d/sub/f$f.txt"; done
done
head -c 268435456 /dev/urandom >"$T/big.bin"
cp "$T/big.bin" "$T/src/big.bin"
ext=$T/exports/ext4@1
truncate -s 600M "$ext"
mke2fs -q -F -t ext4 -b 4096 -d "$T/src" "$ext"
ntfs=$T/exports/ntfs@1
truncate -s 600M "$ntfs"
mkntfs -q -F -Q "$ntfs" >/dev/null 2>&1
mkdir -p "$T/m-fill"
ntfs-3g "$ntfs" "$T/m-fill"
(cd "$T/src" && cp -r tree big.bin "$T/m-fill"/ && mkdir "$T/m-fill/many" &&
  for i in $(seq 1 5000); do : >"$T/m-fill/many/entry-$i"; done)
umount "$T/m-fill"
rm -rf "$T/src"
nbdkit --unix "$T/nbd.sock" -P "$T/nbdkit.pid" file dir="$T/exports"
until [ -S "$T/nbd.sock" ]; do sleep 0.05; done
progress "importing the images into a local appliance..."
printf '{ "state_dir": "%s", "listen": { "unix": "%s" }, "images": { "ext4": {}, "ntfs": {} },
  "clients": { "pc01": { "image": "ext4" } } }\n' "$T/state" "$T/app.sock" >"$T/tabula.json"
"$ctl" -c "$T/tabula.json" image import ext4 "$ext" >/dev/null
"$ctl" -c "$T/tabula.json" image import ntfs "$ntfs" >/dev/null
nbdkit --unix "$T/app.sock" -P "$T/app.pid" "$plugin" config="$T/tabula.json"
until [ -S "$T/app.sock" ]; do sleep 0.05; done
# the imported copies into the page cache, as the exported files are
cat "$T/state/images/ext4/1.img" "$T/state/images/ntfs/1.img" >/dev/null

now_ms() { date +%s%3N; }

# mount_NAME DIR: mount; root_NAME: the directory the guest's root is in.
mount_tabula() { "$fuse" --uri "nbd+unix:///?socket=$T/nbd.sock" "$1"; }
mount_local() { "$fuse" -c "$T/tabula.json" "$1"; }
mount_kernel() { mount -o ro,loop,noload "$ext" "$1"; }
mount_ntfs3g() { ntfs-3g -o ro "$ntfs" "$1"; }

# run KIND TOOL ROOT-SUBDIR: one mount; prints "first find findls read again" (ms).
run()
{
  kind=$1 tool=$2 sub=$3
  m=$T/m-$tool-$kind
  mkdir -p "$m"
  t0=$(now_ms)
  "mount_$tool" "$m" >>"$T/$tool.log" 2>&1 || { echo "- - - -"; return 0; }
  until ls "$m/$sub" >/dev/null 2>&1; do sleep 0.001; done
  t1=$(now_ms)
  find "$m/$sub" >/dev/null
  t2=$(now_ms)
  find "$m/$sub" -ls >/dev/null
  t3=$(now_ms)
  dd if="$m/$sub/big.bin" of=/dev/null bs=1M status=none
  t4=$(now_ms)
  find "$m/$sub" -ls >/dev/null
  t5=$(now_ms)
  echo "$((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t4 - t3)) $((t5 - t4))"
  umount "$m" 2>/dev/null || fusermount3 -u "$m"
  # a FUSE daemon may still be exiting: wait until the mount point is free
  i=0
  while mountpoint -q "$m" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
}

# median KIND TOOL SUB: 1 warm-up run, then the median of 5, per column.
median()
{
  run "$@" >/dev/null
  for k in 1 2 3 4 5; do run "$@"; done >"$T/runs"
  for c in 1 2 3 4 5; do cut -d' ' -f$c "$T/runs" | sort -n | sed -n 3p; done | tr '\n' ' '
}

# start_ms PROGRAM: the mean wall time of 100 starts of PROGRAM --help (ms),
# the fixed part of every mount to first listing (README explains it).
start_ms()
{
  t0=$(date +%s%N)
  for _ in $(seq 1 100); do "$1" --help >/dev/null 2>&1 || :; done
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 100 / 1e6 }'
}
start_tabula=$(start_ms "$fuse")
start_ntfs3g=$(start_ms "$(command -v ntfs-3g)")

out=$T/table
for pair in "ext4 tabula images/ext4/1/fs/whole-ext4" "ext4 local images/ext4/1/fs/whole-ext4" \
  "ext4 kernel ." "ntfs tabula images/ntfs/1/fs/whole-ntfs" \
  "ntfs local images/ntfs/1/fs/whole-ntfs" "ntfs ntfs3g ."; do
  set -- $pair
  progress "$1: $2..."
  echo "$1 $2 $(median "$1" "$2" "$3")" >>"$T/figures"
done
progress ""
[ -t 2 ] && printf '\r' >&2
mbs() { awk -v ms="$1" 'BEGIN { if (ms + 0 > 0) printf "%.0f", 256 * 1000 / ms; else print "-" }'; }
printf '%-6s %-12s %14s %10s %10s %16s %12s\n' fs tool "first listing" find "find -ls" \
  "seq. read 256M" "find -ls again"
while read -r fs tool first find findls read again; do
  printf '%-6s %-12s %11s ms %7s ms %7s ms %10s MiB/s %9s ms\n' "$fs" "$tool" "$first" "$find" \
    "$findls" "$(mbs "$read")" "$again"
done <"$T/figures"
printf '(ext4: 20,000-entry directory + 520 more; NTFS: 5,000 + 520; median of 5 warm mounts)\n'
printf 'process start (--help, mean of 100): tabula-fuse %s ms, ntfs-3g %s ms\n' "$start_tabula" \
  "$start_ntfs3g"
fig() { awk -v f="$1" -v t="$2" -v c="$3" '$1 == f && $2 == t { print $c }' "$T/figures"; }
bench_summary "view ext4: find (20,500 entries)" "$(fig ext4 tabula 4) ms" "kernel ext4" \
  "$(fig ext4 kernel 4) ms" "<= 2x"
bench_summary "view ext4: find -ls" "$(fig ext4 tabula 5) ms" "kernel ext4" \
  "$(fig ext4 kernel 5) ms" "<= 2x"
bench_summary "view ext4: mount to first listing" "$(fig ext4 tabula 3) ms" "kernel ext4" \
  "$(fig ext4 kernel 3) ms" "<= 2x"
bench_summary "view ext4: sequential read 256 MiB" "$(mbs "$(fig ext4 tabula 6)") MiB/s" \
  "kernel ext4" "$(mbs "$(fig ext4 kernel 6)") MiB/s" ">= 0.8x"
bench_summary "view NTFS: find (5,500 entries)" "$(fig ntfs tabula 4) ms" "ntfs-3g" \
  "$(fig ntfs ntfs3g 4) ms" "<= 1.2x"
bench_summary "view NTFS: find -ls" "$(fig ntfs tabula 5) ms" "ntfs-3g" "$(fig ntfs ntfs3g 5) ms" \
  "<= 1.2x"
bench_summary "view NTFS: mount to first listing" "$(fig ntfs tabula 3) ms" "ntfs-3g" \
  "$(fig ntfs ntfs3g 3) ms" "<= 2x"
bench_summary "view NTFS: sequential read 256 MiB" "$(mbs "$(fig ntfs tabula 6)") MiB/s" \
  "ntfs-3g" "$(mbs "$(fig ntfs ntfs3g 6)") MiB/s" ">= 0.8x"
bench_summary "view ext4, local appliance: mount to first listing" "$(fig ext4 local 3) ms" \
  "kernel ext4" "$(fig ext4 kernel 3) ms" "<= 2x"
bench_summary "view ext4, local appliance: sequential read 256 MiB" \
  "$(mbs "$(fig ext4 local 6)") MiB/s" "kernel ext4" "$(mbs "$(fig ext4 kernel 6)") MiB/s" ">= 0.8x"
bench_summary "view NTFS, local appliance: mount to first listing" "$(fig ntfs local 3) ms" \
  "ntfs-3g" "$(fig ntfs ntfs3g 3) ms" "<= 2x"
bench_summary "view NTFS, local appliance: sequential read 256 MiB" \
  "$(mbs "$(fig ntfs local 6)") MiB/s" "ntfs-3g" "$(mbs "$(fig ntfs ntfs3g 6)") MiB/s" ">= 0.8x"
bench_summary "view: process start (--help, mean of 100)" "$start_tabula ms" "ntfs-3g" \
  "$start_ntfs3g ms" ""
bench_summary "view ext4: find -ls again (same mount)" "$(fig ext4 tabula 7) ms" "kernel ext4" \
  "$(fig ext4 kernel 7) ms" ""
bench_summary "view NTFS: find -ls again (same mount)" "$(fig ntfs tabula 7) ms" "ntfs-3g" \
  "$(fig ntfs ntfs3g 7) ms" ""
if [ -n "$alone" ]; then
  echo
  bench_summary_print "$TB_BENCH_SUMMARY"
fi
