#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The watchdog's indexed diff (tb_inspect_diff_indexed) against the full diff
# (tb_inspect_diff), through tests/inspect-index: a base image and a live copy
# changed by the filesystem's own tools and by one raw block overwrite; the
# dirty map is every 4 KiB block where they differ.  For each filesystem:
#  - both diffs print the same lines (kinds, paths, stats, order), and they
#    hold the changes made;
#  - ext4 (20,000 files) and NTFS (5,000 files) go through the index, with no
#    fallback, and read the metadata of fewer than 200 files: the test fails
#    if the index is silently bypassed;
#  - FAT uses the full diff by design (counted as such).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require mke2fs debugfs mkfs.vfat mcopy mdel mmd python3
IDX=$abs_builddir/inspect-index
[ -x "$IDX" ] || tb_fail "$IDX is not built"
T=$TB_TMP

# N files of a few bytes in directories of 100; etc/hosts; gone/sub/x; a
# 64 KiB file of a marker pattern (to find its data in the image).
mktree()
{
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100))
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%03d.txt" % (i % 100)), "w") as f:
        f.write("file %d\n" % i)
for d in ("etc", "gone/sub", "data"):
    os.makedirs(os.path.join(root, d))
with open(os.path.join(root, "etc", "hosts"), "w") as f:
    f.write("127.0.0.1 localhost\n")
with open(os.path.join(root, "gone", "sub", "x"), "w") as f:
    f.write("x\n")
with open(os.path.join(root, "data", "blob.bin"), "wb") as f:
    f.write(b"TABULA-MARKER-BLOCK-" * 3277)
PY
}

# Overwrite the first 4 KiB block of IMG holding the marker pattern: a
# hostile guest writing a file's data without its metadata.
raw_overwrite()
{
  python3 - "$1" <<'PY'
import sys
path = sys.argv[1]
with open(path, "r+b") as f:
    data = f.read()
    at = data.find(b"TABULA-MARKER-BLOCK-" * 200)
    assert at >= 0, "marker not found"
    blk = (at + 4095) // 4096 * 4096
    f.seek(blk)
    f.write(b"\xee" * 4096)
PY
}

# check NAME BASE LIVE EXPECTED_LINES... : run inspect-index, keep its output
# in $T/NAME.out, assert both diffs agree and hold each expected line.
check()
{
  name=$1 base=$2 live=$3
  shift 3
  "$IDX" "$base" "$live" >"$T/$name.out" 2>"$T/$name.err" ||
    tb_fail "$name: the indexed diff differs from the full diff (or failed): $(cat "$T/$name.err")
$(cat "$T/$name.out")"
  for want in "$@"; do
    grep -q "^full: $want " "$T/$name.out" || tb_fail "$name: the full diff misses '$want':
$(cat "$T/$name.out")"
    grep -q "^indexed: $want " "$T/$name.out" || tb_fail "$name: the indexed diff misses '$want'"
  done
  stats=$(grep '^stats: ' "$T/$name.out")
  echo "$name: $stats"
}

