#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A filesystem that makes libtsk compute for an hour without a single read:
# an ext3 file whose double-indirect block points at itself, so libtsk's map
# builder makes a million runs and appends each one by walking the list
# (quadratic).  Through the view, reading that file answers EIO by the
# deadline (--op-timeout), the damaged filesystem answers EIO at once while
# the abandoned work goes on, its raw disk and another image in the same
# mount stay readable, and the mount unmounts cleanly.  A file claiming a
# size past the double-indirect range (libtsk's other quadratic map) never
# reaches libtsk: lib/inspect's own block-map reader reads it as the kernel
# does (its block, then zeros), at once.  The same images go
# through lib/inspect in-process (tests/fuse-mutate replay, 30 s alarm).
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs
MUTATE=$abs_builddir/fuse-mutate
[ -x "$MUTATE" ] || tb_fail "$MUTATE is not built"
T=$TB_TMP
TIMEOUT=2

mkdir "$T/src" "$T/exports"
tf_src "$T/src"
# ext3 with 4 KiB blocks and block maps (no extents).
truncate -s 8M "$T/exports/hang@1"
mke2fs -q -F -t ext3 -b 4096 -d "$T/src" "$T/exports/hang@1"
tb_ext3_selfmap "$T/exports/hang@1" /hello.txt
# Size past the double-indirect range (5 GiB with 4 KiB blocks).
truncate -s 8M "$T/exports/big@1"
mke2fs -q -F -t ext3 -b 4096 -d "$T/src" "$T/exports/big@1"
debugfs -w -R "sif /hello.txt size 5368709120" "$T/exports/big@1" 2>/dev/null
tf_ext4 "$T/exports/intact@1" "$T/src" 8M

# In-process first: lib/inspect answers within the alarm.
for img in hang big; do
  st=0
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} "$MUTATE" "$T/exports/$img@1" 0 1 >"$T/replay-$img.log" 2>&1 || st=$?
  [ $st -eq 0 ] || tb_fail "lib/inspect on $img: exit $st: $(tail -3 "$T/replay-$img.log")"
  grep -Eq 'AddressSanitizer|runtime error' "$T/replay-$img.log" &&
    tb_fail "sanitizer report on $img: $(grep -m3 -E 'AddressSanitizer|runtime error' "$T/replay-$img.log")"
  if [ $img = hang ]; then
    grep -Eq ', [1-9][0-9]* errors' "$T/replay-$img.log" || tb_fail "no error on $img: $(cat "$T/replay-$img.log")"
  else
    grep -Eq ', 0 errors' "$T/replay-$img.log" || tb_fail "errors on $img: $(cat "$T/replay-$img.log")"
  fi
done

tb_start_plugin srv file dir="$T/exports"
M=$T/mnt
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock" --op-timeout $TIMEOUT
H=$M/images/hang/1/fs/whole-ext3
[ -d "$H" ] || tb_fail "$H is missing: $(ls -R "$M/images" 2>&1 | head)"
# Metadata is intact: the listing shows the file with the size it claims.
ls -l "$H/hello.txt" | grep -q " 4000000000 " || tb_fail "hello.txt: $(ls -l "$H" 2>&1)"

# Read the damaged file while another image is read next to it.
t0=$(date +%s)
st=0
timeout 120 cat "$H/hello.txt" >/dev/null 2>"$T/cat.err" &
catpid=$!
tf_same "$T/src" "$M/images/intact/1/fs/whole-ext4"
wait $catpid || st=$?
t1=$(date +%s)
[ $st -ne 124 ] || tb_fail "reading the damaged file hung (killed after 120 s)"
[ $st -ne 0 ] || tb_fail "reading the damaged file succeeded"
grep -q "Input/output error" "$T/cat.err" || tb_fail "damaged file: $(cat "$T/cat.err")"
# The deadline is 2 s; the work it stops takes an hour.  Generous bound.
[ $((t1 - t0)) -le $((TIMEOUT * 10)) ] ||
  tb_fail "EIO came after $((t1 - t0)) s, deadline $TIMEOUT s"

# While the abandoned work runs, that filesystem answers EIO at once.
for f in hello.txt a/b/odd.bin; do
  st=0
  timeout 60 cat "$H/$f" >/dev/null 2>"$T/cat2.err" || st=$?
  [ $st -ne 124 ] || tb_fail "$f on the stuck filesystem hung"
  grep -q "Input/output error" "$T/cat2.err" || tb_fail "$f on the stuck filesystem: $st $(cat "$T/cat2.err")"
done
# Its raw disk does not go through libtsk.
cmp -s "$M/images/hang/1/disk" "$T/exports/hang@1" || tb_fail "the raw disk of hang@1 differs"

# A size past the double-indirect range reads as the kernel reads it: the
# file's block, then zeros to 5 GiB; the filesystem stays readable.
B=$M/images/big/1/fs/whole-ext3
head -c 18 "$B/hello.txt" | cmp -s - "$T/src/hello.txt" || tb_fail "big hello.txt: its first block"
timeout 60 dd if="$B/hello.txt" of="$T/big.end" bs=4096 skip=$(((5 << 30) / 4096 - 2)) \
  status=none 2>"$T/big.err" || tb_fail "big hello.txt's end: $(cat "$T/big.err")"
head -c 8192 /dev/zero | cmp -s - "$T/big.end" || tb_fail "big hello.txt's end is not zeros"
cmp -s "$T/src/a/b/odd.bin" "$B/a/b/odd.bin" || tb_fail "big@1 is stuck after its big file"

tf_same "$T/src" "$M/images/intact/1/fs/whole-ext4"
kill -0 "$(cat "$T/fuse-mnt.bgpid")" 2>/dev/null || tb_fail "tabula-fuse died: $(tail "$T/fuse-mnt.log")"
tf_umount "$M"
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log && tb_fail "sanitizer report in tabula-fuse"
tb_check_logs
exit 0
