#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The maintenance PC (tabulactl maintenance, restored/maintenance.c): pc00,
# a rollback client, is made the maintenance PC of image demo; what it writes
# survives its reboots, `finish` merges it into demo@2 which a rollback
# client (pc01) then boots, and pc00 is back to rollback on demo@2.  Its
# group's refresh passes it by; a client with preserve rules or a refresh
# schedule cannot be one.  Finish
# is refused before the PC has booted, while it runs, and when the image got
# a new version meanwhile; abort discards the work and the PC's next boot is
# clean on the newest version.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

K=65536
MB=1048576
M=$((8 * MB))
state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $M 1 $M
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc00": { "image": "demo", "policy": "rollback", "group": "lab" },
    "pc01": { "image": "demo", "policy": "rollback", "group": "lab" },
    "pc02": { "image": "demo", "preserve": ["lba:0-7"] },
    "pc03": { "image": "demo", "policy": "persist", "refresh": "daily 03:00" },
    "pc04": { "image": "other", "policy": "persist" }
  }' '"groups": { "lab": {} }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
tb_make_file "$TB_TMP/o1.img" $M 2 $M
tctl image import other "$TB_TMP/o1.img" >/dev/null || tb_fail "import other"
td_start "$conf"
sock=$state/nbd.sock
io() { "$TB_IO" -s "$sock" "$@"; }

echo "== start"
td_expect_fail "start without --image" "--image IMAGE" tctl maintenance start pc00
td_expect_fail "start on an unknown image" "not in the configuration" \
  tctl maintenance start pc00 --image nosuch
td_expect_fail "a client with preserve rules" "preserve" tctl maintenance start pc02 --image demo
td_expect_fail "a client with a refresh schedule" "refresh schedule" \
  tctl maintenance start pc03 --image demo
tctl maintenance start pc00 --image demo >"$TB_TMP/out" || tb_fail "start: $(cat "$TB_TMP/out")"
grep -q "next boot starts on demo@1" "$TB_TMP/out" || tb_fail "start says: $(cat "$TB_TMP/out")"
td_expect_fail "a second maintenance PC of demo" "already has a maintenance PC, pc00" \
  tctl maintenance start pc01 --image demo
tctl --json maintenance list | jq -e '.maintenance | length == 1 and .[0].client == "pc00"
  and .[0].image == "demo" and .[0].from_version == 1' >/dev/null ||
  tb_fail "maintenance list: $(tctl --json maintenance list)"
tctl maintenance list | grep -Eq '^pc00 +demo@1 ' || tb_fail "maintenance list: $(tctl maintenance list)"
tctl client pc00 | grep -q "^maintenance:  the maintenance PC of demo" ||
  tb_fail "tabulactl client: $(tctl client pc00)"
td_expect_fail "finish before a boot" "has not booted since" tctl maintenance finish pc00

echo "== the maintenance PC keeps its writes across reboots (its policy is rollback)"
io -e pc00 write:0:$K:5 || tb_fail "pc00 boot 1"
tb_wait_idle "$state" pc00
tctl refresh --group lab >/dev/null || tb_fail "refresh --group lab" # passes pc00 by
io -e pc00 read:0:$K:5 write:$MB:$K:6 || tb_fail "pc00 boot 2 lost boot 1's write"
tb_wait_idle "$state" pc00

echo "== finish refused while it runs"
mkfifo "$TB_TMP/h.fifo"
"$TB_IO" -s "$sock" -e pc00 read:0:4096:5 hold <"$TB_TMP/h.fifo" >"$TB_TMP/h.out" 2>&1 &
iopid=$!
sleep 2147483647 >"$TB_TMP/h.fifo" &
holdpid=$!
i=0
until grep -q holding "$TB_TMP/h.out" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "hold"
  sleep 0.1
done
td_expect_fail "finish during a session" "in a session" tctl maintenance finish pc00
kill $holdpid
wait $iopid || tb_fail "held session"
tb_wait_idle "$state" pc00