stat_of()
{
  echo "$stats" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

assert_indexed()
{
  [ "$(stat_of indexed)" = 1 ] && [ "$(stat_of fallbacks)" = 0 ] ||
    tb_fail "$1: the volume did not go through the index: $stats"
  [ "$(stat_of examined)" -lt 200 ] ||
    tb_fail "$1: the indexed diff read $(stat_of examined) files for a handful of changes: $stats"
  [ "$(stat_of files)" -ge "$2" ] || tb_fail "$1: the index holds too few files: $stats"
}

# ---- ext4: 20,000 files, changed with debugfs -w and one raw block ----
mktree "$T/tree" 20000
mke2fs -q -F -t ext4 -b 4096 -N 30000 -d "$T/tree" "$T/ext4.img" 256M
cp "$T/ext4.img" "$T/ext4-live.img"
echo "new file" >"$T/new.txt"
debugfs -w "$T/ext4-live.img" >"$T/debugfs.log" 2>&1 <<EOF
write $T/new.txt d003/new.txt
rm d004/f004.txt
mkdir newdir
write $T/new.txt newdir/inner.txt
rm gone/sub/x
rmdir gone/sub
rmdir gone
sif d005/f005.txt mtime 20200101
ln d007/f007.txt d007/renamed.txt
unlink d007/f007.txt
EOF
blk=$(debugfs -R "bmap etc/hosts 0" "$T/ext4-live.img" 2>/dev/null)
[ -n "$blk" ] || tb_fail "debugfs bmap found no block for etc/hosts"
printf '6.6.6.6 evil\n' | dd of="$T/ext4-live.img" bs=4096 seek="$blk" conv=notrunc status=none
raw_overwrite "$T/ext4-live.img"
check ext4 "$T/ext4.img" "$T/ext4-live.img" \
  "created whole-ext4/d003/new.txt" "deleted whole-ext4/d004/f004.txt" \
  "changed whole-ext4/d005/f005.txt" "changed whole-ext4/etc/hosts" \
  "changed whole-ext4/data/blob.bin" "deleted whole-ext4/gone" "deleted whole-ext4/gone/sub/x" \
  "created whole-ext4/newdir" "created whole-ext4/newdir/inner.txt" \
  "created whole-ext4/d007/renamed.txt" "deleted whole-ext4/d007/f007.txt"
assert_indexed ext4 20000

# ---- NTFS: 5,000 files, changed through ntfs-3g and one raw block ----
if command -v mkntfs >/dev/null && command -v ntfs-3g >/dev/null && [ -c /dev/fuse ]; then
  mktree "$T/ntree" 5000
  truncate -s 128M "$T/ntfs.img"
  mkntfs -q -F -Q "$T/ntfs.img" >/dev/null 2>&1
  mkdir "$T/m"
  ntfs-3g "$T/ntfs.img" "$T/m" || tb_fail "ntfs-3g cannot mount the NTFS image"
  TB_MOUNTS="$TB_MOUNTS $T/m"
  cp -r "$T/ntree"/. "$T/m"/
  umount "$T/m"
  cp "$T/ntfs.img" "$T/ntfs-live.img"
  ntfs-3g "$T/ntfs-live.img" "$T/m" || tb_fail "ntfs-3g cannot mount the live NTFS image"
  echo "new file" >"$T/m/d003/new.txt"
  rm "$T/m/d004/f004.txt"
  mkdir "$T/m/newdir"
  echo inner >"$T/m/newdir/inner.txt"
  rm -r "$T/m/gone"
  touch -d 2020-01-01 "$T/m/d005/f005.txt"
  mv "$T/m/d007/f007.txt" "$T/m/d007/renamed.txt"
  head -c 300000 /dev/urandom >"$T/m/d008/big.bin"
  echo "6.6.6.6 evil" >>"$T/m/etc/hosts"
  umount "$T/m"
  raw_overwrite "$T/ntfs-live.img"
  check ntfs "$T/ntfs.img" "$T/ntfs-live.img" \
    "created whole-ntfs/d003/new.txt" "deleted whole-ntfs/d004/f004.txt" \
    "changed whole-ntfs/d005/f005.txt" "changed whole-ntfs/etc/hosts" \
    "changed whole-ntfs/data/blob.bin" "deleted whole-ntfs/gone" \
    "deleted whole-ntfs/gone/sub/x" "created whole-ntfs/newdir/inner.txt" \
    "created whole-ntfs/d007/renamed.txt" "deleted whole-ntfs/d007/f007.txt" \
    "created whole-ntfs/d008/big.bin"
  assert_indexed ntfs 5000
else
  echo "NTFS part skipped: mkntfs, ntfs-3g or /dev/fuse is missing"
fi

# ---- FAT: the full diff by design, same output ----
mktree "$T/ftree" 2000
truncate -s 64M "$T/fat.img"
mkfs.vfat "$T/fat.img" >/dev/null
MTOOLS_NO_VFAT=0 mcopy -s -Q -i "$T/fat.img" "$T/ftree"/* ::/
cp "$T/fat.img" "$T/fat-live.img"
mcopy -i "$T/fat-live.img" "$T/new.txt" ::/d003/new.txt
mdel -i "$T/fat-live.img" ::/d004/f004.txt
mmd -i "$T/fat-live.img" ::/newdir
raw_overwrite "$T/fat-live.img"
check fat "$T/fat.img" "$T/fat-live.img" \
  "created whole-fat16/d003/new.txt" "deleted whole-fat16/d004/f004.txt" \
  "created whole-fat16/newdir" "changed whole-fat16/data/blob.bin"
[ "$(stat_of full)" = 1 ] && [ "$(stat_of indexed)" = 0 ] && [ "$(stat_of fallbacks)" = 0 ] ||
  tb_fail "fat: expected the full diff by design: $stats"
echo "watchdog-index: indexed diffs equal the full diffs"
