#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Clients with more than one disk (conf.h "disks", lib/live.c's machines):
#  - export ID is the client's first (system) disk, ID/DISK each further
#    disk, from its own image with its own policy; its state lives in
#    clients/ID/disks/DISK, the system disk's where it always was;
#  - one boot across the disks: boot 1 writes to every disk; boot 2 sees the
#    rollback system disk clean, the persist games disk kept, and a rollback
#    scratch disk clean even when it sends no boot id (a boot begun on one
#    disk ends the older sessions of the others; their stale connections get
#    ESHUTDOWN);
#  - a read-only disk is its master, never written;
#  - nbdinfo --list shows every disk and its views; qemu-img opens ID/DISK;
#  - the busy rule is the client's: another nbdkit is refused every disk of
#    a client this one serves; a locked-down client locks down its disks;
#  - a disk whose image has no version is refused alone, with an event;
#    its client's other disks and the other clients are served.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

K=65536
M=$((4 * 1024 * 1024))
state=$TB_TMP/state
tb_make_file "$TB_TMP/sys.img" $M 1
tb_make_file "$TB_TMP/games.img" $((2 * M)) 2
tb_import "$state" sys "$TB_TMP/sys.img"
tb_import "$state" games "$TB_TMP/games.img"
cat >"$TB_TMP/tabula.json" <<EOF
{
  "state_dir": "$state",
  "reconnect_grace": "30s",
  "images": { "sys": {}, "games": {}, "nover": {} },
  "groups": {
    "cafe": { "disks": { "scratch": { "image": "games", "policy": "rollback" } } }
  },
  "clients": {
    "pc01": {
      "image": "sys", "policy": "rollback", "group": "cafe",
      "disks": {
        "games": { "image": "games", "policy": "persist" },
        "ro": { "image": "games", "read_only": true }
      }
    },
    "pc02": { "image": "sys", "disks": { "bad": { "image": "nover" } } },
    "pc03": { "image": "sys", "disks": { "games": { "image": "games", "policy": "persist" } } }
  }
}
EOF
tb_start s "$TB_TMP/tabula.json"
starts() { tb_count_events session-start "$1" "$state"; }

echo "== boot 1 writes to every disk"
tb_io s -e pc01@boot/aaaa-1 size:$M read:0:$K:1 write:0:4096:11 flush ||
  tb_fail "pc01's system disk in boot 1"
tb_io s -e pc01/games@boot/aaaa-1 size:$((2 * M)) read:0:$K:2 write:0:4096:12 flush ||
  tb_fail "pc01/games in boot 1"
tb_io s -e pc01/scratch read:0:$K:2 write:0:4096:13 flush || tb_fail "pc01/scratch in boot 1"
[ -f "$state/clients/pc01/overlay" ] || tb_fail "the system disk's overlay is clients/pc01/overlay"
for d in games scratch; do
  [ -f "$state/clients/pc01/disks/$d/overlay" ] ||
    tb_fail "pc01/$d's overlay must be clients/pc01/disks/$d/overlay"
  tb_json "$state/clients/pc01/disks/$d/session.json" '.state == "active"' "pc01/$d's session"
done
[ ! -e "$state/clients/pc01/games" ] || tb_fail "a disk's state must not look like a client"
tb_io s -e pc01@boot/aaaa-1 read:0:4096:11 || tb_fail "a reconnect of boot 1 must continue it"
tb_io s -e pc01/games read:0:4096:12 || tb_fail "pc01/games reconnecting in boot 1"
[ "$(starts pc01)" = 1 ] && [ "$(starts pc01/games)" = 1 ] && [ "$(starts pc01/scratch)" = 1 ] ||
  tb_fail "boot 1 must be one session a disk"

echo "== the read-only disk is its master"
tb_io s -e pc01/ro read:0:$K:2 '!write:0:4096:14' >"$TB_TMP/ro.out" 2>&1 ||
  tb_fail "pc01/ro must read its master and refuse writes: $(cat "$TB_TMP/ro.out")"
grep -Eq "EPERM|EROFS" "$TB_TMP/ro.out" || tb_fail "a write to pc01/ro: $(cat "$TB_TMP/ro.out")"
[ ! -e "$state/clients/pc01/disks/ro/overlay" ] || tb_fail "a read-only disk got an overlay"

echo "== boot 2: the system disk and the rollback disk clean, the persist disk kept"
# An old connection of boot 1 on the games disk stays open while the machine
# reboots: the new boot of the system disk ends it.
tb_io s -e pc01/games@boot/aaaa-1 read:0:4096:12 sleep:4000 '!read:0:4096:12' \
  >"$TB_TMP/old.out" 2>&1 &
old=$!
i=0
until grep -q '"current":true' "$state/clients/pc01/disks/games/live.json" 2>/dev/null &&
  [ "$(jq '.connections | length' "$state/clients/pc01/disks/games/live.json")" -ge 1 ]; do
  i=$((i + 1))
  [ $i -lt 200 ] || tb_fail "the old games connection never opened"
  sleep 0.05
done
tb_io s -e pc01@boot/bbbb-2 read:0:4096:1 write:$K:4096:21 || tb_fail "boot 2: pc01 must be clean"
wait $old || tb_fail "the old boot's games connection must fail: $(cat "$TB_TMP/old.out")"
grep -q ESHUTDOWN "$TB_TMP/old.out" ||
  tb_fail "the old boot's games connection must get ESHUTDOWN: $(cat "$TB_TMP/old.out")"
tb_event "$state" '.type == "boot-new" and .client == "pc01/games" and .via == "disk"' \
  "the games disk's boot ended with its machine's"
tb_io s -e pc01/games@boot/bbbb-2 read:0:4096:12 read:4096:4096:2 write:$K:4096:22 ||
  tb_fail "boot 2: pc01/games (persist) must keep boot 1's write"
