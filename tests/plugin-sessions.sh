#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Session turns for both policies.
#  rollback: each session starts from the master; the previous session's
#    overlay is retained in clients/ID/sessions/N (readable as ID@session/N),
#    at most keep_sessions of them.
#  persist: the next session sees the previous one's data, also after nbdkit
#    is restarted, and after kill -9 for data that was flushed.
#  session.json and events.jsonl record each session's figures.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

K=65536
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2, "allow": ["unix"] },
    "vm01": { "image": "demo", "policy": "persist" }
  }'
tb_start s "$TB_TMP/tabula.json"
pc=$state/clients/pc01

echo "== rollback: session 1 writes, session 2 sees the master"
tb_io s -e pc01 read:0:$K:1 write:0:$K:11 read:0:$K:11 read:$K:4096:1 ||
  tb_fail "pc01 session 1"
tb_wait_idle "$state" pc01
tb_json "$pc/session.json" '.state == "idle" and .session == 1 and .image == "demo" and .version == 1' \
  "session.json after session 1"
tb_json "$pc/session.json" ".bytes_written == $K and .dirty_bytes == $K and .bytes_read == $((2 * K + 4096))" \
  "session 1 figures"
[ "$(tb_count_events session-start pc01 "$state")" = 1 ] || tb_fail "one session-start event expected"
[ "$(tb_count_events session-end pc01 "$state")" = 1 ] || tb_fail "one session-end event expected"
tb_event "$state" ".type == \"session-end\" and .client == \"pc01\" and .session == 1 and
  .bytes_written == $K and .dirty_bytes == $K and .bytes_read == $((2 * K + 4096))" "session-end of session 1"

tb_io s -e pc01 read:0:$K:1 write:4096:4096:12 || tb_fail "pc01 session 2 must read the master"
tb_wait_idle "$state" pc01
[ -f "$pc/sessions/1" ] || tb_fail "session 1 not retained in $pc/sessions: $(ls "$pc/sessions" 2>&1)"
tb_io s -e pc01@session/1 size:$((4 * 1024 * 1024)) read:0:$K:11 read:$K:$K:1 ||
  tb_fail "admin export pc01@session/1 must show session 1's data"
tb_io s -e pc01@overlay read:0:4096:0 read:4096:4096:12 read:8192:4096:0 ||
  tb_fail "pc01@overlay must show session 2's dirty block only"
tb_event "$state" '.type == "rollback" and .client == "pc01" and .retained_session == 1' \
  "rollback of session 1"

echo "== rollback: retained sessions are pruned to keep_sessions (2)"
for n in 3 4 5; do
  tb_io s -e pc01 read:0:$K:1 read:4096:4096:1 write:8192:4096:$((10 + n)) ||
    tb_fail "pc01 session $n must start from the master"
  tb_wait_idle "$state" pc01
done
retained=$(ls "$pc/sessions" | sort -n | tr '\n' ' ')
[ "$retained" = "3 4 " ] || tb_fail "retained sessions are '$retained', expected '3 4 '"
# Pruned overlays leave sessions/ at once and are deleted in the background.
i=0
until [ -z "$(ls "$pc/trash" 2>/dev/null)" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "pruned sessions are never deleted: $(ls "$pc/trash")"
  sleep 0.1
done
tb_io s -e pc01@session/4 read:8192:4096:14 read:0:4096:1 || tb_fail "pc01@session/4"
tb_io s -e pc01@session/1 read:0:1:11 >/dev/null 2>&1 && tb_fail "pruned session 1 is still served"
tb_io s -e pc01@live read:8192:4096:15 read:0:4096:1 || tb_fail "pc01@live must show session 5"
[ "$(tb_count_events session-start pc01 "$state")" = 5 ] || tb_fail "five session-start events expected"
[ "$(tb_count_events session-end pc01 "$state")" = 5 ] || tb_fail "five session-end events expected"

echo "== persist: session 2 sees session 1; restart keeps it"
tb_io s -e vm01 write:1048576:$K:21 read:1048576:$K:21 || tb_fail "vm01 session 1"
tb_wait_idle "$state" vm01
tb_io s -e vm01 read:1048576:$K:21 read:0:4096:1 write:$((3 * 1048576)):4096:22 ||
  tb_fail "vm01 session 2 must see session 1's data"
tb_wait_idle "$state" vm01
[ ! -d "$state/clients/vm01/sessions" ] || [ -z "$(ls "$state/clients/vm01/sessions")" ] ||
  tb_fail "persist must not rotate overlays: $(ls "$state/clients/vm01/sessions")"
tb_json "$state/clients/vm01/session.json" ".session == 2 and .dirty_bytes == $((K + 4096))" \
  "vm01 after two sessions"
tb_stop s
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 read:1048576:$K:21 read:$((3 * 1048576)):4096:22 read:0:4096:1 ||
  tb_fail "persist data lost over an nbdkit restart"
tb_wait_idle "$state" vm01

echo "== persist: flushed data survives kill -9 during a session"
tb_hold s w -e vm01 write:$((2 * 1048576)):$K:23 flush
tb_kill9 s
tb_release w 2>/dev/null || true
tb_start s "$TB_TMP/tabula.json"
tb_io s -e vm01 read:$((2 * 1048576)):$K:23 read:1048576:$K:21 ||
  tb_fail "flushed data lost after kill -9"
tb_wait_idle "$state" vm01
tb_stop s
tb_check_logs
