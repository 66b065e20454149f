#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# What the kernel may keep of the view (issue 16, speed), counted in the
# requests libfuse's debug log shows (-d), not in time:
#  - a listing carries every entry's attributes (readdirplus): `ls -l` of a
#    300-entry directory of a version asks no lookup per file;
#  - inside an immutable export (a version) the kernel keeps names and
#    attributes without limit: the same `ls -l` after the 1 s timeout of the
#    live trees asks nothing at all;
#  - mounted allow_other it keeps nothing past a second (another user would
#    see what an admin looked up): the same `ls -l` asks again;
#  - mounted by root, the mount reads ahead 1 MiB, in 512 KiB requests (the
#    largest reply a 1 MiB pipe splices whole: tabula-fuse.c, MAX_READ);
#  - `ls -l` asks two xattrs of each file: a listed file without any is
#    answered from the listing, not by a request to the snapshot's worker
#    (TB_INSPECT_TRACE), and one with an xattr still shows it;
#  - a listing comes in requests of up to 1 MiB (a directory's st_blksize
#    sizes glibc's getdents buffer), not 32 KiB;
#  - no OPENDIR or RELEASEDIR beyond the first (answered ENOSYS: the
#    kernel's zero-message opendir); a version's complete listing stays in
#    the kernel's directory cache, the view's own directories do not;
#  - a directory of more than 1024 entries: its first listing carries the
#    attributes of its subdirectories only (the kernel makes no inode for
#    its files: a `find` that never stats them pays nothing for them); the
#    next listing carries them all, so a `find -ls` after the `find` asks no
#    lookup per file.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs
[ "$(id -u)" = 0 ] || tb_skip "needs root (allow_other, the mount's readahead in sysfs)"

T=$TB_TMP
mkdir -p "$T/src/many" "$T/src/big/subdir"
seq -f "$T/src/big/f%05g" 1 5000 | xargs touch
i=1
while [ $i -le 300 ]; do
  echo "$i" >"$T/src/many/f$i"
  i=$((i + 1))
done
head -c 4194304 /dev/urandom >"$T/src/big.bin"
xattr=
python3 -c "import os; os.setxattr('$T/src/many/f7', 'user.tag', b'seven')" 2>/dev/null && xattr=1
mkdir "$T/exports"
truncate -s 48M "$T/exports/ext4@1"
mke2fs -q -F -t ext4 -b 4096 -N 8192 -d "$T/src" "$T/exports/ext4@1" >/dev/null
tb_start_plugin srv file dir="$T/exports"
URI="nbd+unix:///?socket=$T/srv.sock"

requests() { grep -c "opcode: $2 " "$TB_TMP/fuse-$1.log" || true; }
# stat each file of DIR by name (no listing: a listing refreshes the
# attributes it carries)
stat_all() { stat -c %s $(seq -f "$1/f%g" 1 300) >/dev/null || tb_fail "stat in $1 failed"; }

echo "== readdirplus: ls -l asks no lookup per file"
M=$T/mnt
export TB_INSPECT_TRACE=1
tf_mount "$M" --uri "$URI" -d
unset TB_INSPECT_TRACE
V=$M/images/ext4/1/fs/whole-ext4
ls -l "$V/many" >"$T/ls.out" || tb_fail "ls -l: $(cat "$T/ls.out")"
[ "$(grep -c ' f[0-9]' "$T/ls.out")" = 300 ] || tb_fail "ls -l listed $(grep -c ' f[0-9]' "$T/ls.out") files"
n=$(requests mnt LOOKUP)
[ "$n" -le 20 ] || tb_fail "ls -l of 300 files made $n lookups: the listing did not carry the attributes"
echo "$n lookups"
x=$(requests mnt GETXATTR)
# (f7, which has one, takes the worker's way for each of its two)
n=$(grep -c "inspect job: xattrs /many/" "$TB_TMP/fuse-mnt.log" || true)
[ "$n" -le $((${xattr:-0} * 2)) ] ||
  tb_fail "ls -l of 300 files sent $n of its $x xattr requests to the worker (no stat cache answer)"
echo "$x xattr requests, $n to the worker"
if [ -n "$xattr" ]; then
  [ "$(python3 -c "import os; print(os.getxattr('$V/many/f7', 'user.tag').decode())")" = seven ] ||
    tb_fail "the xattr of many/f7 is not shown"
  python3 -c "import os, sys; sys.exit(os.listxattr('$V/many/f8') != [])" ||
    tb_fail "many/f8 shows xattrs it does not have"
fi

echo "== listings in 1 MiB requests"
# (by request number: the debug lines of libfuse's threads interleave)
big=$(awk '/opcode: READDIRPLUS/ { plus[$2] = 1 } /success, outsize:/ && ($2 in plus) { print $NF }' \
  "$TB_TMP/fuse-mnt.log" | sort -n | tail -n 1)
[ "${big:-0}" -gt 40000 ] || tb_fail "the largest READDIRPLUS reply of ls -l on 300 files is $big bytes"
[ "$(stat -c %o "$V/many")" = 1048576 ] || tb_fail "a directory's st_blksize is $(stat -c %o "$V/many")"

