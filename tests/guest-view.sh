#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The view while a real guest runs: the guest writes files, deletes one,
# syncs and pauses (QEMU still running, the session live); within the view's
# refresh bound tabula-fuse shows the new files under clients/pc01/fs/<volume>/
# with the guest's bytes, no longer shows the deleted one, and changes.txt
# lists them as created and deleted.  The master version in the view stays
# as it was.  After the guest powers off, the next session (rollback) is clean.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"
. "$abs_top_srcdir/tests/fuse-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/home/user"
echo "the master's motd" >"$T/root/etc/motd"
echo "notes of the master" >"$T/root/home/user/notes.txt"
tg_appliance "$T/root" '{ "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 1 } }'
M=$T/view
tf_mount "$M" -c "$T/tabula.json"
vol=$(ls "$M/clients/pc01/fs")
[ "$vol" = whole-ext4 ] || tb_fail "pc01's volumes: $vol"
fs=$M/clients/pc01/fs/$vol

echo "== the guest writes, deletes, syncs and pauses"
tg_boot_paused g1 "$sock" pc01 \
  write:/home/user/live.txt:written-by-the-guest,random:/home/user/live.bin:333,rm:/etc/motd,list:/home/user,pause:120
tctl --json client pc01 | jq -e '.state == "active"' >/dev/null || tb_fail "pc01 must be in a session"
tr -d '\r' <"$TB_TMP/guest-g1.log" | sed -n 's/^tabula-file //p' >"$T/g1-live.files"
i=0
until [ -f "$fs/home/user/live.bin" ] && [ ! -e "$fs/etc/motd" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the guest's files did not show in the view: $(ls -R "$fs" | head -20)"
  sleep 0.1
done
[ "$(cat "$fs/home/user/live.txt")" = written-by-the-guest ] || tb_fail "live.txt in the view: $(cat "$fs/home/user/live.txt")"
grep -q "^$(tb_sha256 "$fs/home/user/live.bin") /home/user/live.bin$" "$T/g1-live.files" ||
  tb_fail "live.bin in the view differs from the guest's: $(cat "$T/g1-live.files")"
[ "$(cat "$M/images/demo/1/fs/$vol/etc/motd")" = "the master's motd" ] || tb_fail "the master in the view changed"
C=$M/clients/pc01/changes.txt
i=0
until grep -Eq '^created +file +[0-9]+ +[^ ]*home/user/live.bin$' "$C" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "changes.txt lacks live.bin: $(cat "$C")"
  sleep 0.1
done
cp "$C" "$T/changes.txt"
cat "$T/changes.txt"
grep -Eq '^created +file +21 +[^ ]*home/user/live.txt$' "$T/changes.txt" || tb_fail "changes.txt lacks live.txt: $(cat "$T/changes.txt")"
grep -Eq '^deleted +file +[0-9]+ +[^ ]*etc/motd$' "$T/changes.txt" || tb_fail "changes.txt lacks the deleted motd: $(cat "$T/changes.txt")"
grep -q 'notes.txt' "$T/changes.txt" && tb_fail "changes.txt lists an untouched file: $(cat "$T/changes.txt")"

echo "== the guest powers off; the next session is clean"
tg_resume g1
tb_wait_idle "$state" pc01
tg_boot g2 "$sock" pc01 list
tg_same_files "$T/master.files" "$T/g2.files" "the session after"
tf_umount "$M"
td_stop
tb_check_logs
echo PASS
