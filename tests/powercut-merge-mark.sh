#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A scheduled merge cut by a power loss runs again at the next start, not a
# whole period later, and a done one does not run twice: its turn is saved
# (clients/ID/merge-schedule.json) by the merge job once the merge is done,
# not when it is queued.  mg01 (persist, "merge": every 1h) has written
# 1 MiB; its mark says the turn is due, so the daemon's start queues the
# merge, and the power goes at the merge's next write of PATTERN: the new
# version's data (.2.img.tmp), its manifest (2.json.tmp), the move's journal
# (overlay.next); TB_POWERCUT_CUTS rounds (default 3, default mode and then
# --strict: 6).  After each cut the daemon starts and: demo@2 appears and
# verifies, the mark counts the next turn from it, mg01 boots its data, and
# (for a cut before demo@2 was published) no demo@3 follows: the turn ran
# once.  (The mark saved at the queueing made the cut merge wait an hour.)
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
tb_require jq
pc_init
cuts=$(pc_cuts 3)

M=1048576
tb_make_file "$TB_TMP/v1.img" $((8 * M)) 1
prep=$PC_STATE/disk/state
st=$PC_MNT/state
tb_import "$prep" demo "$TB_TMP/v1.img"
td_config "$TB_TMP/prep.json" "$prep" '{ "mg01": { "image": "demo", "policy": "persist" } }'
td_config "$TB_TMP/tabula.json" "$st" \
  '{ "mg01": { "image": "demo", "policy": "persist", "merge": { "into": "demo", "when": "every 1h" } } }'
td_start "$TB_TMP/prep.json"
"$TB_IO" -s "$prep/nbd.sock" -e mg01 write:0:$M:7 flush || tb_fail "mg01's session"
tb_wait_idle "$prep" mg01
td_stop
now=$(($(date +%s) * 1000))
printf '{ "schedule": "every 1h", "last_ms": %d, "next_ms": %d }\n' $((now - 3600000)) $((now - 1000)) \
  >"$prep/clients/mg01/merge-schedule.json"
pc_snapshot

# Wait until the simulator died (the armed cut), at most $1 seconds.
wait_cut()
{
  _pid=$(cat "$TB_TMP/powercut.bgpid")
  _i=0
  while [ $_i -lt $(($1 * 10)) ] &&
    _st=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$_pid/status" 2>/dev/null) &&
    [ -n "$_st" ] && [ "$_st" != Z ]; do
    _i=$((_i + 1))
    sleep 0.1
  done
}

for flag in "" --strict; do
  i=1
  while [ $i -le "$cuts" ]; do
    case $((i % 3)) in
    1) pat=.2.img.tmp ;;
    2) pat=2.json.tmp ;;
    0) pat=overlay.next ;;
    esac
    WHAT="round $i${flag:+ ($flag)}, cut at the merge's write of $pat"
    pc_restore
    pc_mount $flag
    pc_arm "$pat" 0
    pc_daemon_start_loose
    wait_cut 60
    pc_daemon_cut
    mv "$TB_TMP/daemon.log" "$TB_TMP/daemon-cut.txt"
    grep -q "$pat" "$PC_STATE/syncs.log" || tb_fail "$WHAT: the merge made no such sync call: $(tail -n 5 "$PC_STATE/syncs.log")"
    pc_mount $flag
    pc_daemon_start
    _i=0
    until [ -f "$st/images/demo/2.json" ] &&
      jq -e --argjson t $(($(date +%s) * 1000 + 1800000)) '.next_ms > $t' \
        "$st/clients/mg01/merge-schedule.json" >/dev/null 2>&1; do
      _i=$((_i + 1))
      [ $_i -lt 600 ] ||
        tb_fail "$WHAT: the scheduled merge did not run again after the cut: $(ls "$st/images/demo"); mark $(cat "$st/clients/mg01/merge-schedule.json")"
      sleep 0.1
    done
    [ "$(jq -r .sha256 "$st/images/demo/2.json")" = "$(tb_digest "$st/images/demo/2.img")" ] ||
      tb_fail "$WHAT: demo@2 does not verify"
    tb_wait_idle "$st" mg01
    "$TB_IO" -s "$st/nbd.sock" -e mg01 read:0:$M:7 >"$TB_TMP/io.out" 2>&1 ||
      tb_fail "$WHAT: mg01 does not boot its data: $(cat "$TB_TMP/io.out")"
    sleep 1
    # A cut after demo@2 is published and before the move's journal
    # (overlay.next) is durable leaves mg01 unmoved on demo@1 with its
    # overlay: the turn runs again and publishes the same data as demo@3
    # (README, Durability: a limit of the move, not of the mark).
    [ "$pat" = overlay.next ] || [ ! -f "$st/images/demo/3.json" ] ||
      tb_fail "$WHAT: the turn ran twice (demo@3)"
    td_stop
    pc_daemon_cut
    i=$((i + 1))
  done
  echo "== ${flag:-default}: $cuts cuts inside the scheduled merge"
done
