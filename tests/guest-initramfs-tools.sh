#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The real-PC route of README ("The initramfs of a real PC"): an initramfs
# built by Debian's own mkinitramfs with tabula's initramfs-tools hook
# (conf/initramfs-tools) boots Debian's cloud kernel, brings the network up
# (ip=dhcp: QEMU's user network here), attaches /dev/nbd0 with Debian's
# nbd-client as ID@boot/BOOT_ID, starts tabula-nbd-persist and hands over to
# the root's /sbin/init.  Two boots of a rollback client: each has its own
# boot id, so the second is a new session and does not see the first's file.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/initramfs-functions.sh"
T=$TB_TMP
ti_mkinitramfs "$T"

echo "== a root filesystem whose /sbin/init reports and powers off"
mkdir -p "$T/root/bin" "$T/root/sbin" "$T/root/proc" "$T/root/sys" "$T/root/dev" "$T/root/home"
cp /bin/busybox "$T/root/bin/"
cat >"$T/root/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "tabula-init: root $(/bin/busybox grep ' / ' /proc/mounts | /bin/busybox cut -d' ' -f1)"
if [ -f /home/marker.txt ]; then echo "tabula-init: marker $(/bin/busybox cat /home/marker.txt)"; fi
/bin/busybox cat /proc/sys/kernel/random/boot_id >/home/marker.txt
/bin/busybox sync
echo "tabula-init-done"
/bin/busybox poweroff -f
INIT
chmod +x "$T/root/sbin/init"
truncate -s 64M "$T/master.img"
mke2fs -q -F -t ext4 -b 4096 -d "$T/root" "$T/master.img" || tb_fail "mke2fs"
state=$T/state
tb_import "$state" demo "$T/master.img"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# QEMU's user network reaches the host's loopback as 10.0.2.2.
tb_config "$T/tabula.json" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "allow": ["127.0.0.0/8"] }
  }'
tb_start_tcp s "$T/tabula.json" 127.0.0.1 "$port"

boot()
{
  timeout -k 5 240 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
    -nic user,model=virtio-net-pci -kernel "$kernel" -initrd "$T/initrd.img" \
    -append "console=ttyS0 ip=dhcp root=/dev/nbd0 rw panic=-1 tabula.nbd=10.0.2.2:$port:pc01" \
    </dev/null >"$T/boot-$1.log" 2>&1 || tb_fail "boot $1: qemu failed: $(tail -n 5 "$T/boot-$1.log")"
  tr -d '\r' <"$T/boot-$1.log" >"$T/boot-$1.console"
  grep -q '^tabula-init-done' "$T/boot-$1.console" ||
    tb_fail "boot $1 did not reach /sbin/init: $(grep -aE 'tabula|nbd|panic' "$T/boot-$1.console" | tail -n 8)"
  grep -q '^tabula-init: root /dev/nbd0' "$T/boot-$1.console" ||
    tb_fail "boot $1: the root is not /dev/nbd0: $(grep tabula-init "$T/boot-$1.console")"
  grep -q 'tabula-nbd-persist' "$T/boot-$1.console" || tb_fail "boot $1: tabula-nbd-persist did not start"
  tb_wait_idle "$state" pc01
}

echo "== boot 1"
boot 1
grep -q '^tabula-init: marker' "$T/boot-1.console" && tb_fail "boot 1 found a marker on the master"
tb_event "$state" '.type == "session-start" and .client == "pc01" and .boot == "token"' \
  "boot 1's session, told by its boot id"
echo "== boot 2: a new boot id, a new session, rolled back"
boot 2
grep -q '^tabula-init: marker' "$T/boot-2.console" && tb_fail "boot 2 saw boot 1's file: not rolled back"
[ "$(tb_count_events session-start pc01 "$state")" = 2 ] || tb_fail "two boots must be two sessions"
tb_event "$state" '.type == "rollback" and .client == "pc01"' "boot 2's rollback"
tb_stop s
tb_check_logs
