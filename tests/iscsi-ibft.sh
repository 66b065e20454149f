#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The path a Windows PC takes, end to end, with Linux in Windows' place: in
# the virtual lab (tests/lab-functions.sh) a PC's iPXE ROM PXE-boots from the
# daemon's dnsmasq, gets its script from pxe.c (boot.mode "iscsi": its
# initiator name, CHAP, `sanboot iscsi:10.77.0.1::3260::PREFIX:ID`), logs
# into tabula-iscsid, publishes the iBFT and boots the disk through int 13h:
# the MBR, syslinux, then the kernel and an initramfs read from the target
# (tests/ibft-functions.sh).  The initramfs reads the iBFT (iscsi_ibft),
# brings the NIC up and logs in again with Debian's iscsistart -N / -b, as
# Windows' initiator does, and mounts its root from the same target.
#  - the scripts dnsmasq serves sanboot the client's target with its
#    initiator name and CHAP (one-way for pc01, mutual for pc02);
#  - pc01 (rollback) writes a marker: it is in pc01's overlay; its next
#    boot (a PXE boot: a new session) sees the master again;
#  - pc02 (persist) writes a file, reboots and still has it;
#  - one initiator name per PC, both logins (iPXE's, then the initramfs's)
#    are the same boot: one session per boot.
# Windows itself is not booted here (README "Windows PCs over iSCSI").
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/iscsi-functions.sh"
tb_setup
. "$abs_top_srcdir/tests/lab-functions.sh"
. "$abs_top_srcdir/tests/ibft-functions.sh"
[ -x "$TB_ISCSID" ] || tb_fail "$TB_ISCSID is not built"

T=$TB_TMP
mkdir -p "$T/root/etc" "$T/root/home/user"
echo "the iscsi master" >"$T/root/etc/motd"
ib_disk "$T/disk.img" "$T/root"
tl_lab "$T/disk.img" '{
  "pc01": { "image": "demo", "policy": "rollback", "mac": "52:54:00:77:01:01", "address": "10.77.0.21",
            "boot": { "mode": "iscsi" },
            "iscsi": { "chap": { "user": "pc01", "secret": "pc01-secret-1" } } },
  "pc02": { "image": "demo", "policy": "persist", "mac": "52:54:00:77:01:02", "address": "10.77.0.22",
            "boot": { "mode": "iscsi" },
            "iscsi": { "initiator": "iqn.2010-04.org.ipxe:pc02-ibft",
                       "chap": { "user": "pc02", "secret": "pc02 secret $x" },
                       "mutual_chap": { "user": "tabula", "secret": "appliance-key1" } } }
}' "\"iscsi\": { \"program\": \"$TB_ISCSID\" }" "\"iscsi\": \"0.0.0.0:3260\""
td_wait '.iscsi.state == "running"' "tabula-iscsid must run"

echo "== the iPXE scripts sanboot each client's target"
tftp=$state/pxe/tftp
cat "$tftp/pc01.ipxe"
grep -qx "sanboot iscsi:$TL_SERVER::3260::$TB_ISCSI_PREFIX:pc01" "$tftp/pc01.ipxe" ||
  tb_fail "pc01's script must sanboot its target: $(cat "$tftp/pc01.ipxe")"
grep -qx "set initiator-iqn iqn.2010-04.org.ipxe:pc01" "$tftp/pc01.ipxe" || tb_fail "pc01's initiator name"
grep -qx "set initiator-iqn iqn.2010-04.org.ipxe:pc02-ibft" "$tftp/pc02.ipxe" ||
  tb_fail "pc02's script must set its configured initiator name: $(cat "$tftp/pc02.ipxe")"
grep -q '^set reverse-password:hex ' "$tftp/pc02.ipxe" || tb_fail "pc02's mutual CHAP"
! grep -q '^kernel\|^initrd' "$tftp/pc01.ipxe" || tb_fail "a sanboot client loads no kernel"
[ ! -e "$tftp/boot/pc01" ] || tb_fail "a sanboot client has no boot/pc01 links"

echo "== pc01 and pc02 boot from their targets; pc01 writes a marker, pc02 a file"
tl_on pc01 52:54:00:77:01:01
tl_on pc02 52:54:00:77:01:02
tl_ask pc01 "cat:/etc/motd,write:/home/user/marker:ibft-marker-of-pc01-boot-1,cat:/home/user/marker,reboot"
tl_ask pc02 "write:/home/user/kept.txt:ibft-kept-by-pc02,cat:/home/user/kept.txt,reboot"
tl_done pc01
tl_has pc01 /etc/motd "the iscsi master"
tl_has pc01 /home/user/marker ibft-marker-of-pc01-boot-1
tl_console pc01 | grep -q "^tabula-ibft $TL_SERVER:3260 $TB_ISCSI_PREFIX:pc01 iqn.2010-04.org.ipxe:pc01 " ||
  tb_fail "pc01's iBFT must name its target and initiator: $(tl_console pc01 | grep -a '^tabula-')"
tl_done pc02
tl_has pc02 /home/user/kept.txt ibft-kept-by-pc02
tl_console pc02 | grep -q "^tabula-ibft $TL_SERVER:3260 $TB_ISCSI_PREFIX:pc02 iqn.2010-04.org.ipxe:pc02-ibft " ||
  tb_fail "pc02's iBFT: $(tl_console pc02 | grep -a '^tabula-')"

echo "== pc01's marker is in its overlay"
grep -rqa ibft-marker-of-pc01-boot-1 "$state/clients/pc01/" ||
  tb_fail "pc01's write is not in its overlay: $(ls -R "$state/clients/pc01")"

echo "== second boots: pc01 is the master again, pc02 kept its file"
tl_boot pc01 "cat:/etc/motd,cat:/home/user/marker"
tl_lacks pc01 /home/user/marker
tl_has pc01 /etc/motd "the iscsi master"
tl_boot pc02 "cat:/home/user/kept.txt"
tl_has pc02 /home/user/kept.txt ibft-kept-by-pc02
tl_off pc01
tl_off pc02
[ "$(tl_sessions pc01)" = 2 ] || tb_fail "pc01: two boots, two sessions: $(tl_sessions pc01)"
[ "$(tl_rollbacks pc01)" -ge 1 ] || tb_fail "pc01's second boot must start with a rollback"
[ "$(tl_sessions pc02)" = 2 ] || tb_fail "pc02: two boots, two sessions: $(tl_sessions pc02)"
[ "$(tl_rollbacks pc02)" = 0 ] || tb_fail "pc02 is persist: no rollback"
[ "$(tb_sha256 "$state/images/demo/1.img")" = "$(tb_sha256 "$T/master.img")" ] || tb_fail "the master changed"
td_stop
tb_check_logs
echo PASS
