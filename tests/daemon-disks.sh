#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A client's further disks through the daemon, tabulactl and the view
# (conf.h "disks"):
#  - tabulactl clients / client / --json status and the metrics show each
#    disk (ID/DISK), tied to its client;
#  - rollback, restore, sessions and merge act on one disk
#    (tabulactl merge pc01/games --into games), the system disk untouched;
#    rollback pc01 --all-disks on the client and each of its disks;
#  - the view shows clients/ID/ as the system disk and clients/ID/disks/DISK/
#    as the disk: its raw disk, its files (a file written through
#    nbd+unix:///pc01/games with nbdfuse and debugfs), changes.txt,
#    status.json and retained sessions;
#  - image rm refuses a version a disk's retained sessions are built on.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs nbdfuse jq

T=$TB_TMP
state=$T/state
tb_make_file "$T/sys.img" $((4 * 1024 * 1024)) 1
tf_src "$T/src"
tf_ext4 "$T/games.img" "$T/src" 32M
tb_import "$state" demo "$T/sys.img"
tb_import "$state" other "$T/games.img"
td_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback",
              "disks": { "games": { "image": "other", "policy": "persist", "keep_sessions": 3 } } },
    "pc02": { "image": "demo" }
  }' "\"metrics\": { \"file\": \"$T/tabula.prom\", \"interval\": \"1s\" }"
td_start "$T/tabula.json"
sock=$state/nbd.sock

