#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# kill -9 of the daemon while real guests are between sessions: nothing is
# lost.  vm01 (persist) keeps its files; a rollback asked for vm02 (persist)
# before the kill is still applied at its next session; pc01 (rollback)
# boots the master; sessions started after the restart are recorded like
# the ones before, every session-start has its session-end, and the event
# log stays valid JSON lines.  Twice: once right after the sessions ended,
# once after the appliance served a further round.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/guest-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/srv"
echo "the master's motd" >"$T/root/etc/motd"
echo "master data" >"$T/root/srv/data.txt"
tg_appliance "$T/root" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "vm02": { "image": "demo", "policy": "persist" },
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 2 }
  }'

# events_consistent: every line parses, and each client has as many
# session-end events as session-start events.
events_consistent()
{
  jq -e . "$state/events.jsonl" >/dev/null 2>&1 || tb_fail "events.jsonl is not valid JSON lines"
  for id in vm01 vm02 pc01; do
    s=$(tb_count_events session-start $id "$state")
    e=$(tb_count_events session-end $id "$state")
    [ "$s" = "$e" ] && [ "$s" = "$1" ] ||
      tb_fail "$id: $s session-start and $e session-end events, $1 of each expected"
  done
}

echo "== session 1 of three guests"
tg_boot vm01 "$sock" vm01 write:/srv/data.txt:vm01-data,random:/srv/vm01.bin:1200,rm:/etc/motd,list
tg_boot vm02 "$sock" vm02 write:/srv/data.txt:vm02-data,list
tg_boot pc01 "$sock" pc01 write:/srv/data.txt:pc01-data,random:/srv/pc01.bin:400,list
for id in vm01 vm02 pc01; do tb_wait_idle "$state" $id; done
tctl rollback vm02 >/dev/null || tb_fail "tabulactl rollback vm02"
tctl --json client vm02 | jq -e '.pending | index("rollback") != null' >/dev/null ||
  tb_fail "vm02's rollback must be pending: $(tctl --json client vm02)"
events_consistent 1

echo "== kill -9 of the daemon (and with it nbdkit), restart"
td_kill9
td_start "$T/tabula.json"
tctl --json client vm02 | jq -e '.pending | index("rollback") != null' >/dev/null ||
  tb_fail "vm02's pending rollback is lost: $(tctl --json client vm02)"

echo "== session 2: nothing lost"
tg_boot vm01-2 "$sock" vm01 list
tg_same_files "$T/vm01.files" "$T/vm01-2.files" "vm01's persisted files after kill -9"
tg_boot vm02-2 "$sock" vm02 list
tg_same_files "$T/master.files" "$T/vm02-2.files" "vm02's rollback asked before kill -9"
tg_boot pc01-2 "$sock" pc01 list,write:/srv/pc01-round2.txt:round2
tg_same_files "$T/master.files" "$T/pc01-2.files" "pc01 (rollback) after kill -9"
for id in vm01 vm02 pc01; do tb_wait_idle "$state" $id; done
events_consistent 2

echo "== kill -9 again, restart, session 3"
td_kill9
td_start "$T/tabula.json"
tg_boot vm01-3 "$sock" vm01 list
tg_same_files "$T/vm01.files" "$T/vm01-3.files" "vm01 after the second kill -9"
tg_boot pc01-3 "$sock" pc01 list
tg_same_files "$T/master.files" "$T/pc01-3.files" "pc01 after the second kill -9"
tb_wait_idle "$state" vm01
tb_wait_idle "$state" pc01
[ "$(tb_count_events session-start pc01 "$state")" = 3 ] || tb_fail "pc01: three sessions expected"
tctl --json sessions pc01 | jq -e '[.sessions[].session] | length >= 1' >/dev/null ||
  tb_fail "pc01's retained sessions: $(tctl sessions pc01)"
td_stop
tb_check_logs
echo PASS
