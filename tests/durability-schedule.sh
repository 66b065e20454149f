#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Persistent state read back is checked for plausibility: a schedule.json
# whose refresh is due in the year 3000 (a torn or corrupt file) must not hold
# the refresh back for ever; it counts from now, with a warning naming the file.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
td_config "$TB_TMP/tabula.json" "$state" \
  '{ "pc01": { "image": "demo", "policy": "persist", "refresh": "every 2s" } }'
mkdir -p "$state/clients/pc01"
cat >"$state/clients/pc01/schedule.json" <<EOF2
{ "schedule": "every 2s", "last_ms": 0, "next_ms": 32503680000000,
  "last": "", "next": "3000-01-01T00:00:00.000Z" }
EOF2
td_start "$TB_TMP/tabula.json"
i=0
until [ "$(tb_count_events refresh-scheduled pc01 "$state")" -ge 1 ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "a refresh due in the year 3000 was believed: pc01 got no refresh in 10 s"
  sleep 0.1
done
grep -q 'pc01/schedule.json' "$TB_TMP/daemon.log" ||
  tb_fail "no warning names clients/pc01/schedule.json: $(tail -n 5 "$TB_TMP/daemon.log")"
td_stop
