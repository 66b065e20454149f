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

faketime_so=
for f in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/*/faketime/libfaketime.so.1; do
  [ -f "$f" ] && faketime_so=$f && break
done
[ -n "$faketime_so" ] || tb_skip "libfaketime is not installed (Debian's faketime package)"

state=$TB_TMP/state
mkdir -p "$state"
# nbdkit runs without the fake clock (see daemon-clock.sh) and fails at once
# while $TB_TMP/nbdkit-fail exists.
cat >"$TB_TMP/nbdkit" <<EOF
#!/bin/sh
[ -e "$TB_TMP/nbdkit-fail" ] && exit 1
unset LD_PRELOAD FAKETIME_TIMESTAMP_FILE FAKETIME_NO_CACHE FAKETIME_DONT_FAKE_MONOTONIC
exec "$TB_NBDKIT" "\$@"
EOF
chmod +x "$TB_TMP/nbdkit"
TB_NBDKIT=$TB_TMP/nbdkit
td_config "$TB_TMP/tabula.json" "$state" '{}'
TD_CONF=$TB_TMP/tabula.json
clock=$TB_TMP/faketime.rc
echo "+0" >"$clock"
env LD_PRELOAD="$faketime_so" FAKETIME_TIMESTAMP_FILE="$clock" FAKETIME_NO_CACHE=1 \
  FAKETIME_DONT_FAKE_MONOTONIC=1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
  "$TD_DAEMON" -c "$TD_CONF" >>"$TB_TMP/daemon.log" 2>&1 &
echo $! >"$TB_TMP/daemon.bgpid"
i=0
until [ -S "$state/control.sock" ] && tctl status >/dev/null 2>&1; do
  kill -0 "$(td_pid)" 2>/dev/null || tb_fail "tabula-restored exited: $(tail -n 20 "$TB_TMP/daemon.log")"
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "tabula-restored did not answer within 30 s"
  sleep 0.1
done
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