echo "== a big directory: names first, attributes from its second listing on"
find "$V/big" >/dev/null || tb_fail "find big"
# Relative to big itself: a path from the mount's root would look up the
# view's own directories above the version again once their 1 s is past (a
# find of more than a second on a loaded machine), and count those.
here=$(pwd)
cd "$V/big"
before=$(requests mnt LOOKUP)
stat subdir >/dev/null
[ "$(requests mnt LOOKUP)" = "$before" ] ||
  tb_fail "the subdirectory was not carried with its attributes"
stat f00010 >/dev/null
after=$(requests mnt LOOKUP)
[ "$after" -gt "$before" ] ||
  tb_fail "the first listing carried the attributes of f00010, a file (the kernel made an inode of each)"
stat f02000 >/dev/null
[ "$(requests mnt LOOKUP)" -gt "$after" ] ||
  tb_fail "the first listing carried the attributes of f02000, a file (the kernel made an inode of each)"
cd "$here"
before=$(requests mnt LOOKUP)
find "$V/big" -ls >"$T/big.ls" || tb_fail "find -ls big"
[ "$(grep -c ' /' "$T/big.ls")" -ge 5001 ] || tb_fail "find -ls listed $(wc -l <"$T/big.ls") entries"
n=$(($(requests mnt LOOKUP) - before))
[ "$n" -le 20 ] || tb_fail "find -ls after find asked $n lookups: the second listing did not carry the attributes"

echo "== a version's names and attributes stay in the kernel's cache"
# (the view's own directories above the version, 1 s like the live trees,
# are looked up again: images, ext4, 1.  Reclaim may also take dentries:
# up to three tries, as for the directory cache below.)
tries=0
while :; do
  sleep 2 # past KERNEL_TIMEOUT_S, the live trees' timeout
  before=$(($(requests mnt LOOKUP) + $(requests mnt GETATTR)))
  stat_all "$V/many"
  after=$(($(requests mnt LOOKUP) + $(requests mnt GETATTR)))
  [ $((after - before)) -le 10 ] && break
  tries=$((tries + 1))
  [ $tries -lt 3 ] ||
    tb_fail "stat of the 300 files after 2 s asked $((after - before)) lookups and getattrs, 3 times"
  echo "(stat after 2 s asked $((after - before)): try $((tries + 1)))"
done

echo "== listings without OPENDIR"
# (the kernel's zero-message opendir: the first OPENDIR is answered ENOSYS)
[ "$(requests mnt OPENDIR)" -le 1 ] && [ "$(requests mnt RELEASEDIR)" = 0 ] ||
  tb_fail "$(requests mnt OPENDIR) OPENDIR and $(requests mnt RELEASEDIR) RELEASEDIR requests"
# The kernel's directory cache is page cache: reclaim on a loaded machine
# (a CI runner's memory limit) may take one of its pages between two
# listings, and the kernel then asks the whole listing again.  So up to
# three tries; a view whose listings are not kept fails all three.
tries=0
while :; do
  ls "$V/many" >/dev/null
  before=$(requests mnt READDIRPLUS)
  ls "$V/many" >/dev/null
  [ "$(requests mnt READDIRPLUS)" = "$before" ] && break
  tries=$((tries + 1))
  [ $tries -lt 3 ] ||
    tb_fail "a version's complete listing, listed again, was asked again (not kept by the kernel), 3 times"
  echo "(listed again, it was asked again: try $((tries + 1)))"
done
# the view's own directory: one second at most, so listed again it is asked again
ls "$M/images" >/dev/null
sleep 0.3 # the notifier's invalidation
before=$(requests mnt READDIRPLUS)
ls "$M/images" >/dev/null
[ "$(requests mnt READDIRPLUS)" -gt "$before" ] ||
  tb_fail "the view's images/ listed again came from the kernel's cache"

echo "== 1 MiB readahead, 512 KiB reads"
dev=$(mountpoint -d "$M")
[ "$(cat "/sys/class/bdi/$dev/read_ahead_kb")" = 1024 ] ||
  tb_fail "the mount's readahead is $(cat "/sys/class/bdi/$dev/read_ahead_kb") KiB, not 1024"
cmp "$T/src/big.bin" "$V/big.bin" || tb_fail "big.bin differs"
grep -q "success, outsize: 524304$" "$TB_TMP/fuse-mnt.log" ||
  tb_fail "no 512 KiB read reply: $(grep -m3 'outsize: [0-9]\{6,\}' "$TB_TMP/fuse-mnt.log")"
tf_umount "$M"

echo "== allow_other: nothing is kept past a second"
S=$T/shared
tf_mount "$S" --uri "$URI" -d -o allow_other
V=$S/images/ext4/1/fs/whole-ext4
ls -l "$V/many" >/dev/null
sleep 2
before=$(requests shared LOOKUP)
stat_all "$V/many"
after=$(requests shared LOOKUP)
[ $((after - before)) -ge 300 ] ||
  tb_fail "mounted allow_other, stat of the 300 files after 2 s asked only $((after - before)) lookups (kept in the cache)"
tf_umount "$S"
tb_check_logs
exit 0
