#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A real guest on a rollback client: QEMU boots Linux from tabula (root on the
# ext4 master, over NBD); in session 1 the guest writes, overwrites and
# deletes files and sees its changes; in session 2 it sees the master exactly,
# file for file (SHA-256 of every file, listed by the guest itself).  The
# master version is untouched and session 1 is retained as a restore point.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/home/user" "$T/root/data"
echo "the master's motd" >"$T/root/etc/motd"
echo "notes of the master" >"$T/root/home/user/notes.txt"
head -c 300000 /dev/urandom >"$T/root/data/blob.bin"
tg_appliance "$T/root" '{ "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 } }'
master_sha=$(tb_sha256 "$T/master.img")

echo "== session 1: the guest writes, overwrites and deletes"
tg_boot s1 "$sock" pc01 \
  write:/home/user/new.txt:made-in-session-1,random:/data/new.bin:700,write:/home/user/notes.txt:overwritten,rm:/etc/motd,rm:/data/blob.bin,list
tb_wait_idle "$state" pc01
f=$T/s1.files
grep -q " /etc/motd$" "$f" && tb_fail "session 1: /etc/motd still there after rm"
grep -q " /data/blob.bin$" "$f" && tb_fail "session 1: /data/blob.bin still there after rm"
grep -q "^$(echo made-in-session-1 | sha256sum | cut -d' ' -f1) /home/user/new.txt$" "$f" ||
  tb_fail "session 1: new.txt missing or wrong: $(cat "$f")"
grep -q "^$(echo overwritten | sha256sum | cut -d' ' -f1) /home/user/notes.txt$" "$f" ||
  tb_fail "session 1: notes.txt not overwritten: $(cat "$f")"
grep -q " /data/new.bin$" "$f" || tb_fail "session 1: new.bin missing"

echo "== session 2: the master, exactly"
tg_boot s2 "$sock" pc01 list
tg_same_files "$T/master.files" "$T/s2.files" "session 2 must see the master"

[ "$(tb_sha256 "$state/images/demo/1.img")" = "$master_sha" ] || tb_fail "the master version changed"
tctl --json sessions pc01 | jq -e '[.sessions[].session] | index(1) != null' >/dev/null ||
  tb_fail "session 1 must be retained: $(tctl sessions pc01)"
[ "$(tb_count_events session-end pc01 "$state")" = 2 ] || tb_fail "two session-end events expected"
td_stop
tb_check_logs
echo PASS
