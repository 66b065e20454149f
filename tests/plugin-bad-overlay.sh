#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# An overlay that cannot be trusted is refused with a clear error and never
# modified (sha256 before and after): a corrupt header, a corrupt block map,
# a truncated file, and an overlay built on another version of the image
# (the version it names was deleted and re-imported with other content).
# Put back, the good overlay serves its data again: nothing was lost.
# A rollback client rotates a bad overlay aside unmodified and starts clean.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

state=$TB_TMP/state
K=65536
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_make_file "$TB_TMP/other.img" $((4 * 1024 * 1024)) 9
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "pc01": { "image": "demo", "policy": "rollback" }
  }'
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 write:0:$K:3 write:$((1024 * 1024)):4096:4 || tb_fail "vm01 setup"
tb_io s -e pc01 write:0:$K:5 || tb_fail "pc01 setup"
tb_stop s
ovl=$state/clients/vm01/overlay
cp "$ovl" "$TB_TMP/good-overlay"
master_seed=1

# broken WHAT REGEX: vm01 must be refused with an error matching REGEX and
# its overlay must stay byte for byte as it was; then restore the good one.
broken()
{
  sum=$(tb_sha256 "$ovl")
  tb_start s "$TB_TMP/tabula.json"
  st=0
  tb_io s -e vm01 read:0:1:3 >"$TB_TMP/client.out" 2>&1 || st=$?
  [ $st -eq 2 ] || tb_fail "$1: vm01 was served (exit $st)"
  tb_assert_log s "$2" "$1"
  echo "ok ($1): $(grep -m1 -E -- "$2" "$TB_TMP/s.log" | cut -c1-200)"
  tb_io s -e pc01 read:$K:4096:$master_seed || tb_fail "$1: other clients must still be served"
  tb_stop s
  [ "$(tb_sha256 "$ovl")" = "$sum" ] || tb_fail "$1: the refused overlay was modified"
  : >"$TB_TMP/s.log"
  cp "$TB_TMP/good-overlay" "$ovl"
}

printf 'X' | dd of="$ovl" bs=1 seek=100 conv=notrunc status=none
broken "corrupt header" 'vm01/overlay: overlay header is corrupt'
printf 'XXXXXXXX' | dd of="$ovl" bs=1 seek=0 conv=notrunc status=none
broken "bad magic" 'vm01/overlay is not a tabula overlay'
head -c 4096 /dev/zero | tr '\0' '\377' | dd of="$ovl" bs=4096 seek=1 conv=notrunc status=none
broken "corrupt block map" 'vm01/overlay: block map .*corrupt'
truncate -s 100 "$ovl"
broken "truncated to 100 bytes" 'vm01/overlay: overlay file is truncated'
truncate -s 4097 "$ovl"
broken "truncated to 4097 bytes" 'vm01/overlay: overlay file is truncated'

echo "== the good overlay serves its data again"
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 read:0:$K:3 read:$((1024 * 1024)):4096:4 read:$K:4096:1 ||
  tb_fail "the restored overlay must serve its data"
tb_stop s

echo "== an overlay built on another version of the image"
rm -rf "$state/images/demo"
tb_import "$state" demo "$TB_TMP/other.img"
master_seed=9
cp "$ovl" "$TB_TMP/good-overlay"
broken "base re-imported" 'vm01/overlay: overlay was built on demo@1 but .*demo@1'

echo "== a rollback client rotates its bad overlay aside, untouched, and starts clean"
rm -rf "$state/clients/pc01/sessions"
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc01 write:0:$K:5 || tb_fail "pc01 write"
tb_stop s
pco=$state/clients/pc01/overlay
printf 'X' | dd of="$pco" bs=1 seek=100 conv=notrunc status=none
sum=$(tb_sha256 "$pco")
tb_start s "$TB_TMP/tabula.json"
# The turn (and so the rotation) comes with the boot's first write.
tb_io s -e pc01 read:0:$K:9 write:$K:4096:3 || tb_fail "pc01 must start clean on the new master"
retained=$(ls "$state/clients/pc01/sessions" | sort -n | tail -n 1)
[ "$(tb_sha256 "$state/clients/pc01/sessions/$retained")" = "$sum" ] ||
  tb_fail "the bad overlay was modified when rotated aside"
st=0
tb_io s -e "pc01@session/$retained" read:0:1:0 >/dev/null 2>&1 || st=$?
[ $st -eq 2 ] || tb_fail "a corrupt retained session was served"
tb_assert_log s "pc01@session/$retained\": .*corrupt" "reading a corrupt retained session"
tb_stop s
tb_check_logs
