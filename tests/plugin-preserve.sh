#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Preserved ranges survive a rollback: a rollback client with
# "preserve": ["partition:2", "lba:40960-41983"] writes into partition 1,
# partition 2 and the LBA range in session 1; session 2 sees partition 1 back
# at the master and keeps the other two.  When a new version of the image is
# published, the next session moves to it and still keeps them.  Blocks only
# partly inside a preserved range return to the master.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require sfdisk

M=1048576
S=512
master=$TB_TMP/master.img
tb_make_file "$master" $((32 * M)) 1 $((32 * M))
# p1: sectors 2048-10239 (1-5 MiB), p2: 10240-30719 (5-15 MiB)
printf 'label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=20480, type=83\n' |
  sfdisk -q --no-reread "$master"
state=$TB_TMP/state
tb_import "$state" demo "$master"
tb_config "$TB_TMP/tabula.json" "$state" '{
  "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 1,
            "preserve": ["partition:2", "lba:40960-41983"] } }'
tb_start s "$TB_TMP/tabula.json"

p1=$((2048 * S)) p2=$((10240 * S)) lba=$((40960 * S))
echo "== session 1 writes everywhere"
tb_io s -e pc01 write:$p1:65536:5 write:$p2:65536:6 write:$((p2 + 10 * M - 4096)):4096:6 \
  write:$lba:$((1024 * S)):7 write:$((lba - 4096)):4096:8 flush || tb_fail "session 1"
echo "== session 2: partition 1 is the master again, partition 2 and the LBA range stay"
tb_io s -e pc01 read:$p1:65536:1 read:$p2:65536:6 read:$((p2 + 10 * M - 4096)):4096:6 \
  read:$lba:$((1024 * S)):7 read:$((lba - 4096)):4096:1 write:$((p1 + 8192)):4096:3 ||
  tb_fail "preserved ranges after a rollback"
tb_event "$state" '.type == "rollback" and .client == "pc01"' "rollback"

echo "== a new version: the next session moves to it and keeps the preserved data"
cp "$master" "$TB_TMP/v2.img"
"$TB_IO" --make-file "$TB_TMP/p1new.img" 65536 9 >/dev/null
dd if="$TB_TMP/p1new.img" of="$TB_TMP/v2.img" bs=$S seek=2048 conv=notrunc status=none
tb_import "$state" demo "$TB_TMP/v2.img"
tb_io s -e pc01 write:$((p2 + 4096)):4096:6 || tb_fail "session 3"
jq -e 'select(.type == "session-start")' "$state/events.jsonl" | jq -s -e 'last | .version == 2' \
  >/dev/null || tb_fail "the session after the new version must run on demo@2"
tb_io s -e pc01 read:$p2:65536:6 read:$lba:$((1024 * S)):7 ||
  tb_fail "preserved ranges must survive the move to demo@2"
echo "== the admin view of the live disk shows the preserved ranges too"
tb_io s -e pc01@live read:$p2:65536:6 read:$((p2 + 4096)):4096:6 read:$lba:$((1024 * S)):7 ||
  tb_fail "pc01@live must show the preserved ranges of the running session"
tb_stop s
tb_check_logs
