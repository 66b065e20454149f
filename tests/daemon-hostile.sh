#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Bad input on the control socket gets an error reply or a closed connection,
# and the daemon keeps serving others: malformed JSON, not an object, unknown
# operation, wrong types, unknown arguments, a 10 MiB line, a client that
# never sends a newline, a client that never reads, a peer of another uid.
# Also: kill -9 of nbdkit, the daemon restarts it and clients reconnect.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((4 * 1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
ctl=$state/control.sock

# raw REQUEST-FILE: send the file's bytes and half-close, print the replies until EOF.
raw()
{
  python3 - "$ctl" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
data = open(sys.argv[2], "rb").read()
try:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
except OSError as e:
    print("send-error", e.errno)
s.settimeout(10)
buf = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            print("EOF")
            break
        buf += b
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("recv-error", e.errno)
sys.stdout.write(buf.decode(errors="replace"))
PY
}

expect_reply()
{
  printf '%s\n' "$1" >"$TB_TMP/req"
  raw "$TB_TMP/req" >"$TB_TMP/reply" || tb_fail "raw client failed"
  grep -Eq -- "$2" "$TB_TMP/reply" || tb_fail "request $1: reply does not match /$2/: $(cat "$TB_TMP/reply")"
  tctl status >/dev/null || tb_fail "daemon stopped serving after: $1"
}

echo "== malformed and wrong requests get error replies"
expect_reply '{"op": "status"' '"ok":false,"error":"malformed request'
expect_reply 'hello' '"ok":false,"error":"malformed request'
expect_reply '[1, 2]' 'expected a JSON object'
expect_reply '{"op": "explode"}' 'unknown operation \\"explode\\"'
expect_reply '{"op": 42}' 'missing \\"op\\"'
# The unknown-operation error lists every operation the daemon answers (the
# maintenance ones too), and each one listed is answered: the list is the
# dispatch table's, not a hand-kept copy.
printf '%s\n' '{"op": "explode"}' >"$TB_TMP/req"
raw "$TB_TMP/req" >"$TB_TMP/reply"
ops=$(sed -n 's/.*unknown operation \\"explode\\" (\([a-z, -]*\)).*/\1/p' "$TB_TMP/reply" | tr -d ,)
for op in status merge lockdown quarantine-release pxe-event maintenance-start maintenance-list; do
  case " $ops " in *" $op "*) ;; *) tb_fail "the unknown-operation error does not list $op: $ops" ;; esac
done
for op in $ops; do
  # A client that does not exist: each operation refuses it, or its
  # argument, or only reads.
  printf '{"op": "%s", "client": "no-such-client"}\n' "$op" >"$TB_TMP/req"
  raw "$TB_TMP/req" >"$TB_TMP/reply"
  ! grep -q 'unknown operation' "$TB_TMP/reply" || tb_fail "listed operation $op is unknown: $(cat "$TB_TMP/reply")"
done
expect_reply '{"op": "client", "client": 7}' 'argument \\"client\\" must be a string'
expect_reply '{"op": "client"}' 'missing argument \\"client\\"'
expect_reply '{"op": "client", "client": "../../etc"}' 'invalid client id'
expect_reply '{"op": "restore", "client": "pc01", "session": "x"}' 'must be an integer'
expect_reply '{"op": "pin", "client": "pc01", "version": -1}' 'must be an integer from 1'
expect_reply '{"op": "status", "rm": "-rf"}' 'unknown argument \\"rm\\"'
expect_reply '{"op": "events", "follow": "yes"}' 'must be true or false'
expect_reply '{"op": "status", "op": "status"}' 'malformed request'
# Several requests on one connection, with a bad one in the middle.
printf '{"op":"status"}\nnot json\n{"op":"clients"}\n' >"$TB_TMP/req"
raw "$TB_TMP/req" >"$TB_TMP/reply"
[ "$(grep -c '"ok":true' "$TB_TMP/reply")" = 2 ] && [ "$(grep -c '"ok":false' "$TB_TMP/reply")" = 1 ] ||
  tb_fail "pipelined requests: $(cat "$TB_TMP/reply")"

echo "== a 10 MiB line is refused and the connection closed"
python3 -c 'import sys; sys.stdout.write("{\"op\":\"status\",\"x\":\"" + "A" * (10 * 1024 * 1024) + "\"}\n")' >"$TB_TMP/big"
raw "$TB_TMP/big" >"$TB_TMP/reply"
grep -q 'request line longer than' "$TB_TMP/reply" || tb_fail "10 MiB line: $(head -c 300 "$TB_TMP/reply")"
grep -Eq 'EOF|recv-error|send-error' "$TB_TMP/reply" || tb_fail "10 MiB line: the connection must be closed"
tctl status >/dev/null || tb_fail "daemon after a 10 MiB line"

