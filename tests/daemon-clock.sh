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

state=$TB_TMP/state
mkdir -p "$state"
td_faketime_nbdkit
td_config "$TB_TMP/tabula.json" "$state" '{}'
td_start_faketime "$TB_TMP/tabula.json" FAKETIME="+0 x100" FAKETIME_DONT_RESET=1
status() { tctl --json status 2>/dev/null || true; }

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
