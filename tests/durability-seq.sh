#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A corrupt clients/ID/seq (a torn write, a bit flip) is read back with a
# plausibility check: the next rollback must keep the previous overlay as a
# restore point (its header knows its session number), not delete it as if
# there had been no previous session, and the plugin warns naming the file.
# (Without lib/session.c's checked_seq, strtoull("garbage") is 0 and the
# overlay is unlinked.)  A read-only boot is no session: session 2 writes.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

K=65536
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2, "allow": ["unix"] }
  }'
tb_start s "$TB_TMP/tabula.json"
pc=$state/clients/pc01
tb_io s -e pc01 write:0:$K:11 flush || tb_fail "session 1 could not write"
tb_wait_idle "$state" pc01
printf 'garbage\000\000' >"$pc/seq"
tb_io s -e pc01 read:0:$K:1 rewrite:$K:$K flush || tb_fail "session 2 does not start from the master"
tb_wait_idle "$state" pc01
tb_stop s
[ -f "$pc/sessions/1" ] ||
  tb_fail "a corrupt seq made the rollback delete session 1's overlay (no restore point in $pc/sessions)"
tb_assert_log s 'pc01/seq' "the recovery of a corrupt seq must name the file"
[ "$(cat "$pc/seq")" = 2 ] || tb_fail "seq is '$(cat "$pc/seq")' after session 2, not 2"
# Behind the disk: seq 0 with sessions/1 retained and the overlay of session 2.
echo 0 >"$pc/seq"
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc01 rewrite:0:$K flush || tb_fail "session 3 could not write"
tb_wait_idle "$state" pc01
tb_stop s
[ -f "$pc/sessions/2" ] || tb_fail "a seq behind the disk lost session 2's overlay: $(ls "$pc/sessions")"
[ "$(cat "$pc/seq")" = 3 ] || tb_fail "seq is '$(cat "$pc/seq")' after session 3, not 3"
tb_check_logs