echo "== a client that never sends a newline, one that never reads: others are served"
ran0=$(tctl --json status | jq '.daemon.control_requests')
python3 - "$ctl" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"op": "status"')      # no newline, ever
t = socket.socket(socket.AF_UNIX); t.connect(sys.argv[1])
for i in range(2000):                # requests, never reading a reply
    try:
        t.send(b'{"op":"status"}\n' * 50, socket.MSG_DONTWAIT)
    except BlockingIOError:
        time.sleep(0.001)
time.sleep(30)
PY
slow=$!
echo $slow >"$TB_TMP/slow.bgpid"
sleep 1
for i in 1 2 3 4 5; do
  # The daemon must answer (exit 1 is an answer: nbdkit not serving at that
  # instant, which the NBD check below would catch); 3 is no answer, 124 a hang.
  st=0
  timeout 5 "$TD_CTL" -c "$conf" status >"$TB_TMP/status.out" 2>&1 || st=$?
  [ $st -le 1 ] || tb_fail "status $i while hostile clients hold connections (exit $st): $(cat "$TB_TMP/status.out")"
done
# The one that never reads gets no more work than a backlog of unread
# replies (server.c OUTPUT_BACKLOG: a few hundred status replies), not the
# 100,000 requests it sent (without the backlog rule the daemon ran them up
# to its 64 MiB output cap, tens of thousands, while others waited).
ran=$(($(tctl --json status | jq '.daemon.control_requests') - ran0))
[ "$ran" -lt 5000 ] || tb_fail "the daemon ran $ran requests of a client that reads no reply"
echo "ok: $ran requests run while a client sent 100,000 and read nothing"
tb_io_s() { "$TB_IO" -s "$state/nbd.sock" "$@"; }
tb_io_s -e pc01 read:0:4096:1 || tb_fail "NBD while hostile control clients exist"
kill $slow 2>/dev/null; wait $slow 2>/dev/null || true

echo "== a peer of another uid is refused"
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
  chmod 755 "$TB_TMP" "$state" # let nobody reach the socket itself: its own 0600 must stop it
  st=0
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$TD_CTL" --socket "$ctl" status \
    >"$TB_TMP/out" 2>&1 || st=$?
  [ $st -ne 0 ] || tb_fail "uid nobody was served: $(cat "$TB_TMP/out")"
  grep -q "permission denied" "$TB_TMP/out" || tb_fail "uid nobody: $(cat "$TB_TMP/out")"
  [ "$(stat -c %a "$ctl")" = 600 ] || tb_fail "control socket mode is $(stat -c %a "$ctl")"
  # Past the file mode (a copy of the socket's inode with open permissions is
  # not possible), SO_PEERCRED is checked too: a 0666 socket still refuses.
  chmod 666 "$ctl"
  st=0
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$TD_CTL" --socket "$ctl" status \
    >"$TB_TMP/out" 2>&1 || st=$?
  chmod 600 "$ctl"
  [ $st -ne 0 ] || tb_fail "uid nobody was served through a 0666 socket"
  grep -q "only the daemon's user and root" "$TB_TMP/out" || tb_fail "SO_PEERCRED refusal: $(cat "$TB_TMP/out")"
  grep -q "refused a peer with uid" "$TB_TMP/daemon.log" || tb_fail "refusal not logged"
  tctl status >/dev/null || tb_fail "daemon after another uid"
fi

echo "== kill -9 of nbdkit: restarted, clients reconnect"
old=$(td_nbdkit_pid)
kill -9 "$old"
td_wait ".nbdkit.state == \"running\" and .nbdkit.pid != $old and .nbdkit.restarts == 1" "nbdkit restarted"
tb_io_s -e pc01 read:0:4096:1 || tb_fail "client after the nbdkit restart"
tb_event "$state" '.type == "nbdkit-exit" and (.status | test("signal 9"))' "nbdkit-exit event"
tb_event "$state" '.type == "nbdkit-restart" and .restarts == 1' "nbdkit-restart event"
tctl status | grep -q "1 restart" || tb_fail "status must count the restart: $(tctl status)"

td_stop
grep -Eq 'AddressSanitizer|runtime error' "$TB_TMP/daemon.log" && tb_fail "sanitizer: $(cat "$TB_TMP/daemon.log")"
echo PASS
