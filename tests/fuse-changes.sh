#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The view over the real appliance (tabula plugin, tabula-fuse -c CONFIG):
# a client writes into its ext4 disk with real tools through NBD (nbdfuse
# exposes the export as a file, debugfs -w and dd write into it); within a
# few seconds the view's fs/ shows the new files and changes.txt lists the
# created, changed (by metadata and by content alone, found through the dirty
# map) and deleted files.  After a rollback the session is retained: its
# sessions/N/ shows the old data while fs/ is the master again.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs nbdfuse nbdinfo jq

T=$TB_TMP
tf_src "$T/src"
tf_ext4 "$T/master.img" "$T/src" 64M
state=$T/state
tb_import "$state" demo "$T/master.img"
tb_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 },
    "pc02": { "image": "demo" }
  }' "\"listen\": { \"unix\": \"$T/srv.sock\" }"
tb_start srv "$T/tabula.json"
M=$T/mnt
tf_mount "$M" -c "$T/tabula.json"

[ "$(ls "$M/clients" | tr '\n' ' ')" = "pc01 pc02 " ] || tb_fail "clients: $(ls "$M/clients")"
[ "$(ls "$M/images/demo")" = 1 ] || tb_fail "versions of demo: $(ls "$M/images/demo")"
tf_same "$T/src" "$M/images/demo/1/fs/whole-ext4"
tf_same "$T/src" "$M/clients/pc01/fs/whole-ext4"
grep -q '^created\|^changed\|^deleted' "$M/clients/pc01/changes.txt" &&
  tb_fail "changes before any write: $(cat "$M/clients/pc01/changes.txt")"

# A session: pc01's disk as a file, written by debugfs and dd.
mkdir "$T/nf"
nbdfuse "$T/nf/disk" "nbd+unix:///pc01?socket=$T/srv.sock" >"$T/nbdfuse.log" 2>&1 &
echo $! >"$T/nbdfuse.bgpid"
TB_MOUNTS="$T/nf $TB_MOUNTS"
i=0
until [ -f "$T/nf/disk" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "nbdfuse did not expose pc01: $(cat "$T/nbdfuse.log")"
  sleep 0.1
done
echo "written in the session" >"$T/new.txt"
head -c 5000 /dev/urandom >"$T/odd-new.bin"
debugfs -w "$T/nf/disk" >"$T/debugfs.log" 2>&1 <<EOF
write $T/new.txt new.txt
rm hello.txt
rm a/b/odd.bin
write $T/odd-new.bin a/b/odd.bin
mkdir made-dir
EOF
# Content only: overwrite the first block of a/rand.bin in place (same
# size, same times): only the dirty map can tell.
blk=$(debugfs -R "bmap a/rand.bin 0" "$T/nf/disk" 2>/dev/null)
[ -n "$blk" ] || tb_fail "debugfs bmap failed"
head -c 4096 /dev/urandom >"$T/block"
dd if="$T/block" of="$T/nf/disk" bs=4096 seek="$blk" conv=notrunc,fsync status=none
sync

# The view follows within its documented bound (2 s + 1 s kernel cache).
i=0
until [ -f "$M/clients/pc01/fs/whole-ext4/new.txt" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "new.txt did not show in the live view"
  sleep 0.1
done
cmp -s "$T/new.txt" "$M/clients/pc01/fs/whole-ext4/new.txt" || tb_fail "new.txt content"
cmp -s "$T/odd-new.bin" "$M/clients/pc01/fs/whole-ext4/a/b/odd.bin" || tb_fail "odd.bin content"
[ ! -e "$M/clients/pc01/fs/whole-ext4/hello.txt" ] || tb_fail "hello.txt still in the live view"
[ -d "$M/clients/pc01/fs/whole-ext4/made-dir" ] || tb_fail "made-dir missing"
tf_same "$T/src" "$M/images/demo/1/fs/whole-ext4" # the master is untouched
sleep 2.2
C=$T/changes.txt
cp "$M/clients/pc01/changes.txt" "$C"
line()
{
  grep -Eq "^$1 +$2 +$3 whole-ext4/$4\$" "$C" ||
    tb_fail "changes.txt lacks '$1 $2 $3 $4': $(cat "$C")"
}
line created file 23 new.txt
line created dir '[0-9]+' made-dir
line deleted file 18 hello.txt
line changed file 5000 a/b/odd.bin
line changed file 1048577 a/rand.bin
n=$(grep -c '^created\|^changed\|^deleted' "$C")
[ "$n" = 5 ] || tb_fail "changes.txt has $n lines, expected 5: $(cat "$C")"
grep -q 'dirty bytes' "$C" || tb_fail "changes.txt does not use the dirty map: $(head -3 "$C")"
jq -e '.base == "demo@1" and .dirty_bytes > 0 and .client == "pc01"' "$M/clients/pc01/status.json" \
  >/dev/null || tb_fail "status.json: $(cat "$M/clients/pc01/status.json")"

# A remote view (--uri, as from an admin's machine) finds the base version in
# the export's description and lists the same changes.
R=$T/remote
tf_mount "$R" --uri "nbd+unix:///?socket=$T/srv.sock"
grep -v '^#' "$R/clients/pc01/changes.txt" >"$T/remote-changes.txt"
grep -v '^#' "$C" | cmp -s - "$T/remote-changes.txt" ||
  tb_fail "--uri changes.txt differs: $(cat "$R/clients/pc01/changes.txt")"
tf_umount "$R"

# End the session; the next one rolls back and retains session 1.
fusermount3 -u "$T/nf"
wait "$(cat "$T/nbdfuse.bgpid")" || true
rm -f "$T/nbdfuse.bgpid"
tb_wait_idle "$state" pc01
# (a probe such as nbdinfo is no session: the boot's first write makes it)
tb_io srv -e pc01 rewrite:0:4096 || tb_fail "second session"
tb_wait_idle "$state" pc01
sleep 3.2
[ -d "$M/clients/pc01/sessions/1" ] || tb_fail "sessions/1 missing: $(ls "$M/clients/pc01/sessions")"
cmp -s "$T/new.txt" "$M/clients/pc01/sessions/1/fs/whole-ext4/new.txt" || tb_fail "session 1 new.txt"
tf_same "$T/src" "$M/clients/pc01/fs/whole-ext4"
[ ! -e "$M/clients/pc01/fs/whole-ext4/new.txt" ] || tb_fail "rollback: new.txt still live"
grep -Eq '^created +file +23 whole-ext4/new.txt$' "$M/clients/pc01/sessions/1/changes.txt" ||
  tb_fail "session 1 changes: $(cat "$M/clients/pc01/sessions/1/changes.txt")"

tf_umount "$M"
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log && tb_fail "sanitizer report in tabula-fuse"
exit 0
