#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabula-iscsid: discovery, login, CHAP (one-way and mutual), initiator
# restriction and every kind of bad input of issue 19 -- each answered with
# the right iSCSI or SCSI error, the target still serving afterwards, and a
# client served over iSCSI is "busy" for NBD (one frontend at a time).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_require iscsi-ls iscsi-inq iscsi-readcapacity16 python3
tb_setup
S=$TB_TMP/state
tb_iscsi_state "$S" 67108864
cat >"$TB_TMP/tabula.json" <<JSON
{"state_dir": "$S", "images": {"demo": {}},
 "clients": {
   "pc01": {"image": "demo"},
   "pc02": {"image": "demo", "iscsi": {"chap": {"user": "pc02", "secret": "pc02-secret-12"}}},
   "pc03": {"image": "demo", "iscsi": {"initiator": "iqn.2024-01.lan.tabula.test:pc03"}},
   "pc04": {"image": "demo", "allow": ["10.9.9.9"]},
   "pc05": {"image": "demo"}
 }}
JSON
tb_iscsi_start t "$TB_TMP/tabula.json"
P=$TB_ISCSI_PORT

# Discovery: the targets this initiator may see (not pc03: another initiator's;
# not pc04: its allow list has no loopback).
iscsi-ls -i "$TB_ISCSI_INITIATOR" "iscsi://127.0.0.1:$P" >"$TB_TMP/ls" 2>&1 || tb_fail "iscsi-ls: $(cat "$TB_TMP/ls")"
grep -q "Target:$TB_ISCSI_PREFIX:pc01 Portal:127.0.0.1:$P,1" "$TB_TMP/ls" || tb_fail "discovery lacks pc01: $(cat "$TB_TMP/ls")"
grep -q ":pc03\|:pc04" "$TB_TMP/ls" && tb_fail "discovery shows a target this initiator may not use: $(cat "$TB_TMP/ls")"

# The disk: INQUIRY and the capacity (64 MiB = 131072 blocks of 512 bytes).
iscsi-inq -i "$TB_ISCSI_INITIATOR" "$(tb_iscsi_url pc01)" | grep -q "Vendor:TABULA" || tb_fail "iscsi-inq"
iscsi-inq -i "$TB_ISCSI_INITIATOR" -e 1 -c 128 "$(tb_iscsi_url pc01)" | grep -q "Unit Serial Number:\[pc01\]" || tb_fail "unit serial number is not the client id"
iscsi-readcapacity16 -i "$TB_ISCSI_INITIATOR" "$(tb_iscsi_url pc01)" >"$TB_TMP/cap"
grep -q "RETURNED LOGICAL BLOCK ADDRESS:131071" "$TB_TMP/cap" || tb_fail "capacity: $(cat "$TB_TMP/cap")"

# Logins that must fail, with their status (class, detail).
[ "$(tb_iscsi_raw nope login)" = "status 0203" ] || tb_fail "unknown target: not 'not found'"
[ "$(tb_iscsi_raw pc03 login)" = "status 0202" ] || tb_fail "another client's initiator: not 'authorization failure'"
[ "$(tb_iscsi_raw pc04 login)" = "status 0202" ] || tb_fail "a peer outside clients.pc04.allow: not refused"
[ "$(tb_iscsi_raw pc02 login)" = "status 0201" ] || tb_fail "pc02 without CHAP: not 'authentication failure'"
[ "$(tb_iscsi_raw pc01 badtext)" = "status 0200" ] || tb_fail "malformed login text: not an initiator error"
[ "$(TB_RAW_INITIATOR=iqn.2024-01.lan.tabula.test:pc03 tb_iscsi_raw pc03 login)" = "status 0000" ] || tb_fail "pc03's own initiator was refused"

# CHAP: right and wrong secrets (libiscsi does one-way CHAP from the URL).
U2="iscsi://pc02%pc02-secret-12@127.0.0.1:$P/$TB_ISCSI_PREFIX:pc02/0"
iscsi-inq -i "$TB_ISCSI_INITIATOR" "$U2" | grep -q "Vendor:TABULA" || tb_fail "CHAP with the right secret failed"
if iscsi-inq -i "$TB_ISCSI_INITIATOR" "iscsi://pc02%wrong-secret-1@127.0.0.1:$P/$TB_ISCSI_PREFIX:pc02/0" >/dev/null 2>&1; then
  tb_fail "CHAP with a wrong secret logged in"
