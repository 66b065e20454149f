#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Listing ahead (lib/inspect-list.c, issue 16, speed): once a directory is
# listed, the inspection worker lists its subdirectories while it has no
# job, so a walker's next opendir finds the listing made.  Seen in the
# worker's trace (TB_INSPECT_TRACE: "read dir" for each directory read from
# the disk, not the cache), not in time:
#  - after `ls` of the root, the listings of its subdirectories are made
#    without anyone opening them, and opening them then reads nothing;
#  - so are the levels below them, down to three below the root
#    (AHEAD_DEPTH): a/s1 and a/s1/deep;
#  - a listing the cache holds is served on the FUSE thread itself, not by
#    a job of the worker (no "job: readdir" for a, b and c);
#  - a whole `find` reads each directory once, ahead or not;
#  - listing ahead is invisible: the tree's walk equals the source's.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs
tb_require debugfs

T=$TB_TMP
for d in a b c; do
  for s in 1 2 3; do
    mkdir -p "$T/src/$d/s$s/deep"
    echo "$d $s" >"$T/src/$d/s$s/file"
  done
done
mkdir "$T/exports"
truncate -s 16M "$T/exports/ext4@1"
mke2fs -q -F -t ext4 -b 4096 -d "$T/src" "$T/exports/ext4@1" >/dev/null
tb_start_plugin srv file dir="$T/exports"
M=$T/mnt
export TB_INSPECT_TRACE=1
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock"
unset TB_INSPECT_TRACE
V=$M/images/ext4/1/fs/whole-ext4
LOG=$TB_TMP/fuse-mnt.log
reads() { grep -c "inspect read dir" "$LOG" || true; }

echo "== after ls of the root, its subdirectories are listed unasked"
ls "$V" >/dev/null || tb_fail "ls $V"
# the root, then a, b, c and lost+found ahead: 5 directories
i=0
while [ "$(reads)" -lt 5 ] && [ $i -lt 100 ]; do
  sleep 0.05
  i=$((i + 1))
done
[ "$(reads)" -ge 5 ] || tb_fail "after ls of the root, $(reads) directories were read (want 5: ahead)"
before=$(reads)
# idle: until the worker has read nothing more for 0.3 s (listing ahead
# done), as a served-from-cache listing needs the worker idle
idle()
{
  _last=-1
  _i=0
  while [ "$(reads)" != "$_last" ] && [ $_i -lt 50 ]; do
    _last=$(reads)
    sleep 0.3
    _i=$((_i + 1))
  done
}
inode_of()
{
  debugfs -R "stat /$1" "$T/exports/ext4@1" 2>/dev/null | sed -n 's/^Inode: \([0-9]*\).*/\1/p'
}
idle
for d in a/s1 a/s1/deep c/s3/deep; do
  ino=$(inode_of $d)
  [ -n "$ino" ] || tb_fail "debugfs gave no inode for /$d"
  grep -q "inspect read dir: inode $ino\$" "$LOG" ||
    tb_fail "$d was not listed ahead after ls of the root (levels below the first)"
done
for d in a b c; do
  idle
  ls "$V/$d" >/dev/null || tb_fail "ls $d"
done
for d in a b c; do
  ino=$(inode_of $d)
  [ -n "$ino" ] || tb_fail "debugfs gave no inode for /$d"
  n=$(grep -c "inspect read dir: inode $ino\$" "$LOG" || true)
  [ "$n" = 1 ] || tb_fail "$d was read $n times (want once, ahead)"
done
n=$(grep -c "inspect job: readdir /[abc]\$" "$LOG" || true)
[ "$n" = 0 ] || tb_fail "listing a, b and c (cached) took $n jobs of the worker"
echo "root listing: $before reads, a b c read ahead and served without a job"

echo "== find reads each directory once"
find "$V" >"$T/find.out" || tb_fail "find $V"
# 1 root + lost+found + 3 + 9 + 9 deep
want=23
sleep 0.5
[ "$(reads)" = $want ] || tb_fail "find over $want directories made $(reads) directory reads"
(cd "$V" && find . | LC_ALL=C sort) >"$T/view.list"
(cd "$T/src" && { find .; echo ./lost+found; } | LC_ALL=C sort) >"$T/src.list"
diff "$T/src.list" "$T/view.list" || tb_fail "the view's tree differs from the source's"
tf_umount "$M"
tb_check_logs
exit 0
