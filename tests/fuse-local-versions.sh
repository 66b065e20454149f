#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A local view reads the versions of the store from their files (issue 16,
# speed: a read is one pread, not nbdkit's pread, two socket copies and a
# round trip): tabula-fuse -c opens IMAGE@N as nbdkit's admin export opens
# it (tb_store_open_version: published versions only, the manifest there).
#  - with nbdkit killed after the mount, a version's raw disk and its
#    files (a 3 MB one and a small one not read before) still read, byte
#    for byte; a client's live disk, which nbdkit runs, does not;
#  - a version without its manifest (not published) is not in the view.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs

T=$TB_TMP
mkdir "$T/src"
head -c 3000000 /dev/urandom >"$T/src/big.bin"
echo hello >"$T/src/a.txt"
echo later >"$T/src/b.txt"
tf_ext4 "$T/master.img" "$T/src" 32M
tf_appliance "$T/master.img"
V=$M/images/demo/1/fs/whole-ext4
[ "$(cat "$V/a.txt")" = hello ] || tb_fail "a.txt in the view: $(cat "$V/a.txt" 2>&1)"
[ -e "$M/clients/pc01/disk" ] || tb_fail "no clients/pc01/disk"

echo "== nbdkit killed: the version still reads, the client's live disk does not"
tb_kill9 srv
cmp "$M/images/demo/1/disk" "$T/master.img" ||
  tb_fail "images/demo/1/disk differs from the imported image with nbdkit killed"
cmp "$V/big.bin" "$T/src/big.bin" || tb_fail "big.bin differs with nbdkit killed"
[ "$(cat "$V/b.txt")" = later ] || tb_fail "b.txt with nbdkit killed: $(cat "$V/b.txt" 2>&1)"
if head -c 4096 "$M/clients/pc01/disk" >/dev/null 2>&1; then
  tb_fail "clients/pc01/disk read with nbdkit killed (is the test's server really down?)"
fi

echo "== an unpublished version (no manifest) is not shown"
cp "$state/images/demo/1.img" "$state/images/demo/2.img"
ls "$M/images/demo" >"$T/vers"
[ "$(cat "$T/vers")" = 1 ] || tb_fail "images/demo lists $(tr '\n' ' ' <"$T/vers")"
[ -e "$M/images/demo/2/disk" ] && tb_fail "images/demo/2 (no manifest) is in the view"
tf_umount "$M"
exit 0
