#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Real guests over iSCSI, with NBD on the same appliance: tabula-restored runs
# nbdkit and tabula-iscsid (listen.iscsi); QEMU's iSCSI block driver
# (libiscsi, qemu-block-extra) boots the guest test image from a client's
# target, LUN 0.
#  - rollback client pc01: session 1 writes, overwrites and deletes files;
#    session 2 sees the master exactly, file for file;
#  - while pc01's guest runs (paused, session live) its NBD export answers
#    busy; at the session's end its watchdog rule (a created *.exe) fires;
#  - persist client vm01: session 2 sees session 1's files.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"
[ -f /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ] || ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 ||
  tb_skip "QEMU has no iSCSI driver (apt-get install qemu-block-extra)"

T=$TB_TMP
P=$(tb_free_port)
mkdir -p "$T/root/etc" "$T/root/home/user" "$T/root/data"
echo "the master's motd" >"$T/root/etc/motd"
echo "notes of the master" >"$T/root/home/user/notes.txt"
head -c 300000 /dev/urandom >"$T/root/data/blob.bin"
tg_master "$T/master.img" "$T/root"
state=$T/state
td_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2,
              "watchdog": { "rules": [
                { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "alert" } ] } },
    "vm01": { "image": "demo", "policy": "persist" }
  }' "\"listen\": { \"iscsi\": \"127.0.0.1:$P\" }, \"iscsi\": { \"program\": \"$TB_ISCSID\" }"
TD_CONF=$T/tabula.json
tctl image import demo "$T/master.img" >/dev/null || tb_fail "import"
td_start "$T/tabula.json"
td_wait '.iscsi.state == "running"' "tabula-iscsid must be running"
sock=$state/nbd.sock

# The guest's disk: the client's iSCSI target instead of its NBD export.
TG_ISCSI_PORT=$P

echo "== pc01 over iSCSI: session 1 writes while its NBD export is busy"
tg_boot_paused s1 "" pc01 \
  write:/home/user/new.txt:made-in-session-1,random:/data/new.bin:700,write:/home/user/notes.txt:overwritten,write:/apps/evil.exe:MZ,rm:/etc/motd,rm:/data/blob.bin,list,pause:120
tctl --json client pc01 | jq -e '.state == "active"' >/dev/null || tb_fail "pc01 must be in a session: $(tctl client pc01)"
st=0
nbdinfo "nbd+unix:///pc01?socket=$sock" >"$T/nbd-out" 2>&1 || st=$?
[ $st -ne 0 ] || tb_fail "pc01's NBD export was served while its iSCSI session runs"
grep -qi busy "$T/nbd-out" "$T/daemon.log" || tb_fail "pc01's NBD refusal does not say busy: $(cat "$T/nbd-out")"
tg_resume s1
f=$T/s1.files
grep -q " /etc/motd$" "$f" && tb_fail "session 1: /etc/motd still there after rm"
grep -q "^$(echo made-in-session-1 | sha256sum | cut -d' ' -f1) /home/user/new.txt$" "$f" ||
  tb_fail "session 1: new.txt missing or wrong: $(cat "$f")"
tb_wait_idle "$state" pc01
i=0
until jq -c 'select(.type == "watchdog-rule" and .client == "pc01" and .rule == "exe" and .kind == "created")' \
  "$state/events.jsonl" 2>/dev/null | grep -q .; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "the watchdog rule did not fire on the iSCSI client's session: $(tctl events --client pc01 --last 10)"
  sleep 0.1
done

echo "== pc01, session 2: the master exactly"
tg_boot s2 "" pc01 list
tg_same_files "$T/master.files" "$T/s2.files" "session 2 over iSCSI must see the master"
[ "$(tb_count_events session-end pc01 "$state")" = 2 ] || tb_fail "two session-end events expected for pc01"

echo "== vm01 (persist) over iSCSI: session 2 sees session 1's files"
tg_boot v1 "" vm01 write:/home/user/kept.txt:persisted-over-iscsi,rm:/etc/motd,list
tb_wait_idle "$state" vm01
tg_boot v2 "" vm01 cat:/home/user/kept.txt,list
tg_same_files "$T/v1.files" "$T/v2.files" "session 2 of a persist client over iSCSI"
grep -q '^tabula-cat /home/user/kept.txt: persisted-over-iscsi$' "$T/v2.console" ||
  tb_fail "kept.txt's content in session 2"
td_stop
tb_check_logs
echo PASS
