#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A scheduled pull interrupted by a daemon kill runs again at the next start,
# not a whole period later: its turn is saved (STATE/schedules/pull-0.json)
# when the pull is done, not when it starts.  The repository here is a
# loopback server that accepts and never answers, so the pull is still
# running when the daemon is killed; the schedule is "every 1h" and its mark
# says the turn is due.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

port=$(tb_free_port)
python3 - "$port" "$TB_TMP/hang.ready" <<'PY' >"$TB_TMP/hang.log" 2>&1 &
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
open(sys.argv[2], "w").close()
s.settimeout(120)
conns = []
end = time.time() + 120
while time.time() < end:
    try:
        c, _ = s.accept()
        conns.append(c)  # read nothing, answer nothing
    except OSError:
        break
PY
echo $! >"$TB_TMP/hang.bgpid"
i=0
until [ -e "$TB_TMP/hang.ready" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the test repository server did not start: $(cat "$TB_TMP/hang.log")"
  sleep 0.1
done

state=$TB_TMP/state
url=http://127.0.0.1:$port
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
td_config "$TB_TMP/tabula.json" "$state" '{ "pc01": { "image": "demo", "policy": "rollback" } }' \
  "\"pull\": { \"from\": \"$url\", \"images\": [\"demo\"], \"when\": \"every 1h\", \"make_current\": true }"
now=$(($(date +%s) * 1000))
mkdir -p -m 700 "$state/schedules"
cat >"$state/schedules/pull-0.json" <<EOF2
{ "schedule": "every 1h from $url", "last_ms": $((now - 3600000)), "next_ms": $((now - 1000)),
  "last": "", "next": "" }
EOF2
chmod 600 "$state/schedules/pull-0.json"

count() { jq -c 'select(.type == "pull-scheduled")' "$state/events.jsonl" 2>/dev/null | wc -l; }
wait_pulls()
{
  _i=0
  until [ "$(count)" -ge "$1" ]; do
    _i=$((_i + 1))
    [ $_i -lt 150 ] || tb_fail "$2 (no pull-scheduled event $1 within 15 s): $(tail -n 3 "$TB_TMP/daemon.log")"
    sleep 0.1
  done
}
td_start "$TB_TMP/tabula.json"
wait_pulls 1 "the due pull did not start"
sleep 0.5 # the pull is connected and waiting for the repository
grep -q '"pull-scheduled-done"' "$state/events.jsonl" &&
  tb_fail "the pull ended before the kill: $(grep pull "$state/events.jsonl")"
td_kill9
td_start "$TB_TMP/tabula.json"
wait_pulls 2 "the pull a kill interrupted waits a whole period (every 1h) instead of running at the start"
td_stop
