#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Real NBD clients against the plugin: qemu-img info and convert, qemu-io,
# nbdcopy in both directions (multi-conn, zero detection), and the overlay
# view ID@overlay through qemu-img map and nbdinfo --map, which must show
# exactly the blocks a session changed.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require qemu-img qemu-io nbdcopy nbdinfo jq

M=1048576
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((16 * M)) 1 $((8 * M))
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "persist" },
    "pc02": { "image": "demo", "policy": "persist" }
  }'
tb_start s "$TB_TMP/tabula.json"
uri()
{
  echo "nbd+unix:///$1?socket=$TB_TMP/s.sock"
}

echo "== qemu-img info"
qemu-img info --output=json "$(uri pc01)" >"$TB_TMP/info.json" || tb_fail "qemu-img info"
tb_json "$TB_TMP/info.json" ".\"virtual-size\" == $((16 * M))" "qemu-img info size"

echo "== qemu-io writes, nbdcopy and qemu-img convert read back"
qemu-io -f raw -c "write -P 0xab $M 64k" -c "write -z $((2 * M)) 1M" "$(uri pc01)" >/dev/null ||
  tb_fail "qemu-io write"
cp "$TB_TMP/master.img" "$TB_TMP/expect.img"
head -c 65536 /dev/zero | tr '\0' '\253' | dd of="$TB_TMP/expect.img" bs=65536 seek=16 conv=notrunc status=none
dd if=/dev/zero of="$TB_TMP/expect.img" bs=$M seek=2 count=1 conv=notrunc status=none
nbdcopy "$(uri pc01)" "$TB_TMP/copy.img" || tb_fail "nbdcopy out"
cmp "$TB_TMP/copy.img" "$TB_TMP/expect.img" || tb_fail "nbdcopy read the wrong data"
qemu-img convert -f raw -O raw "$(uri pc01)" "$TB_TMP/convert.img" || tb_fail "qemu-img convert"
cmp "$TB_TMP/convert.img" "$TB_TMP/expect.img" || tb_fail "qemu-img convert read the wrong data"
qemu-img compare -f raw -F raw "$(uri pc01)" "$TB_TMP/expect.img" >/dev/null || tb_fail "qemu-img compare"

echo "== nbdcopy and qemu-img convert write into the export"
tb_make_file "$TB_TMP/new.img" $((16 * M)) 5 $((12 * M))
nbdcopy "$TB_TMP/new.img" "$(uri pc01)" || tb_fail "nbdcopy in"
tb_io s -e pc01 read:0:$((12 * M)):5 read:$((12 * M)):$((4 * M)):0 || tb_fail "data after nbdcopy in"
qemu-img convert -n -f raw -O raw "$TB_TMP/master.img" "$(uri pc01)" || tb_fail "qemu-img convert in"
tb_io s -e pc01 read:0:$((8 * M)):1 read:$((8 * M)):$((8 * M)):0 || tb_fail "data after convert in"

echo "== the overlay view: exactly what the session changed"
tb_io s -e pc02 write:$M:65536:3 write:$((5 * M)):4096:4 zero:$((3 * M)):8192 flush || tb_fail "pc02"
qemu-img map --output=json -f raw "$(uri pc02@overlay)" >"$TB_TMP/map.json" || tb_fail "qemu-img map"
data=$(jq -c '[.[] | select(.data == true and .zero == false) | [.start, .length]]' "$TB_TMP/map.json")
[ "$data" = "[[$M,65536],[$((5 * M)),4096]]" ] ||
  tb_fail "qemu-img map of pc02@overlay: data extents $data: $(cat "$TB_TMP/map.json")"
zero=$(jq -c '[.[] | select(.data == true and .zero == true) | [.start, .length]]' "$TB_TMP/map.json")
[ "$zero" = "[[$((3 * M)),8192]]" ] ||
  tb_fail "qemu-img map of pc02@overlay: written zeros $zero: $(cat "$TB_TMP/map.json")"
nbdinfo --map "$(uri pc02@overlay)" >"$TB_TMP/map.txt" || tb_fail "nbdinfo --map"
grep -Eq "^ *$M +65536 +0 +data" "$TB_TMP/map.txt" ||
  tb_fail "nbdinfo --map of pc02@overlay: $(cat "$TB_TMP/map.txt")"
tb_io s -e pc02@overlay read:0:$M:0 read:$M:65536:3 read:$((3 * M)):8192:0 read:$((5 * M)):4096:4 ||
  tb_fail "pc02@overlay data"
qemu-img compare -f raw -F raw "$(uri pc02@live)" "$(uri pc02)" >/dev/null ||
  tb_fail "pc02@live must equal what pc02 reads"
tb_stop s
tb_check_logs
