#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A client's further disks over iSCSI (conf.h "disks", iscsi/target.c): one
# target a client, its first disk LUN 0, its further disks LUN 1, 2...
#  - discovery shows the client's target only (a disk is no target of its
#    own), REPORT LUNS the client's LUNs; each LUN has its disk's size and
#    its own serial number (the disk's id) and identifier;
#  - a login is a boot across the LUNs: the rollback LUN 0 starts clean, the
#    persist LUN 1 keeps its writes; a read-only disk's LUN is write
#    protected;
#  - a disk whose image has no version is a LUN the target lacks (a refusal
#    event), the others are served;
#  - while the target serves the client, nbdkit refuses its every disk (busy).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_require iscsi-ls iscsi-inq iscsi-readcapacity16 qemu-io jq
tb_setup
S=$TB_TMP/state
M=$((4 * 1024 * 1024))
tb_iscsi_state "$S" $M
tb_make_file "$TB_TMP/games.img" $((8 * M)) 2
tb_import "$S" games "$TB_TMP/games.img"
cat >"$TB_TMP/tabula.json" <<JSON
{"state_dir": "$S", "images": {"demo": {}, "games": {}, "nover": {}},
 "reconnect_grace": "0s",
 "clients": {
   "pc01": {"image": "demo", "policy": "rollback",
            "disks": {"games": {"image": "games", "policy": "persist"},
                      "bad": {"image": "nover"},
                      "tools": {"image": "games", "read_only": true}}}
 }}
JSON
tb_iscsi_start t "$TB_TMP/tabula.json"
I=$TB_ISCSI_INITIATOR

echo "== one target, the disks are its LUNs"
iscsi-ls -s -i "$I" "iscsi://127.0.0.1:$TB_ISCSI_PORT" >"$TB_TMP/ls" 2>&1 || tb_fail "iscsi-ls: $(cat "$TB_TMP/ls")"
grep -q "Target:$TB_ISCSI_PREFIX:pc01 " "$TB_TMP/ls" || tb_fail "discovery lacks pc01: $(cat "$TB_TMP/ls")"
grep -q "pc01/" "$TB_TMP/ls" && tb_fail "a disk must not be a target: $(cat "$TB_TMP/ls")"
grep -q "Lun:0 " "$TB_TMP/ls" && grep -q "Lun:1 " "$TB_TMP/ls" && grep -q "Lun:3 " "$TB_TMP/ls" ||
  tb_fail "REPORT LUNS must list LUN 0, 1 (games) and 3 (tools): $(cat "$TB_TMP/ls")"
grep -q "Lun:2 " "$TB_TMP/ls" && tb_fail "LUN 2 (a disk with no version) must be missing: $(cat "$TB_TMP/ls")"
grep -q "unable to open\|no versions" "$TB_TMP/t.log" || true
jq -c 'select(.type == "refused" and .client == "pc01/bad")' "$S/events.jsonl" | grep -q . ||
  tb_fail "no refusal event for pc01/bad"
iscsi-readcapacity16 -i "$I" "$(tb_iscsi_url pc01 1)" >"$TB_TMP/cap" || tb_fail "capacity of LUN 1"
grep -q "RETURNED LOGICAL BLOCK ADDRESS:$((8 * M / 512 - 1))" "$TB_TMP/cap" || tb_fail "LUN 1's size: $(cat "$TB_TMP/cap")"
iscsi-readcapacity16 -i "$I" "$(tb_iscsi_url pc01 0)" >"$TB_TMP/cap" || tb_fail "capacity of LUN 0"
grep -q "RETURNED LOGICAL BLOCK ADDRESS:$((M / 512 - 1))" "$TB_TMP/cap" || tb_fail "LUN 0's size: $(cat "$TB_TMP/cap")"
iscsi-inq -i "$I" -e 1 -c 128 "$(tb_iscsi_url pc01 1)" | grep -q "Unit Serial Number:\[pc01/games\]" ||
  tb_fail "LUN 1's serial number is the disk's id"
