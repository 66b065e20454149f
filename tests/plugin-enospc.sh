#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# ENOSPC: the state directory on a small filesystem (ext4 on a loop device,
# else tmpfs) fills up while a client writes.  The client gets ENOSPC, nbdkit
# keeps serving, and the overlay stays consistent: flushed data reads back in
# the session, after an nbdkit restart, and after space is freed; acknowledged
# writes read back within the session.  On the still-full filesystem a new
# session may be refused, but only with an error that says the disk is full.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require mount umount

M=1048576
mnt=$TB_TMP/mnt
mkdir -p "$mnt"
if truncate -s 24M "$TB_TMP/fs.img" && mkfs.ext4 -q -F "$TB_TMP/fs.img" 2>/dev/null &&
  mount -o loop "$TB_TMP/fs.img" "$mnt" 2>/dev/null; then
  fs=ext4
elif mount -t tmpfs -o size=24m tmpfs "$mnt" 2>/dev/null; then
  fs=tmpfs
else
  tb_skip "cannot mount a small filesystem here (needs root: loop device or tmpfs)"
fi
TB_MOUNTS=$mnt
echo "== state dir on a 24 MiB $fs"

state=$mnt/state
tb_make_file "$TB_TMP/master.img" $((256 * M)) 1 $M # 256 MiB, 1 MiB of data
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
# Ballast to free later, so the filesystem can be given room again.
dd if=/dev/zero of="$mnt/ballast" bs=$M count=4 status=none
sync

tb_start s "$TB_TMP/tabula.json"
# One session throughout: every tb_io below joins it.
tb_hold s keep -e vm01 write:0:$M:3 flush
tb_io s -e vm01 fill:$((8 * M)):$((64 * M)):$((256 * 1024)):4 >"$TB_TMP/fill.out" ||
  tb_fail "fill: $(cat "$TB_TMP/fill.out")"
cat "$TB_TMP/fill.out"
grep -q 'errno ENOSPC' "$TB_TMP/fill.out" ||
  tb_fail "the client must get ENOSPC when the filesystem is full: $(cat "$TB_TMP/fill.out")"
filled=$(sed -n 's/^filled \([0-9]*\) .*/\1/p' "$TB_TMP/fill.out")
[ "$filled" -gt 0 ] || tb_fail "nothing was written before ENOSPC"
tb_assert_log s 'vm01/overlay: No space left on device' "the server log must say which overlay is full"
tb_io s -e vm01 read:0:$M:3 read:$M:$M:0 read:$((8 * M)):$filled:4 ||
  tb_fail "flushed and acknowledged data must read back in the session after ENOSPC"
tb_io s -e vm01 write:0:4096:7 read:0:4096:7 || tb_fail "rewriting a block that has data must still work"
tb_io s -e vm01 flush >"$TB_TMP/flush.out" 2>&1 ||
  echo "(flush on a full filesystem failed: $(tail -n1 "$TB_TMP/flush.out"))"
tb_release keep
tb_stop s

echo "== restart on the full filesystem"
tb_start s "$TB_TMP/tabula.json"
st=0
tb_io s -e vm01 read:4096:$((M - 4096)):3 read:$M:$M:0 >"$TB_TMP/r.out" 2>&1 || st=$?
case $st in
0) echo "served on a full filesystem" ;;
2)
  tb_assert_log s 'vm01.*No space left on device' "refusing a session on a full disk must say why"
  echo "refused: $(grep 'No space' "$TB_TMP/s.log" | tail -n1 | cut -c1-200)"
  ;;
*) tb_fail "flushed data wrong after a restart on a full filesystem: $(cat "$TB_TMP/r.out")" ;;
esac
tb_stop s

echo "== restart after freeing space"
rm -f "$mnt/ballast"
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 read:4096:$((M - 4096)):3 read:$M:$M:0 write:$((2 * M)):$M:6 flush read:$((2 * M)):$M:6 ||
  tb_fail "the overlay must serve its data, and take writes, once there is space"
tb_stop s
tb_check_logs
