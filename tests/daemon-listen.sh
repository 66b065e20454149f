#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# One nbdkit serves both listeners, on sockets the daemon binds and hands over
# (socket activation), so:
#  - a client connected over TCP and the same client over the unix socket are
#    one session of one overlay (a second nbdkit would refuse the second
#    connection, or worse, serve a second session of the same overlay);
#  - after kill -9 of nbdkit the daemon restarts it on the same addresses and
#    both listeners serve again, with every FUA write kept;
#  - a TCP port already taken stops the daemon at start with an error that
#    names listen.tcp.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

M=$((4 * 1024 * 1024))
state=$TB_TMP/state
port=$(tb_free_port)
tb_make_file "$TB_TMP/v1.img" $M 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc01": { "image": "demo", "policy": "persist", "allow": ["unix", "127.0.0.1/32"] }
  }' "\"listen\": { \"unix\": \"$TB_TMP/nbd.sock\", \"tcp\": \"127.0.0.1:$port\" }"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"

# hold NAME ARGS...: plugin-io ARGS... hold, in the background until unhold NAME.
hold()
{
  _name=$1
  shift
  rm -f "$TB_TMP/$_name.fifo"
  mkfifo "$TB_TMP/$_name.fifo"
  rm -f "$TB_TMP/$_name.out" # the wait below must not see an earlier holder's line
  "$TB_IO" "$@" hold <"$TB_TMP/$_name.fifo" >"$TB_TMP/$_name.out" 2>&1 &
  echo $! >"$TB_TMP/$_name.bgpid"
  exec 7>"$TB_TMP/$_name.fifo"
  _i=0
  until grep -q holding "$TB_TMP/$_name.out" 2>/dev/null; do
    kill -0 "$(cat "$TB_TMP/$_name.bgpid")" 2>/dev/null || tb_fail "$_name: $(cat "$TB_TMP/$_name.out")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$_name did not connect"
    sleep 0.1
  done
}
unhold()
{
  exec 7>&-
  wait "$(cat "$TB_TMP/$1.bgpid")" || tb_fail "$1 failed: $(cat "$TB_TMP/$1.out")"
}

echo "== one nbdkit for both listeners"
daemon_children=$(pgrep -P "$(td_pid)" | wc -l)
[ "$daemon_children" = 1 ] || tb_fail "expected one nbdkit, the daemon has $daemon_children children"
tctl status | grep -q "tcp 127.0.0.1:$port" || tb_fail "status must show the TCP listener: $(tctl status)"

echo "== a client over TCP and over unix at once: one session"
hold tcp -t "127.0.0.1:$port" -e pc01 fua:0:65536:7
"$TB_IO" -s "$TB_TMP/nbd.sock" -e pc01 read:0:65536:7 fua:65536:65536:8 ||
  tb_fail "the unix connection must join the TCP client's session and see its write"
unhold tcp
tb_wait_idle "$state" pc01
tb_json "$state/clients/pc01/session.json" '.session == 1' "both connections were one session"
[ "$(tb_count_events session-start pc01 "$state")" = 1 ] || tb_fail "one session-start expected"

echo "== kill -9 of nbdkit: restarted on the same addresses, nothing acknowledged lost"
old=$(td_nbdkit_pid)
kill -9 "$old"
td_wait ".nbdkit.state == \"running\" and .nbdkit.pid != $old" "nbdkit must be restarted"
"$TB_IO" -t "127.0.0.1:$port" -e pc01 read:0:65536:7 read:65536:65536:8 ||
  tb_fail "TCP must serve again after the restart, with the FUA writes"
tb_wait_idle "$state" pc01
"$TB_IO" -s "$TB_TMP/nbd.sock" -e pc01 read:0:65536:7 || tb_fail "unix must serve again"
tb_event "$state" '.type == "nbdkit-restart"' "the restart must be an event"

echo "== kill -9 of the daemon, started again at once: the same addresses serve"
td_kill9
td_start "$conf"
"$TB_IO" -t "127.0.0.1:$port" -e pc01 read:0:65536:7 || tb_fail "TCP after a restart of the daemon"
tb_wait_idle "$state" pc01
"$TB_IO" -s "$TB_TMP/nbd.sock" -e pc01 read:0:65536:7 || tb_fail "unix after a restart of the daemon"
tb_wait_idle "$state" pc01

echo "== SIGTERM: the daemon removes its unix socket"
td_stop
[ ! -e "$TB_TMP/nbd.sock" ] || tb_fail "the unix socket must be removed at exit"

echo "== a TCP port in use: a clear error at start"
python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); print("up", flush=True); time.sleep(60)' \
  "$port" >"$TB_TMP/squat.out" 2>&1 &
squat=$!
i=0
until grep -q up "$TB_TMP/squat.out"; do i=$((i + 1)); [ $i -lt 100 ] || tb_fail "squatter"; sleep 0.1; done
st=0
timeout 30 "$TD_DAEMON" -c "$conf" >"$TB_TMP/out" 2>&1 || st=$?
kill $squat 2>/dev/null || true
[ $st -ne 0 ] && [ $st -ne 124 ] || tb_fail "the daemon must exit with an error, got $st: $(cat "$TB_TMP/out")"
grep -q "listen.tcp" "$TB_TMP/out" || tb_fail "the error must name listen.tcp: $(cat "$TB_TMP/out")"
[ ! -e "$TB_TMP/nbd.sock" ] || tb_fail "a failed start must not leave the unix socket behind"

echo "== a unix socket another server answers on: a clear error, the socket left alone"
rm -f "$TB_TMP/squat.out" # the wait below must not see the last squatter's "up"
python3 -c 'import socket,sys,time
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); print("up", flush=True); time.sleep(60)' \
  "$TB_TMP/nbd.sock" >"$TB_TMP/squat.out" 2>&1 &
squat=$!
i=0
until grep -q up "$TB_TMP/squat.out" 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || tb_fail "squatter"; sleep 0.1; done
st=0
timeout 30 "$TD_DAEMON" -c "$conf" >"$TB_TMP/out" 2>&1 || st=$?
[ $st -ne 0 ] && [ $st -ne 124 ] || tb_fail "the daemon must exit with an error, got $st: $(cat "$TB_TMP/out")"
grep -q "listen.unix" "$TB_TMP/out" || tb_fail "the error must name listen.unix: $(cat "$TB_TMP/out")"
[ -S "$TB_TMP/nbd.sock" ] || tb_fail "another server's socket must not be removed"
kill $squat 2>/dev/null || true
echo "OK"
