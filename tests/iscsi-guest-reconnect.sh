#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A session is a boot over iSCSI too: a real guest booted by QEMU's iSCSI
# driver from a rollback client's target keeps its session when its
# connection drops.  While the guest is paused between two writes,
# tabula-iscsid is killed with -9 (the daemon restarts it on the same port,
# which it keeps bound); libiscsi logs in again and the guest continues:
# nothing is rolled back, no write is lost, one session (session-resume by
# the new target process).  Then the daemon itself restarts under the guest.
# The next boot, after the grace, is clean.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"
ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 ||
  tb_skip "QEMU has no iSCSI driver (apt-get install qemu-block-extra)"

T=$TB_TMP
P=$(tb_free_port)
mkdir -p "$T/root/etc"
echo "the master's motd" >"$T/root/etc/motd"
tg_master "$T/master.img" "$T/root"
state=$T/state
appliance_config()
{
  TB_RECONNECT_GRACE=$1 td_config "$T/tabula.json" "$state" '{
      "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 }
    }' "\"listen\": { \"iscsi\": \"127.0.0.1:$P\" }, \"iscsi\": { \"program\": \"$TB_ISCSID\" }"
}
appliance_config 60s
TD_CONF=$T/tabula.json
tctl image import demo "$T/master.img" >/dev/null || tb_fail "import"
td_start "$T/tabula.json"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running"

# The guest's disk: the client's iSCSI target instead of its NBD export.
TG_ISCSI_PORT=$P

echo "== the guest writes, tabula-iscsid is killed with -9 under it"
tg_boot_paused run "" pc01 \
  "write:/home/one.txt:before,sync,pause:300,write:/home/two.txt:after-kill,sync,pause:300,write:/home/three.txt:after-restart,sync,list:/home"
old=$(tctl --json status | jq -r .iscsi.pid)
kill -9 "$old"
td_wait ".iscsi.state == \"running\" and .iscsi.pid != $old" "tabula-iscsid must be restarted"
tg_continue run 2
tb_event "$state" '.type == "session-resume" and .client == "pc01" and .session == 1' \
  "the restarted tabula-iscsid must resume session 1"

echo "== the daemon restarts under the guest"
td_stop
td_start "$T/tabula.json"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running again"
tg_resume run
grep -q "/home/one.txt$" "$T/run.files" || tb_fail "the write before the kill is lost: $(cat "$T/run.files")"
grep -q "/home/two.txt$" "$T/run.files" || tb_fail "the write after the kill is lost: $(cat "$T/run.files")"
grep -q "/home/three.txt$" "$T/run.files" || tb_fail "the write after the restart is lost: $(cat "$T/run.files")"
[ "$(tb_count_events rollback pc01 "$state")" = 0 ] || tb_fail "a reconnect rolled pc01 back"
[ "$(tb_count_events session-start pc01 "$state")" = 1 ] || tb_fail "a reconnect started a new session"

echo "== the next boot (after the grace) is clean"
td_stop
appliance_config 0s
td_start "$T/tabula.json"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running"
tg_boot next "" pc01 "write:/tmp/x:1,list:/home"
grep -q "/home/one.txt$" "$T/next.files" && tb_fail "the next boot of a rollback client is not clean"
td_stop
tb_check_logs
echo PASS
