#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabula-restored supervises tabula-iscsid while listen.iscsi is set:
#  - it binds listen.iscsi, starts the target (iscsi.program) with the socket
#    handed over, `tabulactl status` shows it running, an initiator logs in
#    and a write over iSCSI is a session of the client like over NBD;
#  - kill -9 of the target: an iscsid-exit event, an iscsid-restart, a new
#    pid on the same port (the daemon keeps the socket), the disk still
#    serves;
#  - a reload to another port restarts it there; a reload without
#    listen.iscsi stops it (status "off");
#  - stopping the daemon stops the target.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_require iscsi-inq qemu-io
[ -x "$TB_ISCSID" ] || tb_fail "$TB_ISCSID is not built"
tb_setup

state=$TB_TMP/state
conf=$TB_TMP/tabula.json
tb_make_file "$TB_TMP/v1.img" 16777216 3
P1=$(tb_free_port)
iscsi_config()
{
  _extra="\"iscsi\": { \"program\": \"$TB_ISCSID\" }"
  [ -z "$1" ] || _extra="\"listen\": { \"iscsi\": \"127.0.0.1:$1\" }, $_extra"
  td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }' "$_extra"
}
iscsi_config "$P1"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"

echo "== the daemon starts tabula-iscsid on listen.iscsi"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running"
tctl status >"$TB_TMP/status" || tb_fail "tabulactl status"
grep -q "^iscsi:    tabula-iscsid running, pid [0-9]*, 0 restarts, on 127.0.0.1:$P1, targets $TB_ISCSI_PREFIX:ID" \
  "$TB_TMP/status" || tb_fail "tabulactl status does not show the target: $(cat "$TB_TMP/status")"
pid1=$(tctl --json status | jq -r .iscsi.pid)
url="iscsi://127.0.0.1:$P1/$TB_ISCSI_PREFIX:pc01/0"
iscsi-inq -i "$TB_ISCSI_INITIATOR" "$url" | grep -q "Vendor:TABULA" || tb_fail "no login to the supervised target"
qemu-io -f raw -c "write -P 0x5a 4096 4096" "$url" >"$TB_TMP/qio" 2>&1 || tb_fail "write over iSCSI: $(cat "$TB_TMP/qio")"
tctl --json events --client pc01 --last 50 | jq -se 'any(.type == "session-start")' >/dev/null ||
  tb_fail "a write over iSCSI started no session: $(tctl events --client pc01 --last 20)"

echo "== kill -9: iscsid-exit, iscsid-restart, the same port"
kill -9 "$pid1"
td_wait ".iscsi.state == \"running\" and .iscsi.restarts == 1 and .iscsi.pid != $pid1" \
  "tabula-iscsid must be restarted"
tctl --json events --last 50 | jq -se 'any(.type == "iscsid-exit" and (.status | test("signal 9")))' >/dev/null ||
  tb_fail "no iscsid-exit event with the signal: $(tctl events --last 10)"
tctl --json events --last 50 | jq -se 'any(.type == "iscsid-restart")' >/dev/null ||
  tb_fail "no iscsid-restart event: $(tctl events --last 10)"
tctl status | grep -q "last exit: killed by signal 9" || tb_fail "status does not show the last exit: $(tctl status)"
i=0
until qemu-io -f raw -c "read 4096 4096" "$url" >"$TB_TMP/qio" 2>&1; do
  i=$((i + 1))
  [ $i -lt 50 ] || tb_fail "the restarted target does not serve the disk: $(cat "$TB_TMP/qio")"
  sleep 0.2
done

echo "== reload: another port, then none"
P2=$(tb_free_port)
iscsi_config "$P2"
tctl reload >/dev/null || tb_fail "reload"
td_wait ".iscsi.state == \"running\" and .iscsi.listen == \"127.0.0.1:$P2\"" "tabula-iscsid must move to port $P2"
iscsi-inq -i "$TB_ISCSI_INITIATOR" "iscsi://127.0.0.1:$P2/$TB_ISCSI_PREFIX:pc01/0" | grep -q "Vendor:TABULA" ||
  tb_fail "no login on the new port"
if iscsi-inq -i "$TB_ISCSI_INITIATOR" "$url" >/dev/null 2>&1; then
  tb_fail "the old port still serves"
fi
pid2=$(tctl --json status | jq -r .iscsi.pid)
iscsi_config ""
tctl reload >/dev/null || tb_fail "reload"
td_wait '.iscsi.state == "off"' "tabula-iscsid must stop without listen.iscsi"
kill -0 "$pid2" 2>/dev/null && tb_fail "tabula-iscsid $pid2 still runs without listen.iscsi"
tctl status | grep -q "^iscsi:" && tb_fail "status shows iscsi while it is off"

echo "== the daemon's stop stops the target"
iscsi_config "$P2"
tctl reload >/dev/null || tb_fail "reload"
td_wait '.iscsi.state == "running"' "tabula-iscsid must start again"
pid3=$(tctl --json status | jq -r .iscsi.pid)
td_stop
kill -0 "$pid3" 2>/dev/null && tb_fail "tabula-iscsid outlived the daemon"
echo "PASS"
