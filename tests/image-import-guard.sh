#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Guardrails of `tabulactl image import` (issue 18 §2):
#  - a qcow2 (and VHDX, VMDK, VHD) file is converted to raw with qemu-img,
#    never imported as its container bytes;
#  - a size different from the newest version's needs --force;
#  - content identical to the newest version imports nothing and names it;
#  - a file in which a client's preserved partition is missing needs --force,
#    and the refusal names the rule and the version.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require qemu-img sfdisk

state=$TB_TMP/state
M=1048576
truncate -s $((8 * M)) "$TB_TMP/v1.raw"
printf 'label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=8192, type=83\n' |
  sfdisk -q "$TB_TMP/v1.raw"
printf 'version one' | dd of="$TB_TMP/v1.raw" bs=1 seek=$((2 * M)) conv=notrunc 2>/dev/null
qemu-img convert -f raw -O qcow2 "$TB_TMP/v1.raw" "$TB_TMP/v1.qcow2"
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo", "preserve": ["partition:2"] } }'
TD_CONF=$conf

echo "== qcow2 is converted"
tctl image import demo "$TB_TMP/v1.qcow2" >"$TB_TMP/out" 2>"$TB_TMP/err" ||
  tb_fail "qcow2 import: $(cat "$TB_TMP/err")"
grep -q 'qcow2 image: converting it to raw' "$TB_TMP/err" || tb_fail "no conversion: $(cat "$TB_TMP/err")"
cmp "$state/images/demo/1.img" "$TB_TMP/v1.raw" || tb_fail "demo@1 is not the raw content of the qcow2"
ls "$state/images" | grep -q '^\.import' && tb_fail "the converted temporary was left behind"

echo "== identical content is a no-op"
tctl image import demo "$TB_TMP/v1.raw" >"$TB_TMP/out" 2>&1 || tb_fail "identical import: $(cat "$TB_TMP/out")"
grep -q 'identical to demo@1: nothing imported' "$TB_TMP/out" || tb_fail "identical: $(cat "$TB_TMP/out")"
[ ! -e "$state/images/demo/2.img" ] || tb_fail "an identical import made demo@2"

echo "== a size change needs --force"
cp "$TB_TMP/v1.raw" "$TB_TMP/big.raw"
truncate -s $((16 * M)) "$TB_TMP/big.raw"
td_expect_fail "a bigger disk" "is 16\.0 MiB but demo@1 is 8\.0 MiB.*--force" \
  tctl image import demo "$TB_TMP/big.raw"
[ ! -e "$state/images/demo/2.img" ] || tb_fail "a refused import made demo@2"
tctl image import demo "$TB_TMP/big.raw" --force >/dev/null 2>&1 || tb_fail "--force"
[ -e "$state/images/demo/2.img" ] || tb_fail "--force did not import"

echo "== a preserved partition the new file lacks"
truncate -s $((16 * M)) "$TB_TMP/nopart.raw"
printf 'label: dos\nstart=2048, size=4096, type=83\n' | sfdisk -q "$TB_TMP/nopart.raw"
td_expect_fail "no partition 2" \
  "cannot be served to pc01.*clients\.pc01\.preserve\[0\] on the new demo@3: partition 2" \
  tctl image import demo "$TB_TMP/nopart.raw"
[ ! -e "$state/images/demo/3.img" ] || tb_fail "a refused import made demo@3"
tctl image import demo "$TB_TMP/nopart.raw" --force >"$TB_TMP/out" 2>&1 || tb_fail "--force"
grep -q 'to go back: tabulactl image promote demo@2' "$TB_TMP/out" ||
  tb_fail "the warning must name the way back: $(cat "$TB_TMP/out")"
