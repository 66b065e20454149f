#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The control socket's idle timeouts follow the monotonic clock, not the
# wall clock (issue 17 §5): the daemon runs under libfaketime with its wall
# clock going 100 times too fast (the monotonic clock left alone), and a
# connection holding a partial request line for 1 s -- 100 s of wall clock,
# past the 30 s limit -- must still be open and answer once the line ends.
# With the wall clock measuring idle time the daemon closed it ("incomplete
# request line").
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
# nbdkit, the daemon's child, runs without the fake clock (under it an ASan
# nbdkit hangs in its start and outlives the test).
cat >"$TB_TMP/nbdkit" <<EOF
#!/bin/sh
unset LD_PRELOAD FAKETIME FAKETIME_DONT_FAKE_MONOTONIC FAKETIME_DONT_RESET
exec "$TB_NBDKIT" "\$@"
EOF
chmod +x "$TB_TMP/nbdkit"
TB_NBDKIT=$TB_TMP/nbdkit
td_config "$TB_TMP/tabula.json" "$state" '{}'
TD_CONF=$TB_TMP/tabula.json
# The sanitizer runtime need not come first: libfaketime is preloaded before it.
env LD_PRELOAD="$faketime_so" FAKETIME="+0 x100" FAKETIME_DONT_FAKE_MONOTONIC=1 \
  FAKETIME_DONT_RESET=1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
  "$TD_DAEMON" -c "$TD_CONF" >>"$TB_TMP/daemon.log" 2>&1 &
echo $! >"$TB_TMP/daemon.bgpid"
i=0
# (tabulactl status exits 1 while nbdkit starts, which this test does not
# wait for: the daemon's JSON is there.)
status() { tctl --json status 2>/dev/null || true; }
until [ -S "$state/control.sock" ] && status | jq -e .daemon >/dev/null 2>&1; do
  kill -0 "$(td_pid)" 2>/dev/null || tb_fail "tabula-restored exited: $(tail -n 20 "$TB_TMP/daemon.log")"
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "tabula-restored did not answer within 30 s"
  sleep 0.1
done

# The fake clock runs: the daemon's uptime (wall clock) grows 100 times as fast.
up1=$(status | jq .daemon.uptime_s)
sleep 1
up2=$(status | jq .daemon.uptime_s)
[ $((up2 - up1)) -ge 30 ] || tb_skip "libfaketime does not speed up the daemon's clock ($up1 s, then $up2 s)"

out=$(python3 - "$state/control.sock" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"op": "status"')
time.sleep(1.0)  # 100 s of the daemon's wall clock, 1 s of its monotonic one
buf = b""
try:
    s.sendall(b'}\n')
    s.settimeout(10)
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
except OSError as e:  # the daemon closed the connection
    buf = b"closed (%s) " % str(e).encode() + buf
print(buf.decode(errors="replace").strip()[:300])
EOF
)
echo "reply: $out"
case $out in
*incomplete* | closed*) tb_fail "a partial line was timed out by the wall clock: $out" ;;
'{"ok": true'* | '{"ok":true'*) ;;
*) tb_fail "no status reply after the line ended: $out" ;;
esac
td_stop
