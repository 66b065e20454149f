#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A local view reads the versions of the store from their files (issue 16,
# speed: a read is one pread, not nbdkit's pread, two socket copies and a
# round trip): tabula-fuse -c opens IMAGE@N as nbdkit's admin export opens
# it (tb_store_open_version: published versions only, the manifest there).
#  - with nbdkit killed after the mount, a version's raw disk and its
#    files (a 3 MB one and a small one not read before) still read, byte
#    for byte (the reads spliced from the version's file, the holes and
#    the tail too); a client's live disk, which nbdkit runs, does not;
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
# Holes, runs of data and a tail that ends inside a page: reads spliced from
# the version's file (one plain run each), read into a buffer (a hole, a
# read across runs) and the short last one.
truncate -s 5000123 "$T/src/sparse.bin"
for at in 0 700 1500 2999 4882; do
  head -c 65536 /dev/urandom | dd of="$T/src/sparse.bin" bs=1024 seek=$at conv=notrunc status=none
done
tf_ext4 "$T/master.img" "$T/src" 32M
tf_appliance "$T/master.img"
V=$M/images/demo/1/fs/whole-ext4
[ "$(cat "$V/a.txt")" = hello ] || tb_fail "a.txt in the view: $(cat "$V/a.txt" 2>&1)"
[ -e "$M/clients/pc01/disk" ] || tb_fail "no clients/pc01/disk"

echo "== nbdkit killed: the version still reads, the client's live disk does not"
tb_kill9 srv
cmp "$M/images/demo/1/disk" "$T/master.img" ||
  tb_fail "images/demo/1/disk differs from the imported image with nbdkit killed"
[ "$(dd if="$M/images/demo/1/disk" bs=4097 skip=5 count=300 iflag=direct status=none | sha256sum)" = \
  "$(dd if="$T/master.img" bs=4097 skip=5 count=300 status=none | sha256sum)" ] ||
  tb_fail "images/demo/1/disk: 4097-byte reads (O_DIRECT) differ from the imported image"
cmp "$V/big.bin" "$T/src/big.bin" || tb_fail "big.bin differs with nbdkit killed"
# O_DIRECT: each read reaches the view at its own offset and size, not the
# kernel's page-sized ones (nor its page cache).
for bs in 4097 131072 1048576; do
  for skip in 0 3 11; do
    want=$(dd if="$T/src/sparse.bin" bs=$bs skip=$skip count=2 status=none | sha256sum)
    got=$(dd if="$V/sparse.bin" bs=$bs skip=$skip count=2 iflag=direct status=none | sha256sum)
    [ "$got" = "$want" ] || tb_fail "sparse.bin: $bs-byte reads at block $skip differ (O_DIRECT)"
  done
done
cmp "$V/sparse.bin" "$T/src/sparse.bin" || tb_fail "sparse.bin differs with nbdkit killed"
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
