#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under the plugin (tests/powercut.c below the state directory).
# A persist client's first session creates clients/vm01 and its overlay, then
# tests/plugin-crash writes stamped records over two connections (16 in
# flight, some FUA) and flushes.  The cut comes at the Nth sync call of that
# run (every N up to the number of cuts, then random ones), in the default
# mode (a create may be durable before its data, as on ext4) and in --strict
# mode (an entry is durable only once its directory is fsynced, as on ext2).
# After each cut: the overlay opens, every record reads as old or new
# content, and every write acknowledged before a completed flush or with FUA
# is there.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
pc_init
cuts=$(pc_cuts 14)

tb_make_file "$TB_TMP/master.img" $((8 * 1024 * 1024)) 0 0
tb_import "$PC_STATE/disk/state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$PC_MNT/state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
pc_snapshot
crash="$abs_builddir/plugin-crash -s $TB_TMP/s.sock -e vm01 -f $TB_TMP/crash.state -o 400"

reset_disk()
{
  rm -rf "$TB_TMP/crash.state"
  pc_restore
}

# one_run [powercut args]: a session of writes and flushes, cut or not.
one_run()
{
  pc_mount "$@"
  tb_start s "$TB_TMP/tabula.json"
  st=0
  $crash -S 7 >"$TB_TMP/run.out" 2>&1 || st=$?
  case $st in
  0 | 2 | 3) ;; # 2: the cut came before the export opened
  *) cat "$TB_TMP/run.out" >&2; tb_fail "plugin-crash exited $st" ;;
  esac
}

# after_cut WHAT: the reboot; the client's disk must hold what was promised.
after_cut()
{
  pc_mount "$@"
  tb_start s "$TB_TMP/tabula.json"
  $crash --verify-only >"$TB_TMP/verify.out" 2>&1 || {
    cat "$TB_TMP/verify.out" "$TB_TMP/s.log" >&2
    tb_fail "$WHAT: after the cut: $(grep -m1 'plugin-crash:\|error' "$TB_TMP/verify.out" "$TB_TMP/s.log")"
  }
  tb_stop s
  pc_cut
}

for mode in default strict; do
  flag=
  [ $mode = strict ] && flag=--strict
  reset_disk
  one_run $flag # no cut: how many sync calls a run makes
  tb_stop s
  pc_cut
  total=$(wc -l <"$PC_STATE/syncs.log")
  echo "== $mode: a run makes $total sync calls; $cuts cuts"
  [ "$total" -gt 10 ] || tb_fail "only $total sync calls in a run"
  i=1
  while [ $i -le "$cuts" ]; do
    if [ $i -le $((cuts * 2 / 3)) ]; then
      at=$i
    else
      at=$(($(od -An -N2 -tu2 /dev/urandom) % total + 1))
    fi
    reset_disk
    one_run $flag --cut-at $at
    pc_cut s
    # A server whose disk vanished may trip nbdkit's own assertions (1.32:
    # raw_send_socket); only sanitizer reports from the plugin count here.
    grep -E 'AddressSanitizer|runtime error:' "$TB_TMP/s.log" &&
      tb_fail "sanitizer report in the run cut at $at"
    mv "$TB_TMP/s.log" "$TB_TMP/s-cut.txt"
    WHAT="$mode mode, cut at sync call $at ($(sed -n "${at}p" "$PC_STATE/syncs.log"))"
    after_cut $flag
    i=$((i + 1))
  done
done
tb_check_logs
