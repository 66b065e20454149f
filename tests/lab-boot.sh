#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A virtual lab (tests/lab-functions.sh): diskless PCs PXE-boot from the
# appliance through dnsmasq and iPXE and mount their root with the guest
# kernel's NBD client.  pc01 (rollback) and pc02 (persist) power on at once,
# with a PC nobody registered:
#  - the unregistered MAC is recorded (tabulactl clients --unknown) and its
#    screen says how to register it;
#  - pc01 writes a marker and reboots: its next boot sees the master again
#    (two sessions, a rollback between);
#  - pc02 writes a file and reboots: its next boot still has it; then the
#    appliance restarts (the daemon, nbdkit, dnsmasq) and pc02, powered on
#    again, still has it;
#  - every boot was a new session, announced by its boot id (ID@boot/...).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/lab-functions.sh"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/home/user"
echo "the lab master" >"$T/root/etc/motd"
tl_lab "$T/root" '{
  "pc01": { "image": "demo", "policy": "rollback", "mac": "52:54:00:77:00:01", "address": "10.77.0.11" },
  "pc02": { "image": "demo", "policy": "persist", "mac": "52:54:00:77:00:02", "address": "10.77.0.12" }
}'

echo "== pc01, pc02 and an unregistered PC power on at once"
tl_on pc01 52:54:00:77:00:01
tl_on pc02 52:54:00:77:00:02
tl_on pc99 52:54:00:77:00:99
tl_ask pc01 "cat:/etc/motd,write:/home/user/marker:boot-1-of-pc01,cat:/home/user/marker,reboot"
tl_ask pc02 "write:/home/user/kept.txt:written-by-pc02,cat:/home/user/kept.txt,reboot"
tl_done pc01
tl_has pc01 /etc/motd "the lab master"
tl_has pc01 /home/user/marker boot-1-of-pc01
tl_done pc02
tl_has pc02 /home/user/kept.txt written-by-pc02
grep -q "^tabula-nbd $TL_SERVER $TL_PORT pc01" "$T/pc01.last" || tb_fail "pc01 must attach its own export: $(cat "$T/pc01.last")"

echo "== the unregistered PC is recorded and told how to register"
i=0
until tctl clients --unknown 2>/dev/null | grep -q '^52:54:00:77:00:99 '; do
  i=$((i + 1))
  [ $i -lt $((TL_TIMEOUT * 5)) ] || tb_fail "52:54:00:77:00:99 not listed: $(tctl clients --unknown)"
  sleep 0.2
done
tl_wait pc99 'tabulactl register' "the unregistered PC's screen"
tl_kill pc99

echo "== after their reboots: pc01 is clean, pc02 kept its file"
tl_boot pc01 "cat:/etc/motd,cat:/home/user/marker,list:/home"
tl_lacks pc01 /home/user/marker
tl_has pc01 /etc/motd "the lab master"
[ ! -s "$T/pc01.files" ] || tb_fail "pc01's /home must be the master's (empty): $(cat "$T/pc01.files")"
tl_boot pc02 "cat:/home/user/kept.txt"
tl_has pc02 /home/user/kept.txt written-by-pc02
tl_off pc01
tl_off pc02
[ "$(tl_sessions pc01)" = 2 ] || tb_fail "pc01: two boots, two sessions: $(tl_sessions pc01)"
[ "$(tl_rollbacks pc01)" -ge 1 ] || tb_fail "pc01's second boot must start with a rollback"
[ "$(tl_sessions pc02)" = 2 ] || tb_fail "pc02: two boots, two sessions: $(tl_sessions pc02)"
[ "$(tl_rollbacks pc02)" = 0 ] || tb_fail "pc02 is persist: no rollback"

echo "== the appliance restarts; pc02 powers on again and still has its file"
td_stop
td_start "$TD_CONF"
td_wait '.pxe.state == "running"' "dnsmasq must run again"
tl_on pc02 52:54:00:77:00:02
tl_boot pc02 "cat:/home/user/kept.txt"
tl_has pc02 /home/user/kept.txt written-by-pc02
tl_off pc02
[ "$(tl_sessions pc02)" = 3 ] || tb_fail "pc02: three boots, three sessions: $(tl_sessions pc02)"
[ "$(tl_rollbacks pc02)" = 0 ] || tb_fail "pc02 is persist: no rollback"
[ "$(tb_sha256 "$state/images/demo/1.img")" = "$(tb_sha256 "$T/master.img")" ] || tb_fail "the master changed"
td_stop
tb_check_logs
echo PASS
