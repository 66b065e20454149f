#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Several connections of one client share one overlay and one session:
#  - write on connection A, flush, read on connection B (and the reverse);
#  - a session lasts while any connection is open: a second client process
#    that comes and goes during it sees the same session's data, and only when
#    the last connection closes does the session end (rollback happens at the
#    next start);
#  - another nbdkit on the same state dir cannot open a client that is in a
#    session (the client lock), with a clear error, and serves others.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback" },
    "pc02": { "image": "demo", "policy": "rollback" }
  }'
tb_start s "$TB_TMP/tabula.json"

echo "== one process, three connections"
tb_io s -e pc01 -n 3 \
  conn:0 write:0:4096:5 flush conn:1 read:0:4096:5 \
  conn:1 write:100:9000:6 flush conn:2 read:100:9000:6 conn:0 read:0:100:5 \
  conn:2 zero:0:4096 flush conn:0 read:0:4096:0 conn:1 read:4096:5004:6 ||
  tb_fail "connections of one client must share one overlay"

echo "== the session lasts until the last connection closes"
tb_hold s a -e pc01 write:65536:4096:7 flush
tb_io s -e pc01 read:65536:4096:7 write:131072:4096:8 || tb_fail "second process must join the session"
tb_io s -e pc01 read:131072:4096:8 read:65536:4096:7 || tb_fail "third process must join the session"
[ "$(tb_count_events session-start pc01 "$state")" = 2 ] ||
  tb_fail "connections joining a session must not start a new one"

echo "== the client lock: a second nbdkit cannot take pc01 while it is in session"
tb_start t "$TB_TMP/tabula.json"
tb_io t -e pc01 read:0:1:0 >"$TB_TMP/busy.out" 2>&1 && tb_fail "second nbdkit served pc01 during a session"
tb_assert_log t 'pc01.*(busy|session)' "a busy client's error must say so"
tb_io t -e pc02 write:0:4096:9 read:0:4096:9 || tb_fail "second nbdkit must still serve pc02"
tb_stop t

tb_release a
tb_wait_idle "$state" pc01
tb_json "$state/clients/pc01/session.json" '.state == "idle" and .session == 2' "session 2 ended"
tb_io s -e pc01 read:65536:4096:1 read:131072:4096:1 || tb_fail "pc01's next session must start clean"
tb_stop s
tb_check_logs