iscsi-inq -i "$I" -e 1 -c 128 "$(tb_iscsi_url pc01 0)" | grep -q "Unit Serial Number:\[pc01\]" ||
  tb_fail "LUN 0's serial number is the client's id"
iscsi-inq -i "$I" -e 1 -c 131 "$(tb_iscsi_url pc01 0)" >"$TB_TMP/id0" 2>&1
iscsi-inq -i "$I" -e 1 -c 131 "$(tb_iscsi_url pc01 1)" >"$TB_TMP/id1" 2>&1
cmp -s "$TB_TMP/id0" "$TB_TMP/id1" && tb_fail "LUN 0 and LUN 1 must have their own identifiers"
st=0
qemu-io -f raw -c "read 0 512" "$(tb_iscsi_url pc01 2)" >"$TB_TMP/q2" 2>&1 || st=$?
[ $st != 0 ] || tb_fail "LUN 2 must not be readable: $(cat "$TB_TMP/q2")"

echo "== a login is a boot: LUN 0 rolls back, LUN 1 keeps"
qemu-io -f raw -c "write -P 0x5a 4096 4096" "$(tb_iscsi_url pc01 0)" >"$TB_TMP/q" 2>&1 || tb_fail "write LUN 0: $(cat "$TB_TMP/q")"
qemu-io -f raw -c "write -P 0x6b 4096 4096" "$(tb_iscsi_url pc01 1)" >"$TB_TMP/q" 2>&1 || tb_fail "write LUN 1: $(cat "$TB_TMP/q")"
[ -f "$S/clients/pc01/disks/games/overlay" ] || tb_fail "LUN 1 is the disk pc01/games"
qemu-io -f raw -c "read -P 0x6b 4096 4096" "$(tb_iscsi_url pc01 1)" >"$TB_TMP/q" 2>&1 ||
  tb_fail "LUN 1 (persist) must keep its write: $(cat "$TB_TMP/q")"
qemu-io -f raw -c "read -P 0x5a 4096 4096" "$(tb_iscsi_url pc01 0)" >"$TB_TMP/q" 2>&1 &&
  tb_fail "LUN 0 (rollback) must be clean in a new boot: $(cat "$TB_TMP/q")"
st=0
qemu-io -f raw -c "write -P 0x11 0 4096" "$(tb_iscsi_url pc01 3)" >"$TB_TMP/q" 2>&1 || st=$?
grep -qi "protect\|read-only\|permission\|denied" "$TB_TMP/q" || [ $st != 0 ] ||
  tb_fail "LUN 3 (read-only disk) must refuse writes: $(cat "$TB_TMP/q")"
[ ! -e "$S/clients/pc01/disks/tools/overlay" ] || tb_fail "the read-only disk got an overlay"

echo "== while the target serves pc01, nbdkit refuses its disks"
qemu-io -f raw -c "read 0 512" -c "sleep 4000" "$(tb_iscsi_url pc01 0)" >"$TB_TMP/hold" 2>&1 &
echo $! >"$TB_TMP/hold.bgpid"
i=0
until jq -e '.connections | length > 0' "$S/clients/pc01/disks/games/live.json" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 200 ] || tb_fail "the held login never opened pc01/games"
  sleep 0.05
done
tb_start n "$TB_TMP/tabula.json"
st=0
tb_io n -e pc01/games read:0:512:2 >"$TB_TMP/nbd.out" 2>&1 || st=$?
[ $st = 2 ] || tb_fail "NBD must refuse pc01/games while iSCSI serves pc01 ($st): $(cat "$TB_TMP/nbd.out")"
grep -q "pc01/games.*busy\|pc01 is busy" "$TB_TMP/n.log" || tb_fail "the refusal says busy: $(tail -3 "$TB_TMP/n.log")"
wait "$(cat "$TB_TMP/hold.bgpid")" || true
rm -f "$TB_TMP/hold.bgpid"
tb_stop n

tb_iscsi_stop t
tb_check_logs
echo PASS
