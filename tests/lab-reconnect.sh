#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A running diskless PC (tests/lab-functions.sh) rides out what a lab's
# network and appliance do to it, and an administrator's probes change
# nothing.  pc01 is a persist client with a rollback pending in its mailbox
# (tabulactl rollback): the pending rollback must reach its next boot, not a
# reconnect of this one.  While pc01 runs, with its root mounted over NBD:
#  - nbdinfo on its export and nbdinfo --list, as admin: no session, the
#    rollback still pending;
#  - its tap goes down for 10 s while the guest writes and syncs, then up;
#  - kill -9 of nbdkit (the daemon restarts it; the guest's
#    tabula-nbd-persist reconnects);
#  - a restart of the daemon (nbdkit and its listener go away and come back).
# After each, the guest goes on writing; at the end it reads every file it
# wrote, and there was one session, no rollback, the rollback still pending.
# Its reboot is a new boot: the rollback applies there.
# Needs the session model of issue 13 (a reconnect continues the boot's
# session; probes are no session).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/lab-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/home/user"
echo "the lab master" >"$T/root/home/user/readme.txt"
tl_lab "$T/root" '{
  "pc01": { "image": "demo", "policy": "persist", "mac": "52:54:00:77:00:01", "address": "10.77.0.11" }
}'
u=/home/user

pending_rollback()
{
  tctl --json client pc01 | jq -e '.pending | tostring | test("rollback")' >/dev/null
}
# unchanged WHAT: still one session, no rollback, the rollback still pending.
unchanged()
{
  [ "$(tl_sessions pc01)" = 1 ] || tb_fail "$1: pc01 must still be in its one session: $(tl_sessions pc01) session-start events"
  [ "$(tl_rollbacks pc01)" = 0 ] || tb_fail "$1: pc01 was rolled back: $(jq -c 'select(.type == "rollback" and .applies == null)' "$state/events.jsonl")"
  pending_rollback || tb_fail "$1: the pending rollback was consumed: $(tctl client pc01)"
}
probe()
{
  nbdinfo "nbd+unix:///pc01?socket=$sock" >"$T/nbdinfo.out" 2>&1 || tb_fail "nbdinfo pc01: $(cat "$T/nbdinfo.out")"
  nbdinfo --list "nbd+unix:///?socket=$sock" >"$T/nbdinfo.out" 2>&1 || tb_fail "nbdinfo --list: $(cat "$T/nbdinfo.out")"
  grep -q pc01 "$T/nbdinfo.out" || tb_fail "nbdinfo --list must list pc01: $(cat "$T/nbdinfo.out")"
}

echo "== pc01 boots, writes, and waits"
tl_on pc01 52:54:00:77:00:01
tl_ask pc01 "write:$u/a.txt:before-the-glitches,sync,pause:900,write:$u/b.txt:written-with-the-link-down,sync,pause:900,write:$u/c.txt:after-kill-9,sync,pause:900,write:$u/d.txt:after-the-restart,cat:$u/a.txt,cat:$u/b.txt,cat:$u/c.txt,cat:$u/d.txt,reboot"
tl_wait pc01 '^tabula-paused' "pc01 must write a.txt"
[ "$(tl_sessions pc01)" = 1 ] || tb_fail "one boot, one session: $(tl_sessions pc01)"
tctl rollback pc01 >/dev/null || tb_fail "tabulactl rollback pc01"
pending_rollback || tb_fail "the rollback must be pending: $(tctl client pc01)"

echo "== admin probes: nbdinfo, nbdinfo --list"
probe
unchanged "after nbdinfo and nbdinfo --list"

echo "== the link goes down for 10 s while the guest writes and syncs"
tl_ns ip link set tbpc01 down
tl_resume pc01
sleep 10
tl_ns ip link set tbpc01 up
tl_wait pc01 '^tabula-paused' "pc01 must finish writing b.txt once the link is back"
unchanged "after the link came back"

echo "== kill -9 of nbdkit under the running PC"
pid=$(td_nbdkit_pid)
kill -9 "$pid"
td_wait ".nbdkit.state == \"running\" and .nbdkit.pid != $pid" "nbdkit must be restarted"
tl_wait pc01 'tabula-nbd-persist: reconnected' "pc01 must reconnect after kill -9 of nbdkit"
tl_resume pc01
tl_wait pc01 '^tabula-paused' "pc01 must write c.txt after nbdkit's restart"
probe
unchanged "after kill -9 of nbdkit"

echo "== the daemon restarts under the running PC"
td_stop
td_start "$TD_CONF"
tl_wait pc01 'tabula-nbd-persist: reconnected' "pc01 must reconnect after the daemon's restart"
tl_resume pc01
tl_done pc01
tl_has pc01 $u/a.txt before-the-glitches
tl_has pc01 $u/b.txt written-with-the-link-down
tl_has pc01 $u/c.txt after-kill-9
tl_has pc01 $u/d.txt after-the-restart
unchanged "after the daemon's restart"
tl_console pc01 | grep -q 'I/O error' && tb_fail "pc01's kernel saw I/O errors: $(tl_console pc01 | grep 'I/O error' | head -n 3)"

echo "== pc01 reboots: a new boot, the pending rollback applies"
tl_boot pc01 "cat:$u/a.txt,cat:$u/readme.txt"
tl_lacks pc01 $u/a.txt
tl_has pc01 $u/readme.txt "the lab master"
tl_off pc01
[ "$(tl_sessions pc01)" = 2 ] || tb_fail "two boots, two sessions: $(tl_sessions pc01)"
pending_rollback && tb_fail "the rollback must have been applied at the second boot: $(tctl client pc01)"
td_stop
tb_check_logs
echo PASS
