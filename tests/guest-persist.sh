#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A real guest on a persist client: the files it writes and deletes in
# session 1 are there in session 2, and again after the whole appliance
# (tabula-restored and its nbdkit) is stopped and started; a rollback client
# of the same master still boots the master, untouched by the persist client.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/home/user"
echo "the master's motd" >"$T/root/etc/motd"
echo "notes of the master" >"$T/root/home/user/notes.txt"
tg_appliance "$T/root" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "pc01": { "image": "demo", "policy": "rollback" }
  }'

echo "== session 1 writes and deletes"
tg_boot s1 "$sock" vm01 \
  write:/home/user/kept.txt:persisted-across-sessions,random:/home/user/kept.bin:900,rm:/etc/motd,list
tb_wait_idle "$state" vm01
grep -q " /home/user/kept.txt$" "$T/s1.files" || tb_fail "session 1 did not write kept.txt"
grep -q " /etc/motd$" "$T/s1.files" && tb_fail "session 1 did not delete /etc/motd"

echo "== session 2 sees session 1's files"
tg_boot s2 "$sock" vm01 cat:/home/user/kept.txt,list
tb_wait_idle "$state" vm01
tg_same_files "$T/s1.files" "$T/s2.files" "session 2 of a persist client"
grep -q '^tabula-cat /home/user/kept.txt: persisted-across-sessions$' "$T/s2.console" ||
  tb_fail "kept.txt's content in session 2"

echo "== a rollback client of the same master boots the master"
tg_boot pc "$sock" pc01 list
tg_same_files "$T/master.files" "$T/pc.files" "pc01 must see the master"

echo "== the appliance restarts"
td_stop
td_start "$T/tabula.json"
tctl --json client vm01 | jq -e '.dirty_bytes > 900 * 1024' >/dev/null ||
  tb_fail "vm01's overlay after the restart: $(tctl --json client vm01)"
tg_boot s3 "$sock" vm01 list
tb_wait_idle "$state" vm01
tg_same_files "$T/s1.files" "$T/s3.files" "session 3, after a restart of the appliance"
[ "$(tb_count_events session-end vm01 "$state")" = 3 ] || tb_fail "three session-end events for vm01"
td_stop
tb_check_logs
echo PASS
