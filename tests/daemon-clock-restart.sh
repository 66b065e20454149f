#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit's restart backoff follows the monotonic clock, not the wall clock
# (issue 17 §5): the daemon runs under libfaketime with its wall clock read
# from a file, nbdkit is made to fail until its backoff is seconds long, then
# the wall clock steps back one hour and nbdkit may start again.  It must be
# running again within the bound of td_wait (30 s; the backoff is 2-4 s).
# With the backoff on the wall clock the restart was due an hour later.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
mkdir -p "$state"
# nbdkit fails at once while $TB_TMP/nbdkit-fail exists.
td_faketime_nbdkit "[ -e \"$TB_TMP/nbdkit-fail\" ] && exit 1"
td_config "$TB_TMP/tabula.json" "$state" '{}'
clock=$TB_TMP/faketime.rc
echo "+0" >"$clock"
td_start_faketime "$TB_TMP/tabula.json" FAKETIME_TIMESTAMP_FILE="$clock" FAKETIME_NO_CACHE=1
td_wait '.nbdkit.state == "running"' "nbdkit must be running"

# nbdkit fails until its backoff is 2 s or more (0.5, 1, 2 s after each failure).
touch "$TB_TMP/nbdkit-fail"
kill -9 "$(td_nbdkit_pid)"
td_wait '.nbdkit.state == "restarting" and .nbdkit.restart_in_ms >= 1500' \
  "nbdkit must be waiting out a backoff of 2 s or more"
echo "backoff: $(tctl --json status | jq -c '.nbdkit | {restarts, restart_in_ms}')"

# The wall clock steps back an hour while the restart is pending.
echo "-3600" >"$clock"
rm -f "$TB_TMP/nbdkit-fail"
td_wait '.daemon.uptime_s < -1800' "the daemon's wall clock must have stepped back"
tctl --json status | jq -c '.nbdkit | {state, restarts, restart_in_ms}'
td_wait '.nbdkit.state == "running"' "nbdkit must restart after its backoff, whatever the wall clock"
grep -c "restarting in" "$TB_TMP/daemon.log" || true
td_stop