# No boot id: without the machine's boot, the grace would have continued boot 1.
tb_io s -e pc01/scratch read:0:4096:2 write:0:4096:23 || tb_fail "boot 2: pc01/scratch must be clean"
[ "$(starts pc01)" = 2 ] && [ "$(starts pc01/games)" = 2 ] && [ "$(starts pc01/scratch)" = 2 ] ||
  tb_fail "boot 2 must be one new session a disk: $(starts pc01) $(starts pc01/games) $(starts pc01/scratch)"
tb_event "$state" '.type == "rollback" and .client == "pc01/scratch"' "pc01/scratch rolled back"
[ -f "$state/clients/pc01/disks/scratch/sessions/1" ] ||
  tb_fail "pc01/scratch's boot 1 must be a retained session of the disk"
[ "$(tb_count_events rollback pc01/games "$state")" = 0 ] || tb_fail "pc01/games is persist"

echo "== listing, qemu-img"
if command -v nbdinfo >/dev/null 2>&1; then
  nbdinfo --list "nbd+unix:///?socket=$TB_TMP/s.sock" >"$TB_TMP/list.out" 2>&1 ||
    tb_fail "nbdinfo --list: $(cat "$TB_TMP/list.out")"
  for e in pc01 pc01/games pc01/games@live pc01/games@overlay pc01/scratch@session/1 pc03/games; do
    grep -q "export=\"$e\"" "$TB_TMP/list.out" || tb_fail "nbdinfo --list must show $e"
  done
  nbdinfo "nbd+unix:///pc01/games?socket=$TB_TMP/s.sock" >"$TB_TMP/info.out" 2>&1 ||
    tb_fail "nbdinfo of pc01/games: $(cat "$TB_TMP/info.out")"
fi
if command -v qemu-img >/dev/null 2>&1; then
  qemu-img info --output=json "nbd+unix:///pc03/games?socket=$TB_TMP/s.sock" >"$TB_TMP/qi.out" 2>&1 ||
    tb_fail "qemu-img info nbd+unix:///pc03/games: $(cat "$TB_TMP/qi.out")"
  [ "$(jq '."virtual-size"' "$TB_TMP/qi.out")" = $((2 * M)) ] ||
    tb_fail "qemu-img sees pc03/games's size: $(cat "$TB_TMP/qi.out")"
fi
tb_io s -e pc01/games@live read:0:4096:12 || tb_fail "pc01/games@live"

echo "== the busy rule is the client's"
tb_hold s sys3 -e pc03 write:0:4096:31
tb_start t "$TB_TMP/tabula.json"
st=0
tb_io t -e pc03/games read:0:4096:2 >"$TB_TMP/busy.out" 2>&1 || st=$?
[ $st = 2 ] || tb_fail "another nbdkit must refuse pc03/games while pc03 is served: $st $(cat "$TB_TMP/busy.out")"
grep -q "pc03 is busy" "$TB_TMP/t.log" || tb_fail "the refusal must say pc03 is busy: $(tail -3 "$TB_TMP/t.log")"
tb_event "$state" '.type == "refused" and .client == "pc03/games" and .reason == "busy"' "busy event"
tb_io s -e pc03/games read:0:4096:2 write:4096:4096:32 || tb_fail "the same nbdkit serves pc03/games"
tb_release sys3
tb_stop t

echo "== a locked-down client locks down its disks"
# (plugin-io runs as an admin: a locked-down disk reads, never changes)
printf '{"lockdown": "test"}' >"$state/clients/pc01/mailbox.json"
tb_io s -e pc01/games@boot/cccc-3 read:0:4096:12 '!write:0:4096:51' >"$TB_TMP/ld.out" 2>&1 ||
  tb_fail "pc01/games must refuse writes while pc01 is locked down: $(cat "$TB_TMP/ld.out")"
grep -q EPERM "$TB_TMP/ld.out" || tb_fail "a locked-down disk's write: $(cat "$TB_TMP/ld.out")"
rm "$state/clients/pc01/mailbox.json"
tb_io s -e pc01/games@boot/cccc-3 read:0:4096:12 write:0:4096:52 ||
  tb_fail "pc01/games after the unlock"

echo "== a broken disk is refused alone"
st=0
tb_io s -e pc02/bad read:0:4096:1 >/dev/null 2>&1 || st=$?
[ $st = 2 ] || tb_fail "pc02/bad (its image has no version) must be refused ($st)"
tb_assert_log s 'client pc02/bad is refused until this is fixed.*clients\.pc02\.disks\.bad\.image: image "nover" has no versions' \
  "the refusal names the disk's path and its image"
tb_event "$state" '.type == "refused" and .client == "pc02/bad"' "a refusal event for pc02/bad"
tb_io s -e pc02 read:0:4096:1 write:0:4096:41 || tb_fail "pc02's system disk must be served"

echo "== a bad disk in the configuration names its path"
sed '0,/"policy": "persist"/s//"policy": "persits"/' "$TB_TMP/tabula.json" >"$TB_TMP/bad.json"
tb_refuses_to_start b "$TB_TMP/bad.json"
tb_assert_log b 'clients\.pc01\.disks\.games\.policy: expected "rollback" or "persist"' "disk path"
sed 's/"scratch": { "image": "games"/"scratch": { "image": "games", "address": "10.0.0.1"/' \
  "$TB_TMP/tabula.json" >"$TB_TMP/bad.json"
tb_refuses_to_start b "$TB_TMP/bad.json"
tb_assert_log b 'groups\.cafe\.disks\.scratch\.address: unknown key' "a group's disk names the group"

tb_stop s
tb_check_logs
echo PASS
