#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A merge moves its client onto the new version (restored/jobs.c move_client:
# re-pin, keep the merged overlay as a restore point, new empty overlay) as
# one recoverable step.  The daemon is killed (SIGKILL, TABULA_DEBUG_KILL_MOVE)
# after each step of the move; after its restart the pinned persist client
# boots its merged data on the new version, pinned to it, the merged overlay
# kept as a retained session.  And if the client boots before the daemon
# comes back (nbdkit alone), the move is abandoned: it boots its merged
# overlay as it was, and the restore point shares nothing with it.
# Without the journal (overlay.next) a kill after the retire booted an empty
# overlay on the old version, and a kill before the re-pin lost the pin.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

K=65536
state=$TB_TMP/state
pc=$state/clients/vm01
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "vm01": { "image": "demo", "policy": "persist", "keep_sessions": 9 } }'
sock=$state/nbd.sock
io() { "$TB_IO" -s "$sock" -e vm01 "$@"; }
base_version() { tctl --json client vm01 | jq -r .version; }

td_start "$conf"
tctl pin vm01 1 >/dev/null || tb_fail "pin"
td_stop

# merged STEP PATTERN: vm01 holds PATTERN; merge it with a kill after STEP.
merged()
{
  TABULA_DEBUG_KILL_MOVE=$1 td_start "$conf"
  io write:0:$K:$2 flush >/dev/null || tb_fail "step $1: vm01 could not write"
  tb_wait_idle "$state" vm01
  nbdkit_pid=$(td_nbdkit_pid)
  tctl merge vm01 --into demo >"$TB_TMP/merge.out" 2>&1 || true
  _i=0
  while kill -0 "$(td_pid)" 2>/dev/null; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "step $1: the daemon was not killed in move_client: $(cat "$TB_TMP/merge.out")"
    sleep 0.1
  done
  wait "$(td_pid)" 2>/dev/null || true
  rm -f "$TB_TMP/daemon.bgpid"
  grep -q "TABULA_DEBUG_KILL_MOVE=$1: killed" "$TB_TMP/daemon.log" ||
    tb_fail "step $1: the daemon died elsewhere: $(tail -n 5 "$TB_TMP/daemon.log")"
  kill "$nbdkit_pid" 2>/dev/null || true
  _i=0
  while kill -0 "$nbdkit_pid" 2>/dev/null && [ $_i -lt 100 ]; do _i=$((_i + 1)); sleep 0.1; done
}

v=1
for step in 0 1 2 3; do
  pat=$((20 + step))
  merged $step $pat
  v=$((v + 1))
  [ -f "$state/images/demo/$v.json" ] || tb_fail "step $step: demo@$v was not published"
  td_start "$conf"
  io read:0:$K:$pat rewrite:$K:4096 flush ||
    tb_fail "step $step: after the restart vm01 does not boot its merged data ($pat)"
  tb_wait_idle "$state" vm01
  [ "$(base_version)" = $v ] || tb_fail "step $step: vm01 runs on demo@$(base_version), not the merged demo@$v"
  tctl --json client vm01 | jq -e ".pinned == true and .next_version == $v" >/dev/null ||
    tb_fail "step $step: the re-pin to demo@$v is lost: $(tctl --json client vm01)"
  [ ! -e "$pc/overlay.next" ] || tb_fail "step $step: overlay.next is left"
  n=$(tctl --json sessions vm01 | jq '[.sessions[] | select(.version == '$((v - 1))')] | length')
  [ "$n" -ge 1 ] || tb_fail "step $step: the merged overlay is not a retained session: $(tctl sessions vm01)"
  td_stop
done

echo "== the client boots before the daemon is back: the move is abandoned"
merged 2 31
v=$((v + 1))
[ -e "$pc/overlay.next" ] || tb_fail "no overlay.next after a kill at step 2"
tb_config "$TB_TMP/plain.json" "$state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
tb_start s "$TB_TMP/plain.json"
tb_io s -e vm01 read:0:$K:31 write:$K:$K:32 flush || tb_fail "vm01 must boot its merged overlay as it was"
tb_wait_idle "$state" vm01
tb_stop s
[ ! -e "$pc/overlay.next" ] || tb_fail "the session did not abandon overlay.next"
[ "$(stat -c %h "$pc/overlay")" = 1 ] || tb_fail "the live overlay still shares its inode with a restore point"
tb_assert_log s 'overlay.next' "the abandoned move must be named"
td_start "$conf"
io read:0:$K:31 read:$K:$K:32 || tb_fail "vm01 lost its data after the abandoned move"
td_stop
tb_check_logs
