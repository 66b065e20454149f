#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Crash test: kill -9 nbdkit again and again while tests/plugin-crash writes
# stamped 4 KiB records over two connections (16 in flight, some FUA) and
# flushes.  After every restart each record must read as old or new content,
# never anything else, and every write acknowledged before a completed flush,
# or with FUA, must be there.  Persist policy, so the overlay carries over.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

cycles=${TB_CRASH_CYCLES:-10}
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((16 * 1024 * 1024)) 0 0
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
crash="$abs_builddir/plugin-crash -s $TB_TMP/s.sock -e vm01 -f $TB_TMP/crash.state"

i=1
while [ $i -le $cycles ]; do
  tb_start s "$TB_TMP/tabula.json"
  # Gone before the writer starts: the wait below must not see the last
  # cycle's "verified" in the instant before the new writer truncates it
  # (then the kill lands in the verification, not in the writing).
  rm -f "$TB_TMP/run.out"
  $crash >"$TB_TMP/run.out" 2>&1 &
  wpid=$!
  # Let it verify the previous run, then crash nbdkit at a random moment of the writing.
  n=0
  until grep -q '^verified' "$TB_TMP/run.out" 2>/dev/null || ! kill -0 $wpid 2>/dev/null; do
    n=$((n + 1))
    [ $n -lt 600 ] || tb_fail "plugin-crash did not verify within 60 s"
    sleep 0.1
  done
  sleep "0.$(($(od -An -N2 -tu2 /dev/urandom) % 9 + 1))"
  tb_kill9 s
  st=0
  wait $wpid || st=$?
  cat "$TB_TMP/run.out"
  case $st in
  0 | 3) ;;
  *) tb_fail "crash cycle $i: plugin-crash exited $st" ;;
  esac
  grep -q 'writes and' "$TB_TMP/run.out" || tb_fail "crash cycle $i: no writes were done"
  i=$((i + 1))
done

echo "== final check after $cycles crashes, then after a clean restart"
tb_start s "$TB_TMP/tabula.json"
$crash --verify-only || tb_fail "records wrong after the last crash"
tb_stop s
tb_start s "$TB_TMP/tabula.json"
$crash --verify-only || tb_fail "records wrong after a clean restart"
tb_stop s
tb_check_logs
