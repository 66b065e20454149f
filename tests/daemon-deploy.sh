#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The deployment as systemd runs it (issue 18 §1):
#  - READY=1 reaches NOTIFY_SOCKET only once nbdkit serves, with STATUS=
#    lines saying what the daemon does; while nbdkit keeps failing there is
#    no READY=1, `tabulactl status` exits 1, and a connecting client gets an
#    NBD error naming the cause instead of waiting in the backlog;
#  - a good `tabulactl reload` after that starts nbdkit at once (no backoff
#    wait); a reload with a client that cannot be served (no version of its
#    image) is accepted and names that client, which alone is refused;
#  - listen.unix_mode/unix_group, control_group and metrics.mode are applied;
#  - under the journal (JOURNAL_STREAM is stderr) nbdkit runs with
#    --log=syslog, and log lines carry "<N>"
#    priorities and no program-name prefix.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require nbdinfo

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" 1048576 1
tb_import "$state" demo "$TB_TMP/v1.img"
gid=$(id -g)

# A fake systemd notify socket: every datagram, one per line ("\n" as " | ").
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as out:
    while True:
        msg = s.recv(4096).decode()
        out.write(msg.replace("\n", " | ") + "\n")
        out.flush()
' "$TB_TMP/notify.sock" "$TB_TMP/notify.txt" &
echo $! >"$TB_TMP/notify.bgpid"
i=0
until [ -S "$TB_TMP/notify.sock" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "the notify listener did not start"; sleep 0.1
done

# nbdkit fails while $TB_TMP/broken exists.
cat >"$TB_TMP/flaky-nbdkit" <<EOF2
#!/bin/sh
if [ -e "$TB_TMP/broken" ]; then echo "flaky-nbdkit: broken on purpose" >&2; exit 1; fi
exec "$TB_NBDKIT" "\$@"
EOF2
chmod +x "$TB_TMP/flaky-nbdkit"
conf=$TB_TMP/tabula.json
cat >"$conf" <<EOF2
{
  "state_dir": "$state",
  "reconnect_grace": "0s",
  "plugin": "$TB_PLUGIN",
  "nbdkit": "$TB_TMP/flaky-nbdkit",
  "listen": { "unix_mode": "0660", "unix_group": "$gid" },
  "control_group": "$gid",
  "metrics": { "file": "$TB_TMP/tabula.prom", "interval": "1s", "mode": "0640" },
  "images": { "demo": {}, "other": {} },
  "clients": { "pc01": { "image": "demo" } }
}
EOF2
TD_CONF=$conf

echo "== nbdkit failing: no READY=1, status exits 1, clients get an answer"
touch "$TB_TMP/broken"
NOTIFY_SOCKET=$TB_TMP/notify.sock "$TD_DAEMON" -c "$conf" >>"$TB_TMP/daemon.log" 2>&1 &
echo $! >"$TB_TMP/daemon.bgpid"
# (td_wait needs a daemon that answers: status exits 3 until it does.)
wait_daemon()
{
  _i=0
  while _st=0 && tctl --json status >/dev/null 2>&1 || _st=$? && [ $_st -eq 3 ]; do
    kill -0 "$(cat "$TB_TMP/daemon.bgpid")" 2>/dev/null || tb_fail "tabula-restored exited"
    _i=$((_i + 1)); [ $_i -lt 300 ] || tb_fail "tabula-restored did not answer"; sleep 0.1
  done
}
wait_daemon
td_wait '.nbdkit.restarts >= 3' "nbdkit must keep being restarted"
grep -q 'READY=1' "$TB_TMP/notify.txt" && tb_fail "READY=1 while nbdkit does not serve: $(cat "$TB_TMP/notify.txt")"
grep -q 'STATUS=not serving: nbdkit exited with status 1' "$TB_TMP/notify.txt" ||
  tb_fail "no STATUS line for the failing nbdkit: $(cat "$TB_TMP/notify.txt")"
st=0; tctl status >"$TB_TMP/out" 2>"$TB_TMP/err" || st=$?
[ $st -eq 1 ] || tb_fail "status must exit 1 while nbdkit does not serve, got $st: $(cat "$TB_TMP/out")"
grep -q 'does not serve' "$TB_TMP/err" || tb_fail "status must say it does not serve: $(cat "$TB_TMP/err")"
# A client connecting meanwhile: nbdinfo fails with the daemon's message (it
# would wait in the backlog until nbdkit is back without the standby).
wait_for_standby()
{
  _i=0
  until tctl --json status | jq -e '.nbdkit.state == "restarting"' >/dev/null; do
    _i=$((_i + 1)); [ $_i -lt 300 ] || tb_fail "nbdkit never waits for its restart"; sleep 0.1
  done
}
wait_for_standby
if LIBNBD_DEBUG=1 timeout 20 nbdinfo "nbd+unix:///pc01?socket=$state/nbd.sock" >"$TB_TMP/nbdinfo.out" 2>&1; then
  tb_fail "nbdinfo succeeded while nbdkit is down"
fi
grep -q 'NBD server is not running' "$TB_TMP/nbdinfo.out" ||
  tb_fail "the client must get the daemon's message: $(cat "$TB_TMP/nbdinfo.out")"
echo "ok: $(grep -m1 'not running' "$TB_TMP/nbdinfo.out")"

echo "== a good reload starts nbdkit at once"
rm -f "$TB_TMP/broken"
tctl reload >"$TB_TMP/out" || tb_fail "reload: $(cat "$TB_TMP/out")"
td_wait '.nbdkit.state == "running"' "nbdkit after the reload"
grep -q 'starting it now with the new configuration' "$TB_TMP/daemon.log" ||
  tb_fail "the reload must not wait out the backoff: $(tail -n 5 "$TB_TMP/daemon.log")"
i=0
until grep -q 'READY=1 | STATUS=serving 1 clients' "$TB_TMP/notify.txt"; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "no READY=1 once nbdkit serves: $(cat "$TB_TMP/notify.txt")"; sleep 0.1
done
tctl status >/dev/null || tb_fail "status must exit 0 while nbdkit serves"
tb_io() { "$TB_IO" -s "$state/nbd.sock" "$@"; }
tb_io -e pc01 read:0:4096:1 || tb_fail "pc01 after the reload"

echo "== modes and groups"
[ "$(stat -c %a "$state/nbd.sock")" = 660 ] || tb_fail "nbd.sock mode $(stat -c %a "$state/nbd.sock"), want 660"
[ "$(stat -c %g "$state/nbd.sock")" = "$gid" ] || tb_fail "nbd.sock group"
[ "$(stat -c %a "$state/control.sock")" = 660 ] || tb_fail "control.sock mode $(stat -c %a "$state/control.sock"), want 660"
i=0
until [ -f "$TB_TMP/tabula.prom" ]; do i=$((i + 1)); [ $i -lt 100 ] || tb_fail "no metrics file"; sleep 0.1; done
[ "$(stat -c %a "$TB_TMP/tabula.prom")" = 640 ] || tb_fail "metrics mode $(stat -c %a "$TB_TMP/tabula.prom"), want 640"

echo "== a reload with a client that cannot be served names it, the others stay"
jq '.clients.vm01 = {"image": "other"}' "$conf" >"$conf.new" && cat "$conf.new" >"$conf"
tctl reload >"$TB_TMP/out" || tb_fail "reload with vm01: $(cat "$TB_TMP/out")"
grep -q 'warning: client vm01 is refused until this is fixed: .*other.* has no versions yet' "$TB_TMP/out" ||
  tb_fail "the reload must name vm01: $(cat "$TB_TMP/out")"
tb_event "$state" '.type == "client-unservable" and .client == "vm01"' "client-unservable event"
tb_io -e pc01 read:0:4096:1 || tb_fail "pc01 beside the unservable vm01"
if tb_io -e vm01 read:0:4096:1 2>/dev/null; then tb_fail "vm01 was served"; fi
td_stop

echo "== under the journal: <N> priorities, no program prefix"
: >"$TB_TMP/journal.log"
(
  JOURNAL_STREAM=$(stat -c '%d:%i' "$TB_TMP/journal.log")
  export JOURNAL_STREAM
  exec "$TD_DAEMON" -c "$conf" 2>>"$TB_TMP/journal.log"
) &
echo $! >"$TB_TMP/daemon.bgpid"
wait_daemon
td_wait '.nbdkit.state == "running"' "nbdkit under the journal"
# nbdkit's own errors keep their priority through syslog (on the shared
# stderr they were info lines; tests/deploy-systemd.sh reads them back).
nbpid=$(tctl --json status | jq -r '.nbdkit.pid')
tr '\0' ' ' <"/proc/$nbpid/cmdline" | grep -q -- ' --log=syslog ' ||
  tb_fail "nbdkit under the journal logs to stderr: $(tr '\0' ' ' <"/proc/$nbpid/cmdline")"
td_stop
grep -q '^<6>serving ' "$TB_TMP/journal.log" || tb_fail "no <6> info line: $(head -n 5 "$TB_TMP/journal.log")"
grep -q '^<4>warning: client vm01' "$TB_TMP/journal.log" || tb_fail "no <4> warning line: $(head -n 5 "$TB_TMP/journal.log")"
grep -q '^tabula-restored: ' "$TB_TMP/journal.log" && tb_fail "a program prefix under the journal"
kill "$(cat "$TB_TMP/notify.bgpid")" 2>/dev/null
rm -f "$TB_TMP/notify.bgpid"
tb_check_logs
