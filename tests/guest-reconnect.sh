#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A session is a boot: a real guest whose NBD connection drops keeps its
# session.  QEMU's NBD driver with reconnect-delay runs a rollback client;
# while the guest is paused between two writes, nbdkit is killed with -9 (the
# daemon restarts it), and later the daemon itself is restarted.  Each time
# the guest reconnects and continues: nothing is rolled back, no write is
# lost, the session number stays the same (session-resume events), and the
# guest's next boot is clean again.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc"
echo "the master's motd" >"$T/root/etc/motd"
TB_RECONNECT_GRACE=60s tg_appliance "$T/root" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 }
  }'

# QEMU's NBD driver reconnects for up to reconnect-delay seconds.
tg_qemu()
{
  timeout -k 5 "$TG_TIMEOUT" qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -nic none \
    -pidfile "$TB_TMP/guest-$1.bgpid" \
    -kernel "$TG_BOOT/vmlinuz" -initrd "$TG_BOOT/initramfs.cpio.gz" \
    -append "console=ttyS0 root=/dev/vda panic=-1 quiet tabula.do=$4" \
    -blockdev "driver=nbd,node-name=n0,server.type=unix,server.path=$2,export=$3,reconnect-delay=60,cache.direct=on" \
    -blockdev "driver=raw,node-name=d0,file=n0" -device virtio-blk-pci,drive=d0
}

echo "== the guest writes, nbdkit is killed with -9 under it"
tg_boot_paused run "$sock" pc01 \
  "write:/home/one.txt:before,sync,pause:300,write:/home/two.txt:after-kill,sync,pause:300,write:/home/three.txt:after-restart,sync,list:/home"
old=$(tctl --json status | jq -r .nbdkit.pid)
kill -9 "$old"
td_wait ".nbdkit.state == \"running\" and .nbdkit.pid != $old" "nbdkit must be restarted"
tg_continue run 2
tb_event "$state" '.type == "session-resume" and .client == "pc01" and .session == 1' \
  "the restarted nbdkit must resume session 1"

echo "== the daemon restarts under the guest"
td_stop
td_start "$TB_TMP/tabula.json"
tg_resume run
grep -q "/home/one.txt$" "$T/run.files" || tb_fail "the write before the kill is lost: $(cat "$T/run.files")"
grep -q "/home/two.txt$" "$T/run.files" || tb_fail "the write after the kill is lost: $(cat "$T/run.files")"
grep -q "/home/three.txt$" "$T/run.files" || tb_fail "the write after the restart is lost: $(cat "$T/run.files")"
[ "$(tb_count_events rollback pc01 "$state")" = 0 ] || tb_fail "a reconnect rolled pc01 back"
[ "$(tb_count_events session-start pc01 "$state")" = 1 ] || tb_fail "a reconnect started a new session"

echo "== the next boot (after the grace) is clean"
td_stop
TB_RECONNECT_GRACE=0s td_config "$TB_TMP/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 }
  }'
td_start "$TB_TMP/tabula.json"
tg_boot next "$sock" pc01 "write:/tmp/x:1,list:/home"
grep -q "/home/one.txt$" "$T/next.files" && tb_fail "the next boot of a rollback client is not clean"
td_stop
tb_check_logs
