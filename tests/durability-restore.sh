#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A restore (mailbox "restore": N, applied at the next turn) under power cuts:
# restore_session builds the copy as overlay.restore, fsyncs it and renames it
# into place, and only then is the request cleared.  The cut comes at every
# sync call of the restoring session's run (TB_POWERCUT_CUTS: that many, the
# ones past every call at random), default and --strict.  After each cut the next boot reads the restored session's data
# (the restore happened, or is still pending and happens now), every retained
# session reads as one of the sessions written (never a partial copy, which
# served zeros), and no overlay.restore is left after that turn.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
pc_init

M=1048576
tb_make_file "$TB_TMP/master.img" $((8 * M)) 1
prep=$PC_STATE/disk/state
tb_import "$prep" demo "$TB_TMP/master.img"
clients='{ "vm01": { "image": "demo", "policy": "persist", "keep_sessions": 9 } }'
tb_config "$TB_TMP/prep.json" "$prep" "$clients"
tb_config "$TB_TMP/tabula.json" "$PC_MNT/state" "$clients"
# Sessions 1 (11) and 2 (22), then "restore session 1" pending; made without
# the simulator.
tb_start p "$TB_TMP/prep.json"
tb_io p -e vm01 write:0:$M:11 write:$((4 * M)):$((2 * M)):12 flush || tb_fail "session 1"
tb_wait_idle "$prep" vm01
printf '{ "rollback": true }\n' >"$prep/clients/vm01/mailbox.json"
tb_io p -e vm01 read:0:$M:1 write:0:$M:22 flush || tb_fail "session 2"
tb_wait_idle "$prep" vm01
tb_stop p
printf '{ "restore": 1 }\n' >"$prep/clients/vm01/mailbox.json"
chmod 600 "$prep/clients/vm01/mailbox.json"
pc_snapshot

reset_disk()
{
  pc_restore
}

# the restoring session: its turn restores session 1, then it writes.
one_run()
{
  pc_mount "$@"
  tb_start s "$TB_TMP/tabula.json"
  tb_io s -e vm01 write:$((2 * M)):4096:5 flush >"$TB_TMP/run.out" 2>&1 || true
}

after_cut()
{
  pc_mount "$@"
  tb_start s "$TB_TMP/tabula.json"
  tb_io s -e vm01 read:0:$M:11 read:$((4 * M)):$((2 * M)):12 rewrite:$((3 * M)):4096 flush \
    >"$TB_TMP/verify.out" 2>&1 ||
    tb_fail "$WHAT: the next boot does not read restored session 1: $(cat "$TB_TMP/verify.out")"
  tb_wait_idle "$PC_MNT/state" vm01
  d=$PC_MNT/state/clients/vm01
  [ ! -e "$d/overlay.restore" ] || tb_fail "$WHAT: overlay.restore left after the turn"
  for f in "$d"/sessions/*; do
    n=${f##*/}
    tb_io s -e "vm01@session/$n" read:0:$M:11 read:$((4 * M)):$((2 * M)):12 >/dev/null 2>&1 ||
      tb_io s -e "vm01@session/$n" read:0:$M:22 read:$((4 * M)):$((2 * M)):1 >/dev/null 2>&1 ||
      tb_fail "$WHAT: retained session $n reads as no session written (a partial copy?)"
  done
  tb_stop s
  pc_cut
}

for mode in default strict; do
  flag=
  [ $mode = strict ] && flag=--strict
  reset_disk
  one_run $flag
  tb_stop s
  pc_cut
  total=$(wc -l <"$PC_STATE/syncs.log")
  cuts=$(pc_cuts "$total")
  echo "== $mode: a restoring run makes $total sync calls; $cuts cuts"
  [ "$total" -gt 4 ] || tb_fail "only $total sync calls in a restoring run"
  i=1
  while [ $i -le "$cuts" ]; do
    if [ $i -le "$total" ]; then
      at=$i
    else
      at=$(($(od -An -N2 -tu2 /dev/urandom) % total + 1))
    fi
    reset_disk
    one_run $flag --cut-at $at
    pc_cut s
    grep -E 'AddressSanitizer|runtime error:' "$TB_TMP/s.log" &&
      tb_fail "sanitizer report in the run cut at $at"
    mv "$TB_TMP/s.log" "$TB_TMP/s-cut.txt"
    WHAT="$mode mode, cut at sync call $at ($(sed -n "${at}p" "$PC_STATE/syncs.log"))"
    after_cut $flag
    i=$((i + 1))
  done
done
tb_check_logs