echo "== a session on both disks; a file written into the games disk"
"$TB_IO" -s "$sock" -e pc01 write:0:4096:11 flush || tb_fail "pc01"
mkdir "$T/nf"
nbdfuse "$T/nf/disk" "nbd+unix:///pc01/games?socket=$sock" >"$T/nbdfuse.log" 2>&1 &
echo $! >"$T/nbdfuse.bgpid"
TB_MOUNTS="$T/nf $TB_MOUNTS"
i=0
until [ -f "$T/nf/disk" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "nbdfuse did not expose pc01/games: $(cat "$T/nbdfuse.log")"
  sleep 0.1
done
echo "saved game" >"$T/save.txt"
debugfs -w "$T/nf/disk" >"$T/debugfs.log" 2>&1 <<EOF || tb_fail "debugfs: $(cat "$T/debugfs.log")"
write $T/save.txt save.txt
EOF
sync
fusermount3 -u "$T/nf"
wait "$(cat "$T/nbdfuse.bgpid")" || true
rm -f "$T/nbdfuse.bgpid"
tb_wait_idle "$state" pc01/disks/games # (a client's directory under clients/: the disk's)

echo "== tabulactl shows each disk"
td_wait '.nbdkit.state == "running"' "nbdkit"
tctl clients >"$T/clients.out" || tb_fail "tabulactl clients: $(cat "$T/clients.out")"
grep -q '^pc01 ' "$T/clients.out" && grep -q '^pc01/games ' "$T/clients.out" ||
  tb_fail "tabulactl clients must list pc01 and pc01/games: $(cat "$T/clients.out")"
tctl --json clients >"$T/clients.json"
tb_json "$T/clients.json" '[.clients[] | select(.id == "pc01/games")][0] | .client == "pc01" and .disk == "games" and .policy == "persist"' "the disk's entry"
tb_json "$T/clients.json" '[.clients[] | select(.id == "pc01")][0] | .disk == null and .disks == ["pc01/games"]' "the client lists its disks"
tctl client pc01 >"$T/client.out"
grep -q '^disks: .*pc01/games' "$T/client.out" || tb_fail "tabulactl client pc01: $(cat "$T/client.out")"
tctl client pc01/games >"$T/disk.out"
grep -q '^disk: *games of client pc01' "$T/disk.out" || tb_fail "tabulactl client pc01/games: $(cat "$T/disk.out")"
grep -q '^base: *other@1' "$T/disk.out" || tb_fail "pc01/games is on other@1: $(cat "$T/disk.out")"
tctl --json status >"$T/status.json" || tb_fail "tabulactl status"
tb_json "$T/status.json" '.clients.total == 2 and .clients.disks == 1' "status counts clients and disks"
tctl status | grep -q '^clients:  2 configured (1 further disk), ' || tb_fail "status: $(tctl status)"
i=0
until grep -q 'client="pc01/games"' "$T/tabula.prom" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the metrics must show pc01/games: $(grep pc01 "$T/tabula.prom")"
  sleep 0.1
done
grep -qx 'tabula_clients 2' "$T/tabula.prom" && grep -qx 'tabula_disks 1' "$T/tabula.prom" ||
  tb_fail "the metrics count clients and disks: $(grep -E '^tabula_(clients|disks)' "$T/tabula.prom")"

echo "== the view: clients/pc01/ is the system disk, clients/pc01/disks/games/ the games disk"
M=$T/mnt
tf_mount "$M" -c "$T/tabula.json"
[ "$(ls "$M/clients" | tr '\n' ' ')" = "pc01 pc02 " ] || tb_fail "clients: $(ls "$M/clients")"
ls "$M/clients/pc01" | grep -qx disks || tb_fail "clients/pc01 must have disks/: $(ls "$M/clients/pc01")"
ls "$M/clients/pc02" | grep -qx disks && tb_fail "pc02 has no further disk"
[ "$(ls "$M/clients/pc01/disks")" = games ] || tb_fail "disks of pc01: $(ls "$M/clients/pc01/disks")"
G=$M/clients/pc01/disks/games
[ "$(stat -c %s "$G/disk")" = $((32 * 1024 * 1024)) ] || tb_fail "the games disk's size: $(stat -c %s "$G/disk")"
[ "$(stat -c %s "$M/clients/pc01/disk")" = $((4 * 1024 * 1024)) ] || tb_fail "the system disk's size"
i=0
until [ -f "$G/fs/whole-ext4/save.txt" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the view must show the games disk's new file: $(ls "$G/fs/whole-ext4")"
  sleep 0.1
done
cmp "$G/fs/whole-ext4/save.txt" "$T/save.txt" || tb_fail "save.txt in the view"
cmp "$G/fs/whole-ext4/hello.txt" "$T/src/hello.txt" || tb_fail "the master's files in the games disk"
grep -q '^created .* whole-ext4/save.txt$' "$G/changes.txt" || tb_fail "changes.txt of pc01/games: $(cat "$G/changes.txt")"
jq -e . "$G/status.json" >/dev/null || tb_fail "status.json of pc01/games"
[ -e "$M/clients/pc01/fs/whole-ext4/save.txt" ] && tb_fail "the system disk is not the games disk"
[ -e "$M/clients/pc01/disks/nosuch" ] && tb_fail "no disk nosuch"
[ -e "$M/clients/pc02/disks" ] && tb_fail "pc02 has no disks/"

echo "== rollback, sessions and restore act on one disk"
tctl rollback pc01/games >"$T/rb.out" || tb_fail "tabulactl rollback pc01/games: $(cat "$T/rb.out")"
"$TB_IO" -s "$sock" -e pc01/games rewrite:0:4096 || tb_fail "pc01/games after the rollback request"
tb_event "$state" '.type == "rollback" and .client == "pc01/games" and .reason == "requested"' "the disk's rollback"
[ "$(tb_count_events rollback pc01 "$state")" = 0 ] || tb_fail "pc01's own disk must not roll back"
tctl sessions pc01/games >"$T/sessions.out" || tb_fail "tabulactl sessions pc01/games"
grep -q '^1 ' "$T/sessions.out" || tb_fail "pc01/games keeps session 1: $(cat "$T/sessions.out")"
i=0
until [ -d "$G/sessions/1" ] && [ -f "$G/sessions/1/fs/whole-ext4/save.txt" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the view must show pc01/games's retained session 1: $(ls "$G/sessions")"
  sleep 0.1
done
tctl restore pc01/games --session 1 >"$T/rs.out" 2>&1 || tb_fail "tabulactl restore pc01/games --session 1: $(cat "$T/rs.out")"
"$TB_IO" -s "$sock" -e pc01/games rewrite:0:4096 || tb_fail "pc01/games after the restore request"
tb_event "$state" '.type == "rollback" and .client == "pc01/games" and .reason == "restore"' "the disk's restore"

echo "== merge pc01/games --into other"
tb_wait_idle "$state" pc01/disks/games
tctl merge pc01/games --into other >"$T/merge.out" 2>&1 || tb_fail "tabulactl merge pc01/games --into other: $(cat "$T/merge.out")"
grep -q 'merged pc01/games into other@2' "$T/merge.out" || tb_fail "merge: $(cat "$T/merge.out")"
tctl client pc01/games | grep -q '^next session: other@2' || tb_fail "pc01/games must move to other@2: $(tctl client pc01/games)"
tctl client pc01 | grep -q '^next session: demo@1' || tb_fail "pc01's system disk stays on demo@1"
i=0
until [ -f "$M/images/other/2/fs/whole-ext4/save.txt" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "other@2 must hold save.txt: $(ls "$M/images/other" 2>&1)"
  sleep 0.1
done

echo "== rollback ID --all-disks: the client and each of its disks"
tctl rollback pc01 --all-disks >"$T/rball.out" 2>&1 || tb_fail "rollback --all-disks: $(cat "$T/rball.out")"
grep -q '^pc01: rollback' "$T/rball.out" && grep -q '^pc01/games: rollback' "$T/rball.out" ||
  tb_fail "rollback --all-disks must post for pc01 and pc01/games: $(cat "$T/rball.out")"
tb_json "$state/clients/pc01/mailbox.json" '.rollback == true' "pc01's rollback"
tb_json "$state/clients/pc01/disks/games/mailbox.json" '.rollback == true' "pc01/games's rollback"
st=0
tctl rollback pc01/games --all-disks >/dev/null 2>&1 || st=$?
[ $st = 2 ] || tb_fail "--all-disks of a disk is a usage error ($st)"

echo "== a version a disk's retained sessions are built on is in use"
st=0
tctl image rm other@1 >"$T/rm.out" 2>&1 || st=$?
[ $st != 0 ] || tb_fail "other@1 holds pc01/games's retained sessions: it must not be removed"
grep -q "other@1 is in use.*pc01/games (retained session" "$T/rm.out" ||
  tb_fail "the refusal names the disk's sessions: $(cat "$T/rm.out")"
[ -f "$state/images/other/1.img" ] || tb_fail "other@1 is gone"

tf_umount "$M"
td_stop
tb_check_logs
echo PASS
