#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# One-shot mailbox requests are applied in the order they were posted: only
# the latest of rollback, refresh and restore applies at the next turn, and
# it clears the ones it superseded.  "restore --session 1" then "rollback":
# the disk starts clean (the restore used to win and the rollback was
# dropped); "rollback" then "restore --session 1": session 1's data is back.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

K=65536
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
td_config "$TB_TMP/tabula.json" "$state" \
  '{ "vm01": { "image": "demo", "policy": "persist", "keep_sessions": 5 } }'
td_start "$TB_TMP/tabula.json"
sock=$state/nbd.sock
io() { "$TB_IO" -s "$sock" -e vm01 "$@"; }
pending() { tctl --json client vm01 | jq -c .pending; }

io write:0:$K:11 flush || tb_fail "session 1"
tb_wait_idle "$state" vm01
tctl rollback vm01 >/dev/null || tb_fail "rollback"
io read:0:$K:1 write:0:$K:22 flush || tb_fail "session 2 must start clean and write"
tb_wait_idle "$state" vm01
[ -f "$state/clients/vm01/sessions/1" ] || tb_fail "session 1 is not retained"

echo "== restore, then rollback: the rollback wins"
tctl restore vm01 --session 1 >/dev/null || tb_fail "restore"
tctl rollback vm01 >/dev/null || tb_fail "rollback after restore"
io read:0:$K:1 write:0:$K:33 flush ||
  tb_fail "restore then rollback: the disk must start clean (the later rollback wins)"
tb_wait_idle "$state" vm01
[ "$(pending)" = "[]" ] || tb_fail "the superseded restore is still pending: $(pending)"

echo "== rollback, then restore: the restore wins"
tctl rollback vm01 >/dev/null || tb_fail "rollback"
tctl restore vm01 --session 1 >/dev/null || tb_fail "restore after rollback"
io read:0:$K:11 rewrite:0:4096 flush ||
  tb_fail "rollback then restore: the disk must be session 1's (the later restore wins)"
tb_wait_idle "$state" vm01
[ "$(pending)" = "[]" ] || tb_fail "the superseded rollback is still pending: $(pending)"

echo "== a request posted again after another one is the latest"
tctl rollback vm01 >/dev/null && tctl restore vm01 --session 1 >/dev/null &&
  tctl rollback vm01 >/dev/null || tb_fail "rollback, restore, rollback"
io read:0:$K:1 rewrite:0:4096 flush ||
  tb_fail "rollback, restore, rollback: the disk must start clean"
tb_wait_idle "$state" vm01
[ "$(pending)" = "[]" ] || tb_fail "requests left pending: $(pending)"
td_stop
tb_check_logs
