#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# kill -9 of nbdkit while a restore copies the retained session: the plugin
# kills itself (TABULA_DEBUG_KILL_RESTORE=K) after the Kth extent it copied
# (the state directory is on tests/powercut, which has no reflink, so the
# copy is extent by extent).  The copy is built as overlay.restore and renamed
# into place once durable, so a kill leaves no partial overlay.  After each kill the next boot reads
# the restored session whole, every retained session reads as one of the
# sessions written (the in-place copy left a partial overlay that the next
# turn retired as a restore point which served zeros), and overlay.restore
# is gone after that turn.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
pc_init

M=1048576
tb_make_file "$TB_TMP/master.img" $((64 * M)) 1
prep=$PC_STATE/disk/state
tb_import "$prep" demo "$TB_TMP/master.img"
clients='{ "vm01": { "image": "demo", "policy": "persist", "keep_sessions": 9 } }'
tb_config "$TB_TMP/prep.json" "$prep" "$clients"
tb_config "$TB_TMP/tabula.json" "$PC_MNT/state" "$clients"
tb_start p "$TB_TMP/prep.json"
tb_io p -e vm01 write:0:$M:11 fill:$((8 * M)):$((48 * M)):$M:13 flush >/dev/null ||
  tb_fail "session 1"
tb_wait_idle "$prep" vm01
printf '{ "rollback": true }\n' >"$prep/clients/vm01/mailbox.json"
tb_io p -e vm01 read:0:$M:1 write:0:$M:22 flush || tb_fail "session 2"
tb_wait_idle "$prep" vm01
tb_stop p
printf '{ "restore": 1 }\n' >"$prep/clients/vm01/mailbox.json"
chmod 600 "$prep/clients/vm01/mailbox.json"
pc_snapshot
d=$PC_MNT/state/clients/vm01

# session N's data: 11 and 13 for session 1, 22 and the master for session 2.
is_session1() { tb_io s -e "$1" read:0:$M:11 read:$((50 * M)):$M:13 >/dev/null 2>&1; }
is_session2() { tb_io s -e "$1" read:0:$M:22 read:$((50 * M)):$M:1 >/dev/null 2>&1; }

for k in 1 2 3; do
  pc_restore
  pc_mount
  TABULA_DEBUG_KILL_RESTORE=$k tb_start s "$TB_TMP/tabula.json"
  tb_io s -e vm01 write:$((2 * M)):4096:5 flush >"$TB_TMP/run.out" 2>&1 &&
    tb_fail "kill $k: the restoring session was not killed"
  grep -q "TABULA_DEBUG_KILL_RESTORE=$k: killed" "$TB_TMP/s.log" ||
    tb_fail "kill $k: nbdkit died elsewhere: $(tail -n 5 "$TB_TMP/s.log")"
  tb_kill9 s
  mv "$TB_TMP/s.log" "$TB_TMP/s-killed-$k.txt"
  state_after=$(ls "$d" | tr "\n" " ")
  tb_start s "$TB_TMP/tabula.json"
  tb_io s -e vm01 read:0:$M:11 read:$((8 * M)):$((48 * M)):13 rewrite:$((3 * M)):4096 flush \
    >"$TB_TMP/verify.out" 2>&1 ||
    tb_fail "kill $k (left: $state_after): the next boot does not read restored session 1: $(cat "$TB_TMP/verify.out")"
  tb_wait_idle "$PC_MNT/state" vm01
  [ ! -e "$d/overlay.restore" ] || tb_fail "kill $k: overlay.restore left after the turn"
  for f in "$d"/sessions/*; do
    n=${f##*/}
    is_session1 "vm01@session/$n" || is_session2 "vm01@session/$n" ||
      tb_fail "kill $k (left: $state_after): retained session $n reads as no session written (a partial copy)"
  done
  echo "kill $k: left $state_after"
  tb_stop s
  pc_cut
done
tb_check_logs
