#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabula-fuse refuses at mount what would only give EIO later (issue 18 §4):
#  - a user without access to the state directory (not the daemon's user,
#    not root) gets an error naming the directory and exit 1, no mount;
#  - a second view on a mount point that already has one is refused (it
#    would stack a mount).
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require setpriv
[ "$(id -u)" = 0 ] || tb_skip "needs root (setpriv to another user)"

T=$TB_TMP
tb_make_file "$T/master.img" 1048576 1
state=$T/state
tb_import "$state" demo "$T/master.img"
tb_config "$T/tabula.json" "$state" '{ "pc01": { "image": "demo" } }' \
  "\"listen\": { \"unix\": \"$T/srv.sock\" }"
chmod 755 "$T"
chmod 644 "$T/tabula.json"
tb_start srv "$T/tabula.json"

echo "== without access: refused at mount"
mkdir -p "$T/m0"
chmod 777 "$T/m0"
st=0
setpriv --reuid=nobody --regid=nogroup --clear-groups timeout 20 "$TF_FUSE" -f -c "$T/tabula.json" \
  "$T/m0" >"$T/nobody.out" 2>&1 || st=$?
[ $st -eq 1 ] || tb_fail "tabula-fuse without access: exit $st, want 1: $(cat "$T/nobody.out")"
grep -q "cannot read the state directory $state" "$T/nobody.out" ||
  tb_fail "the refusal must name the state directory: $(cat "$T/nobody.out")"
mountpoint -q "$T/m0" && tb_fail "tabula-fuse mounted without access"

echo "== a second view on the same mount point"
M=$T/mnt
tf_mount "$M" -c "$T/tabula.json"
st=0
timeout 20 "$TF_FUSE" -f -c "$T/tabula.json" "$M" >"$T/twice.out" 2>&1 || st=$?
[ $st -eq 1 ] || tb_fail "a second mount: exit $st, want 1: $(cat "$T/twice.out")"
grep -q "already mounted on $M" "$T/twice.out" || tb_fail "second mount: $(cat "$T/twice.out")"
[ "$(grep -c " $M fuse.tabula " /proc/self/mounts)" = 1 ] || tb_fail "two mounts stacked on $M"
ls "$M/images/demo" >/dev/null || tb_fail "the first view after the refused second"
tf_umount "$M"
tb_stop srv
tb_check_logs
