#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# What a power cut can leave at the end of events.jsonl: a run of NULs (the
# file's size reached the disk, its last appends did not).  The daemon appends
# after it at the next start; `tabulactl events --last` must still show the
# newest events (it split the tail at the first NUL and showed none of them).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
td_config "$TB_TMP/tabula.json" "$state" '{ "vm01": { "image": "demo" } }'
td_start "$TB_TMP/tabula.json"
td_stop
head -c 20000 /dev/zero >>"$state/events.jsonl"
td_start "$TB_TMP/tabula.json"
pid=$(td_pid)
tctl --json events --last 5 >"$TB_TMP/events.json" || tb_fail "tabulactl events failed"
jq -e -s --argjson pid "$pid" '[.[] | select(.type == "daemon-start" and .pid == $pid)] | length == 1' \
  "$TB_TMP/events.json" >/dev/null ||
  tb_fail "the newest daemon-start (pid $pid) is hidden behind the NUL run: $(head -c 600 "$TB_TMP/events.json")"
td_stop
