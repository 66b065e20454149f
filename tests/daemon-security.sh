#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The daemon against careless setups and hostile local peers (issue 14):
#  - item 11: a configuration readable by others (it may hold secrets) is
#    warned about at start, with the chmod that fixes it;
#  - item 13: 70 idle control connections do not lock the administrator
#    out: tabulactl still gets in (the one idle the longest is dropped);
#  - item 6: `tabulactl events --follow` loses nothing across an external
#    logrotate of events.jsonl, by copytruncate and by rename.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require python3 jq

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }'
chmod 644 "$conf"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
ctl=$state/control.sock

echo "== a configuration others can read is warned about"
grep -q "configuration $conf is readable by other users.*chmod 600 $conf" "$TB_TMP/daemon.log" ||
  tb_fail "no warning about the 0644 configuration: $(cat "$TB_TMP/daemon.log")"

echo "== 70 idle control connections, then tabulactl"
python3 - "$ctl" "$TB_TMP/held" <<'PY' &
import socket, sys, time
conns = []
for i in range(70):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    conns.append(s)
open(sys.argv[2], "w").write("%d\n" % len(conns))
time.sleep(60)
PY
echo $! >"$TB_TMP/held.bgpid"
i=0
until [ -s "$TB_TMP/held" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the idle connections were not opened"
  sleep 0.1
done
sleep 0.5 # the daemon accepts them all
tctl status >"$TB_TMP/out" 2>&1 || tb_fail "tabulactl was locked out: $(cat "$TB_TMP/out")"
tctl clients >"$TB_TMP/out" 2>&1 || tb_fail "tabulactl was locked out: $(cat "$TB_TMP/out")"
kill "$(cat "$TB_TMP/held.bgpid")" 2>/dev/null || true
wait "$(cat "$TB_TMP/held.bgpid")" 2>/dev/null || true

echo "== events --follow across logrotate (copytruncate, then rename)"
tctl --json events --follow --last 0 >"$TB_TMP/followed" 2>"$TB_TMP/follow.err" &
echo $! >"$TB_TMP/follow.bgpid"
sleep 1
J=$state/events.jsonl
emit()
{
  printf '{"time":"x","ts":0,"type":"test-line","n":%d}\n' "$1" >>"$J"
}
n=0
while [ $n -lt 300 ]; do
  emit $n
  n=$((n + 1))
  case $n in
  100) # logrotate copytruncate
    sleep 0.5
    cp "$J" "$J.1" && : >"$J"
    sleep 0.5 ;;
  200) # logrotate's default: rename, a new file appears at the next write
    sleep 0.5
    mv "$J" "$J.1"
    sleep 0.5 ;;
  esac
  [ $((n % 20)) -ne 0 ] || sleep 0.1
done
i=0
until [ "$(jq -r 'select(.type == "test-line") | .n' "$TB_TMP/followed" 2>/dev/null | sort -un | wc -l)" -ge 300 ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "events --follow got $(jq -r 'select(.type == "test-line") | .n' \
    "$TB_TMP/followed" | sort -un | wc -l) of 300 lines across logrotate"
  sleep 0.1
done
kill "$(cat "$TB_TMP/follow.bgpid")" 2>/dev/null || true
wait "$(cat "$TB_TMP/follow.bgpid")" 2>/dev/null || true

td_stop
tb_check_logs
exit 0
