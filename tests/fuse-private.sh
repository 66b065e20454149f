#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Who may see what in the view (issue 14, items 4 and 7):
#  - a guest symlink stays a symlink (readlink shows its target) but the host
#    never follows it: hostshadow -> a host file reads ELOOP (nosymfollow),
#    so `cat`, `grep -r`, `diff -r` never read the host's files;
#  - mounted with -o allow_other, a user who is not an admin uid (nobody)
#    reaches the mount point but gets nothing: no listing, no raw disk, no
#    status.json, no guest file.  Root still reads everything.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs setpriv
[ "$(id -u)" = 0 ] || tb_skip "needs root (allow_other, nosymfollow, setpriv)"

T=$TB_TMP
echo "the host's secret" >"$T/host-secret"
mkdir "$T/src"
echo "guest data" >"$T/src/secret.txt"
ln -s "$T/host-secret" "$T/src/hostshadow"
tf_ext4 "$T/master.img" "$T/src" 16M
tf_appliance "$T/master.img" -o allow_other
V=$M/images/demo/1/fs/whole-ext4

echo "== symlinks: shown, never followed"
[ "$(readlink "$V/hostshadow")" = "$T/host-secret" ] ||
  tb_fail "readlink of a guest symlink: $(readlink "$V/hostshadow" 2>&1)"
[ -L "$V/hostshadow" ] || tb_fail "the guest symlink is not a symlink in the view"
if cat "$V/hostshadow" >"$T/out" 2>&1; then
  tb_fail "the host followed a guest symlink: $(cat "$T/out")"
fi
grep -q 'Too many levels of symbolic links' "$T/out" ||
  tb_fail "reading through a guest symlink: $(cat "$T/out"), expected ELOOP"
grep -rq "the host's secret" "$M/images" 2>/dev/null && tb_fail "grep -r read the host's file"
[ "$(cat "$V/secret.txt")" = "guest data" ] || tb_fail "root cannot read a guest file"

echo "== allow_other: only admin uids are answered"
chmod 755 "$T" # let nobody reach the mount point: the view itself must stop it
nobody()
{
  setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
}
nobody ls "$M" >"$T/out" 2>&1 && tb_fail "nobody listed the view: $(cat "$T/out")"
for f in "$M/clients/pc01/disk" "$M/clients/pc01/status.json" "$V/secret.txt" "$M/images/demo/1/disk"; do
  nobody cat "$f" >"$T/out" 2>&1 && tb_fail "nobody read $f: $(head -c 200 "$T/out")"
  grep -q 'Permission denied' "$T/out" || tb_fail "nobody reading $f: $(head -c 200 "$T/out")"
done
[ "$(cat "$V/secret.txt")" = "guest data" ] || tb_fail "root cannot read a guest file"
[ "$(ls "$M/clients")" = pc01 ] || tb_fail "root cannot list the clients"

tf_umount "$M"
tb_check_logs
exit 0
