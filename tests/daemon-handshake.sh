#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Idle NBD connections cannot pile up (issue 14, item 12): nbdkit 1.32 waits
# for a handshake forever, a thread each, so the plugin gives every TCP
# connection listen.handshake_timeout (here 2 s) to open an export
# (lib/handshake.c):
#  - 300 TCP connections that never send a byte are closed by the server
#    and nbdkit's threads go back down;
#  - a real client is still served, and an established connection idle for
#    longer than the timeout is not cut;
#  - nbdkit runs behind its limit filter (listen.max_connections).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require python3 jq nbdinfo

state=$TB_TMP/state
port=$(tb_free_port)
tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }' "\"listen\": { \"tcp\": \"127.0.0.1:$port\",
  \"handshake_timeout\": \"2s\", \"max_connections\": 500 }"
chmod 600 "$conf"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
pid=$(td_nbdkit_pid)
threads() { awk '/^Threads:/ {print $2}' "/proc/$pid/status"; }
# The wrapper execs nbdkit: the pid is nbdkit's own.
tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--filter=limit .* limit=500" ||
  tb_fail "nbdkit must run behind its limit filter: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
base=$(threads)

echo "== 300 connections that never finish the handshake"
python3 - "$port" "$TB_TMP/idle" <<'PY' &
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
socks = []
for i in range(300):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
open(out + ".open", "w").write("%d\n" % len(socks))
closed, t = set(), time.time()
while len(closed) < len(socks) and time.time() - t < 40:
    for i, s in enumerate(socks):
        if i in closed:
            continue
        s.setblocking(False)
        try:
            while True:
                d = s.recv(4096)       # the greeting, then EOF when cut
                if not d:
                    closed.add(i)
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed.add(i)
    time.sleep(0.2)
open(out, "w").write("%d\n" % len(closed))
PY
echo $! >"$TB_TMP/idle.bgpid"
i=0
until [ -s "$TB_TMP/idle.open" ]; do
  i=$((i + 1)); [ $i -lt 300 ] || tb_fail "could not open 300 connections"
  sleep 0.1
done
sleep 0.5
held=$(threads)
echo "nbdkit threads: $base before, $held with 300 idle connections"
i=0
until [ -s "$TB_TMP/idle" ]; do
  i=$((i + 1)); [ $i -lt 500 ] || tb_fail "the prober did not finish"
  sleep 0.1
done
[ "$(cat "$TB_TMP/idle")" -eq 300 ] ||
  tb_fail "the server must close every idle connection: $(cat "$TB_TMP/idle") of 300 closed"
i=0
until [ "$(threads)" -lt $((base + 20)) ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "nbdkit still has $(threads) threads (was $base)"
  sleep 0.1
done

echo "== a real client is served; an established idle connection is not cut"
nbdinfo --size "nbd://127.0.0.1:$port/pc01" >"$TB_TMP/size" || tb_fail "nbdinfo after the flood"
[ "$(cat "$TB_TMP/size")" = 1048576 ] || tb_fail "size: $(cat "$TB_TMP/size")"
"$TB_IO" -t "127.0.0.1:$port" -e pc01 read:0:4096:1 sleep:4000 read:4096:4096:1 ||
  tb_fail "a connection idle for 4 s after its handshake must keep working"

td_stop
echo PASS
