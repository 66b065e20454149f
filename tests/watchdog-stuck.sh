#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A guest that makes the watchdog's inspection hang: pc01's session rewires a
# file of its ext3 so that libtsk computes for an hour mapping it (a
# double-indirect block pointing at itself, size and times unchanged, so the
# diff must look at its blocks).  The session-end scan gives up at its
# deadline (scan_timeout) with one "watchdog-stuck" event; while the abandoned
# work runs, pc01's interval scans are skipped (no new error every interval),
# and pc02's file rules still fire.  Without the skip every interval scan of
# pc01 would leave another thread computing.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"
tb_require debugfs mke2fs

T=$TB_TMP
state=$T/state
mkdir -p "$T/src/apps"
echo "tool" >"$T/src/apps/tool.txt"
truncate -s 4000000000 "$T/src/big.dat" # sparse: no block in the master
truncate -s 16M "$T/master.img"
mke2fs -q -F -t ext3 -b 4096 -d "$T/src" "$T/master.img"
tb_import "$state" demo "$T/master.img"
td_config "$T/tabula.json" "$state" '{
  "pc01": { "image": "demo", "policy": "persist" },
  "pc02": { "image": "demo", "policy": "persist" }
}'
# The same watchdog for both, at the top level.
jq '.watchdog = { "interval": "1s", "scan_timeout": "200ms", "rules": [
      { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "alert" } ] }' \
  "$T/tabula.json" >"$T/t.json" && mv "$T/t.json" "$T/tabula.json"
td_start "$T/tabula.json"

echo "== pc01 damages big.dat and creates an .exe"
echo "MZ" >"$T/a.exe"
tw_disk "$state" pc01
tb_ext3_selfmap "$T/nf/disk" /big.dat
debugfs -w -R "write $T/a.exe apps/a.exe" "$T/nf/disk" >/dev/null 2>&1
sync
tw_undisk "$state" pc01
tw_wait "$state" '.type == "watchdog-stuck" and .client == "pc01"' "pc01's stuck scan"

echo "== pc01's next session: its interval scans are skipped"
errors0=$(tw_count "$state" '(.type == "watchdog-error" or .type == "watchdog-scan") and .client == "pc01"')
tw_disk "$state" pc01
sleep 8 # eight intervals; an unskipped scan would give up after 24 x 200 ms
tw_undisk "$state" pc01
[ "$(tw_count "$state" '.type == "watchdog-stuck" and .client == "pc01"')" = 1 ] ||
  tb_fail "pc01 got stuck again: $(grep watchdog-stuck "$state/events.jsonl")"
errors1=$(tw_count "$state" '(.type == "watchdog-error" or .type == "watchdog-scan") and .client == "pc01"')
[ "$errors1" = "$errors0" ] ||
  tb_fail "pc01 was scanned again while its last scan still runs: $(grep '"pc01"' "$state/events.jsonl" | grep watchdog | tail -3)"
grep -q "client pc01: skipping a scan" "$T/daemon.log" || tb_fail "no skipped scan in the daemon's log"

echo "== pc02 is still watched"
tw_session "$state" pc02 "write $T/a.exe apps/b.exe"
tw_wait "$state" '.type == "watchdog-rule" and .client == "pc02" and .rule == "exe" and
  .path == "whole-ext3/apps/b.exe"' "pc02's exe rule"
tctl status >/dev/null || tb_fail "tabulactl status failed while a scan is stuck"
exit 0
