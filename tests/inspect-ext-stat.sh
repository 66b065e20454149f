#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# An ext directory listing reads each entry's stat straight from its raw
# inode (lib/inspect-meta.c, tbi_ext_entry_stat), not through a libtsk file
# open per entry (issue 16, speed: most of a 20,000-entry listing's time).
# tests/inspect-ext-stat compares that with libtsk's way for every inode of
# ext4 (inline_data, metadata_csum, 256-byte inodes), ext4 with 128-byte
# inodes, ext3 and ext2: regular files big and small, a 5 GiB sparse file,
# directories, fast and slow symlinks, device nodes, a fifo, 1969 and
# nanosecond times, setuid and sticky modes, uids and gids past 65535, hard
# links, xattrs in the inode and in a block; unused inodes, and inodes a
# hostile guest damaged (a size past 2^63, no links, no type, a bad
# i_extra_isize).  Every field
# must be equal, and most inodes must take the raw way.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require mke2fs
T=$TB_TMP
S=$T/src
mkdir -p "$S/dir/sub" "$S/many"
echo hello >"$S/hello.txt"
touch -d '2020-01-02 03:04:05.123456789' "$S/hello.txt"
touch -d '1969-07-20 20:17:40' "$S/old.txt"
touch -d '2040-03-04 05:06:07.5' "$S/future.txt"
head -c 300000 /dev/urandom >"$S/dir/rand.bin"
truncate -s 5G "$S/sparse-5g.bin"
ln -s hello.txt "$S/fast-link"
ln -s "$(printf 'd/%.0s' $(seq 60))target" "$S/slow-link"
ln "$S/hello.txt" "$S/dir/hard-link"
mknod "$S/dir/null" c 1 3
mknod "$S/dir/sda" b 8 0
mknod "$S/dir/big-dev" c 260 70000
mkfifo "$S/dir/fifo"
chmod 4755 "$S/dir/rand.bin"
chmod 1777 "$S/dir/sub"
chown 70000:70001 "$S/dir/sub"
chown 1234:5678 "$S/old.txt"
i=1
while [ $i -le 200 ]; do
  : >"$S/many/f$i"
  i=$((i + 1))
done
if command -v setfattr >/dev/null && setfattr -n user.small -v 1 "$S/hello.txt" 2>/dev/null; then
  setfattr -n user.big -v "$(head -c 2000 /dev/zero | tr '\0' x)" "$S/dir/rand.bin"
fi

check()
{
  name=$1
  shift
  truncate -s 64M "$T/$name.img"
  mke2fs -q -F -b 4096 "$@" -d "$S" "$T/$name.img" || tb_fail "mke2fs $name"
  # Damage as a hostile guest would: a size past 2^63 (libtsk's is signed:
  # 0), no links, no type, an i_extra_isize past the inode.
  if command -v debugfs >/dev/null; then
    for f in "/dir/rand.bin size 0xd300000000000003" "/old.txt links_count 0" \
      "/many/f1 mode 0644" "/many/f2 extra_isize 0xfff0"; do
      debugfs -w -R "sif $f" "$T/$name.img" >/dev/null 2>&1 || tb_fail "debugfs sif $f"
    done
  fi
  r=0
  "$abs_top_builddir/tests/inspect-ext-stat" "$T/$name.img" >"$T/$name.out" 2>&1 || r=$?
  cat "$T/$name.out"
  [ $r = 0 ] || tb_fail "$name: the raw inode and libtsk disagree"
  set -- $(tail -n 1 "$T/$name.out")
  [ "$1" = inodes ] && [ "$4" -gt $(($2 / 2)) ] || tb_fail "$name: only $4 of $2 inodes read raw"
}
check ext4 -t ext4 -O inline_data,metadata_csum -I 256
check ext4-128 -t ext4 -I 128
check ext3 -t ext3
check ext2 -t ext2 -I 128
exit 0
