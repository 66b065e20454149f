#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Preserved data survives a crash after the turn that carried it: a rollback
# client with "preserve": ["lba:40960-57343"] and keep_sessions 1 writes user
# data there in session 1 (flushed); session 2 carries it over; session 3
# (writing elsewhere) carries it again and nbdkit is killed (-9) before any
# flush.  Session 4 must read session 1's data in the range: carry_preserved
# makes the carried blocks durable before prune_sessions removes the only
# other copy (without that flush session 3's overlay held the data with no
# map pointing at it, and session 2's overlay, the real copy, was pruned).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

M=1048576
lba=$((40960 * 512))
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((32 * M)) 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
  "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 1,
            "preserve": ["lba:40960-57343"] } }'
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc01 write:$lba:$M:7 write:$((lba + 4 * M)):65536:8 flush || tb_fail "session 1"
tb_wait_idle "$state" pc01
tb_io s -e pc01 read:$lba:$M:7 write:0:4096:3 flush || tb_fail "session 2: the preserved data"
tb_wait_idle "$state" pc01
echo "== session 3 is killed before any flush"
tb_hold s s3 -e pc01 write:4096:4096:4
tb_kill9 s
kill "$(cat "$TB_TMP/s3.holdpid")" 2>/dev/null || true
wait "$(cat "$TB_TMP/s3.iopid")" 2>/dev/null || true
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc01 read:$lba:$M:7 read:$((lba + 4 * M)):65536:8 read:0:4096:1 write:8192:4096:5 ||
  tb_fail "session 4 lost the preserved data carried by the session that was killed"
tb_wait_idle "$state" pc01
tb_stop s
tb_check_logs
