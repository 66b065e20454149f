#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Hostile filesystems: a few hundred mutated images (random bytes in their
# metadata sectors) go through lib/inspect, the code under the view
# (tests/fuse-mutate: open, walk, stat, readdir, readlink, read, diff, and
# the indexed diff, which must equal the full one), each under a 30 s alarm;
# then a batch of mutants is mounted with tabula-fuse and read with ls -lR
# and cat under a time limit.  No crash, no hang (with
# --enable-sanitizers: no ASan/UBSan report); errors are EIO and the mount
# stays up and serves the intact image next to the broken ones.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs mkfs.vfat mcopy mkfs.exfat ntfs-3g sfdisk
MUTATE=$abs_builddir/fuse-mutate
[ -x "$MUTATE" ] || tb_fail "$MUTATE is not built"

T=$TB_TMP
# Many small files and directories: most non-zero sectors are metadata.
mkdir "$T/src"
for d in 1 2 3 4 5 6 7 8; do
  mkdir -p "$T/src/d$d/sub"
  for f in 1 2 3 4 5 6 7 8 9 10; do echo "content $d $f" >"$T/src/d$d/f$f.txt"; done
  head -c 9000 /dev/urandom >"$T/src/d$d/sub/mid.bin"
done
cp -a "$T/src" "$T/src-ext"
ln -s ../d1/f1.txt "$T/src-ext/d2/sub/link"

mkdir "$T/base"
B=$T/base
tf_ext4 "$B/ext4" "$T/src-ext" 4M
tf_fat "$B/fat16" "$T/src" 16M 16
tf_fat "$B/fat12" "$T/src" 2M 12
tf_ntfs "$B/ntfs" "$T/src" 8M
tf_exfat "$B/exfat" "$T/src" 4M
tf_fat "$T/gp1" "$T/src" 16M 16
tf_ext4 "$T/gp2" "$T/src-ext" 4M
truncate -s 22M "$B/gpt"
printf 'label: gpt\nstart=2048, size=16M\nsize=4M\n' | sfdisk -q "$B/gpt"
dd if="$T/gp1" of="$B/gpt" bs=512 seek=2048 conv=notrunc status=none
dd if="$T/gp2" of="$B/gpt" bs=512 seek=34816 conv=notrunc status=none

# In-process: 60 mutants of each of the 6 bases = 360.
seed=1
for img in ext4 fat16 fat12 ntfs exfat gpt; do
  st=0
  # Leaks inside libtsk's own error paths are not ours to fix: no leak check.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} timeout 600 "$MUTATE" "$B/$img" 60 $seed >"$T/mutate-$img.log" 2>&1 || st=$?
  [ $st -eq 0 ] || tb_fail "mutants of $img: exit $st: $(tail -5 "$T/mutate-$img.log")"
  grep -Eq 'AddressSanitizer|runtime error' "$T/mutate-$img.log" &&
    tb_fail "sanitizer report on mutants of $img: $(grep -m3 -E 'AddressSanitizer|runtime error' "$T/mutate-$img.log")"
  # The indexed diff reports what the full diff reports, on damaged disks too.
  grep -q 'indexed diff vs full diff: 60 compared, 0 differ,' "$T/mutate-$img.log" ||
    tb_fail "mutants of $img: the indexed diff differs from the full diff: $(grep 'indexed diff' "$T/mutate-$img.log")"
  cat "$T/mutate-$img.log"
  seed=$((seed + 1))
done

# Through the mount: 4 mutants of each base next to an intact image.
mkdir "$T/exports"
for img in ext4 fat16 ntfs gpt exfat fat12; do
  for i in 1 2 3 4; do
    ASAN_OPTIONS=detect_leaks=0 "$MUTATE" "$B/$img" $((i * 7)) $((seed + i)) "$T/exports/m$img-$i@1" ||
      tb_fail "cannot write a mutant of $img"
  done
done
cp "$B/ext4" "$T/exports/intact@1"
tb_start_plugin srv file dir="$T/exports"
M=$T/mnt
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock"
st=0
timeout 300 sh -c "ls -lR '$M/images' >/dev/null 2>&1; find '$M/images' -type f ! -name disk -exec cat {} + >/dev/null 2>&1; exit 0" ||
  st=$?
[ $st -eq 0 ] || tb_fail "reading the mutants through the view hung ($st)"
kill -0 "$(cat "$T/fuse-mnt.bgpid")" 2>/dev/null || tb_fail "tabula-fuse died: $(tail "$T/fuse-mnt.log")"
tf_same "$T/src-ext" "$M/images/intact/1/fs/whole-ext4"
tf_umount "$M"
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log && tb_fail "sanitizer report in tabula-fuse"
tb_check_logs
exit 0