echo "== finish: demo@2, booted by every rollback client"
tctl --json maintenance finish pc00 --note "updates" >"$TB_TMP/fin.json" ||
  tb_fail "finish: $(cat "$TB_TMP/fin.json")"
jq -e '.image == "demo" and .version == 2 and .base_version == 1' "$TB_TMP/fin.json" >/dev/null ||
  tb_fail "finish result: $(cat "$TB_TMP/fin.json")"
tctl --json maintenance list | jq -e '.maintenance | length == 0' >/dev/null ||
  tb_fail "still in maintenance: $(tctl --json maintenance list)"
[ "$(tb_count_events maintenance-finish pc00 "$state")" = 1 ] || tb_fail "maintenance-finish events"
io -e pc01 read:0:$K:5 read:$MB:$K:6 read:$((2 * MB)):$K:1 rewrite:0:4096 ||
  tb_fail "pc01 does not boot demo@2"
tb_wait_idle "$state" pc01
# pc00 is a rollback client again, on demo@2: a write does not survive its reboot.
io -e pc00 read:0:$K:5 write:$((3 * MB)):$K:7 || tb_fail "pc00 after finish"
tb_wait_idle "$state" pc00
io -e pc00 read:$((3 * MB)):$K:1 read:0:$K:5 rewrite:0:4096 ||
  tb_fail "pc00 is not back to rollback on demo@2"
tb_wait_idle "$state" pc00
tctl --json client pc00 | jq -e '.pinned != true' >/dev/null ||
  tb_fail "pc00 stays pinned: $(tctl --json client pc00)"

echo "== the image moved on: finish refused, abort"
tctl maintenance start pc00 --image demo >/dev/null || tb_fail "start again"
io -e pc00 write:$((4 * MB)):$K:8 || tb_fail "pc00 maintenance boot"
tb_wait_idle "$state" pc00
tb_make_file "$TB_TMP/v3.img" $M 3 $M
tctl image import demo "$TB_TMP/v3.img" >/dev/null || tb_fail "import demo@3"
td_expect_fail "finish after the image moved on" "demo moved on since pc00's maintenance started: pc00 is on demo@2 and the newest is demo@3" \
  tctl maintenance finish pc00
tctl maintenance abort pc00 >"$TB_TMP/out" || tb_fail "abort: $(cat "$TB_TMP/out")"
grep -q "restore point" "$TB_TMP/out" || tb_fail "abort says: $(cat "$TB_TMP/out")"
td_expect_fail "abort twice" "not a maintenance PC" tctl maintenance abort pc00
io -e pc00 read:0:$M:3 rewrite:0:4096 || tb_fail "pc00 after abort is not clean on demo@3"
tb_wait_idle "$state" pc00
[ "$(tb_count_events maintenance-abort pc00 "$state")" = 1 ] || tb_fail "maintenance-abort events"

echo "== a persist client of another image maintains demo, then is back on its own"
io -e pc04 read:0:$K:2 write:$((5 * MB)):$K:4 || tb_fail "pc04 on other"
tb_wait_idle "$state" pc04
tctl maintenance start pc04 --image demo >/dev/null || tb_fail "start pc04"
io -e pc04 read:0:$M:3 write:$((6 * MB)):$K:9 || tb_fail "pc04 is not on demo@3"
tb_wait_idle "$state" pc04
tctl --json maintenance finish pc04 >"$TB_TMP/fin.json" || tb_fail "finish pc04: $(cat "$TB_TMP/fin.json")"
jq -e '.image == "demo" and .version == 4' "$TB_TMP/fin.json" >/dev/null || tb_fail "$(cat "$TB_TMP/fin.json")"
io -e pc04 read:0:$K:2 read:$((6 * MB)):$K:2 rewrite:0:4096 || tb_fail "pc04 is not back on other"
tb_wait_idle "$state" pc04
tctl --json client pc04 | jq -e '.image == "other" and .pinned == false and .next_image == "other"' \
  >/dev/null || tb_fail "pc04: $(tctl --json client pc04 | jq -c '{image, pinned, next_image, next_version}')"

td_stop
tb_check_logs
echo ok
