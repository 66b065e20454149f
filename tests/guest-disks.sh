#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A PC with two disks booting over NBD through tabula's initramfs-tools hook
# (README "Clients with more than one disk"): tabula.disks=games attaches
# /dev/nbd1 as pc01/games@boot/BOOT_ID beside the root /dev/nbd0 as
# pc01@boot/BOOT_ID, one boot id for both.  The guest writes a marker into
# each disk at every boot; the root is a rollback disk, the games disk a
# persist one: boot 2 sees the games disk's marker of boot 1 and not the
# root's, and each boot is one session of each disk, told by its boot id.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/initramfs-functions.sh"
T=$TB_TMP
ti_mkinitramfs "$T"

echo "== a root whose /sbin/init marks both disks and powers off"
mkdir -p "$T/root/bin" "$T/root/sbin" "$T/root/proc" "$T/root/sys" "$T/root/dev" "$T/root/home" \
  "$T/root/games"
cp /bin/busybox "$T/root/bin/"
cat >"$T/root/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "tabula-init: root $(/bin/busybox grep ' / ' /proc/mounts | /bin/busybox cut -d' ' -f1)"
/bin/busybox mount -t ext4 /dev/nbd1 /games && echo "tabula-init: games mounted"
if [ -f /home/marker.txt ]; then echo "tabula-init: root marker $(/bin/busybox cat /home/marker.txt)"; fi
if [ -f /games/marker.txt ]; then echo "tabula-init: games marker $(/bin/busybox cat /games/marker.txt)"; fi
/bin/busybox cat /proc/sys/kernel/random/boot_id >/home/marker.txt
/bin/busybox cat /proc/sys/kernel/random/boot_id >/games/marker.txt
/bin/busybox umount /games
/bin/busybox sync
echo "tabula-init-done"
/bin/busybox poweroff -f
INIT
chmod +x "$T/root/sbin/init"
truncate -s 64M "$T/master.img"
mke2fs -q -F -t ext4 -b 4096 -d "$T/root" "$T/master.img" || tb_fail "mke2fs"
truncate -s 32M "$T/games.img"
mke2fs -q -F -t ext4 -b 4096 "$T/games.img" || tb_fail "mke2fs of the games disk"
state=$T/state
tb_import "$state" demo "$T/master.img"
tb_import "$state" games "$T/games.img"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# QEMU's user network reaches the host's loopback as 10.0.2.2.
cat >"$T/tabula.json" <<JSON
{ "state_dir": "$state", "reconnect_grace": "0s", "images": { "demo": {}, "games": {} },
  "clients": { "pc01": { "image": "demo", "policy": "rollback", "allow": ["127.0.0.0/8"],
                         "disks": { "games": { "image": "games", "policy": "persist" } } } } }
JSON
tb_start_tcp s "$T/tabula.json" 127.0.0.1 "$port"

boot()
{
  timeout -k 5 240 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
    -nic user,model=virtio-net-pci -kernel "$kernel" -initrd "$T/initrd.img" \
    -append "console=ttyS0 ip=dhcp root=/dev/nbd0 rw panic=-1 tabula.nbd=10.0.2.2:$port:pc01 tabula.disks=games" \
    </dev/null >"$T/boot-$1.log" 2>&1 || tb_fail "boot $1: qemu failed: $(tail -n 5 "$T/boot-$1.log")"
  tr -d '\r' <"$T/boot-$1.log" >"$T/boot-$1.console"
  grep -q '^tabula-init-done' "$T/boot-$1.console" ||
    tb_fail "boot $1 did not reach /sbin/init: $(grep -aE 'tabula|nbd|panic' "$T/boot-$1.console" | tail -n 8)"
  grep -q '^tabula-init: root /dev/nbd0' "$T/boot-$1.console" ||
    tb_fail "boot $1: the root is not /dev/nbd0: $(grep tabula-init "$T/boot-$1.console")"
  grep -q '^tabula-init: games mounted' "$T/boot-$1.console" ||
    tb_fail "boot $1: /dev/nbd1 (pc01/games) did not mount: $(grep -aE 'tabula|nbd' "$T/boot-$1.console" | tail -n 8)"
  tb_wait_idle "$state" pc01
  tb_wait_idle "$state" pc01/disks/games
}

echo "== boot 1"
boot 1
grep -q '^tabula-init: .* marker' "$T/boot-1.console" && tb_fail "boot 1 found a marker on a master"
for d in pc01 pc01/games; do
  tb_event "$state" ".type == \"session-start\" and .client == \"$d\" and .boot == \"token\"" \
    "boot 1's session of $d, told by its boot id"
done
[ "$(jq -r .boot.token "$state/clients/pc01/session.json")" = \
  "$(jq -r .boot.token "$state/clients/pc01/disks/games/session.json")" ] ||
  tb_fail "both disks must be of one boot id"
echo "== boot 2: the root rolled back, the games disk kept"
boot 2
grep -q '^tabula-init: root marker' "$T/boot-2.console" && tb_fail "boot 2 saw boot 1's root file: not rolled back"
grep -q '^tabula-init: games marker' "$T/boot-2.console" ||
  tb_fail "boot 2 must see the games disk's marker of boot 1: $(grep tabula-init "$T/boot-2.console")"
[ "$(tb_count_events session-start pc01 "$state")" = 2 ] || tb_fail "two boots: two sessions of pc01"
[ "$(tb_count_events session-start pc01/games "$state")" = 2 ] || tb_fail "two boots: two sessions of pc01/games"
tb_event "$state" '.type == "rollback" and .client == "pc01"' "boot 2's rollback of the root"
[ "$(tb_count_events rollback pc01/games "$state")" = 0 ] || tb_fail "pc01/games is persist"
tb_stop s
tb_check_logs
echo PASS
