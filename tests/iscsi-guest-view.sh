#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Real guests over iSCSI, with NBD on the same appliance: tabula-restored runs
# nbdkit and tabula-iscsid (listen.iscsi); QEMU's iSCSI block driver
# (libiscsi, qemu-block-extra) boots the guest test image from a client's
# target, LUN 0.
#  - the view (tabula-fuse), mounted before the boot, of the running session
#    shows the guest's files and changes.txt lists them: nbdkit reads the
#    session through tabula-iscsid (lib/liveview.h); tests/iscsi-live-view.sh
#    checks the same byte for byte without QEMU.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"
. "$abs_top_srcdir/tests/fuse-functions.sh"
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

M=$T/view
tf_mount "$M" -c "$T/tabula.json"
vol=$(ls "$M/clients/pc01/fs")
fs=$M/clients/pc01/fs/$vol

echo "== pc01 over iSCSI: the view sees the running session"
tg_boot_paused s1 "" pc01 \
  write:/home/user/new.txt:made-in-session-1,rm:/etc/motd,list,pause:120
i=0
until [ -f "$fs/home/user/new.txt" ] && [ ! -e "$fs/etc/motd" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the iSCSI guest's files did not show in the view: $(ls -R "$fs" | head -20)"
  sleep 0.1
done
[ "$(cat "$fs/home/user/new.txt")" = made-in-session-1 ] || tb_fail "new.txt in the view: $(cat "$fs/home/user/new.txt")"
C=$M/clients/pc01/changes.txt
i=0
until grep -Eq '^created +file +[0-9]+ +[^ ]*home/user/new.txt$' "$C" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "changes.txt lacks new.txt: $(cat "$C")"
  sleep 0.1
done
grep -Eq '^deleted +file +[0-9]+ +[^ ]*etc/motd$' "$C" || tb_fail "changes.txt lacks the deleted motd: $(cat "$C")"
tg_resume s1
tf_umount "$M"
td_stop
echo PASS