fi
grep -q "pc02: CHAP from 127.0.0.1 .* failed: wrong user or secret" "$TB_TMP/t.log" || tb_fail "the CHAP failure is not logged"

# Bad input in the full feature phase.
[ "$(tb_iscsi_raw pc01 lun1)" = "scsi 2 key 5 asc 25" ] || tb_fail "LUN 1: not LOGICAL UNIT NOT SUPPORTED"
[ "$(tb_iscsi_raw pc01 tur)" = "scsi 0 key 0 asc 00" ] || tb_fail "TEST UNIT READY on LUN 0"
[ "$(tb_iscsi_raw pc01 oversize)" = "closed" ] || tb_fail "a data segment over MaxRecvDataSegmentLength was not refused"
[ "$(tb_iscsi_raw pc01 badop)" = "reject 5" ] || tb_fail "an unknown opcode: not rejected as 'command not supported'"
[ "$(tb_iscsi_raw pc01 truncated)" = "sent" ] || tb_fail "truncated login"
[ "$(tb_iscsi_raw pc01 ddigest | tr '\n' ' ')" = "reject 2 pong " ] || tb_fail "a data digest error: not rejected, or the connection did not stay"
# Queue depth: 48 commands in flight, answered in any order with StatSN in
# sequence, an ORDERED command alone in its place, ABORT TASK and LUN RESET
# amid running commands (the workers of target.c).
r=$(tb_iscsi_raw pc01 pipeline "$TB_TMP/master.img")
[ "$r" = ok ] || tb_fail "pipelined commands: $r"
kill -0 "$(cat "$TB_TMP/t.bgpid")" || tb_fail "tabula-iscsid died"

# One initiator per client: a second one is refused as busy while the
# first holds the session; the same initiator again is welcome.
tb_iscsi_raw pc01 hold 30 >"$TB_TMP/hold" &
echo $! >"$TB_TMP/hold.bgpid"
i=0
until grep -q ready "$TB_TMP/hold"; do
  i=$((i + 1)); [ $i -gt 100 ] && tb_fail "the holding session did not log in"; sleep 0.1
done
[ "$(TB_RAW_INITIATOR=iqn.2024-01.lan.tabula.test:other tb_iscsi_raw pc01 login)" = "status 0301" ] ||
  tb_fail "a second initiator on pc01's target was not refused as busy"
iscsi-inq -i "$TB_ISCSI_INITIATOR" "$(tb_iscsi_url pc01)" >/dev/null || tb_fail "the same initiator again was refused"

# NBD while iSCSI serves pc01: the plugin says busy; pc02 over NBD still works.
cat >"$TB_TMP/nbd.json" <<JSON
{"state_dir": "$S", "images": {"demo": {}},
 "clients": {"pc01": {"image": "demo"}, "pc02": {"image": "demo"}, "pc05": {"image": "demo"}}}
JSON
tb_start n "$TB_TMP/nbd.json"
st=0
tb_io n -e pc01 size:67108864 >"$TB_TMP/nbd-out" 2>&1 || st=$?
[ "$st" = 2 ] || tb_fail "pc01's NBD export was not refused while its iSCSI session runs (exit $st)"
grep -qi "busy" "$TB_TMP/nbd-out" "$TB_TMP/n.log" || tb_fail "pc01's NBD refusal does not say busy: $(cat "$TB_TMP/nbd-out")"
tb_event "$S" '.type == "refused" and .client == "pc01" and .reason == "busy" and (.peer | test("unix"))' \
  "the NBD refusal of busy pc01"
tb_io n -e pc02 size:67108864 >/dev/null || tb_fail "pc02 over NBD"
# And the other way round: NBD serves pc05, an iSCSI login is "target
# unavailable" and recorded as a busy refusal.
tb_hold n nbdhold -e pc05 size:67108864
[ "$(tb_iscsi_raw pc05 login)" = "status 0301" ] || tb_fail "an iSCSI login while NBD serves pc05 was not refused as busy"
tb_event "$S" '.type == "refused" and .client == "pc05" and .reason == "busy" and .peer == "127.0.0.1"' \
  "the iSCSI refusal of busy pc05"
tb_release nbdhold
tb_stop n
kill "$(cat "$TB_TMP/hold.bgpid")" 2>/dev/null || true
tb_iscsi_stop t
echo "PASS: $0"
