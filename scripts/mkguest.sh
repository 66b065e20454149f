#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# scripts/mkguest.sh: a small Linux guest that boots from a tabula export.
#
# Built from Debian packages already on the machine: the kernel from
# linux-image-cloud-amd64 (/boot/vmlinuz-*-cloud-amd64), busybox from
# busybox-static, the virtio modules from /lib/modules.  Two pieces:
#
#   mkguest.sh --boot DIR [--kernel VMLINUZ]
#       DIR/vmlinuz and DIR/initramfs.cpio.gz.  The initramfs's /init mounts
#       proc, sys and devtmpfs, loads the virtio modules the kernel lacks,
#       mounts /dev/vda (ext4) on /newroot, runs /tabula/run.sh there (chroot),
#       unmounts it (which flushes the disk) and powers off.  Rebuilt only when
#       the kernel or this script changed (DIR/stamp), so callers may cache DIR.
#   mkguest.sh --pxe DIR --persist HELPER [--kernel VMLINUZ]
#       The same for a diskless PC booted over PXE (scripts/lab.sh, the
#       tests/lab-*.sh): the initramfs also holds Debian's nbd-client and
#       HELPER (tabula-nbd-persist, built in restored/), each with the
#       libraries it links, and loads virtio_net and nbd instead of
#       virtio_blk.  Given tabula.nbd=SERVER:PORT:ID on the command line, /init
#       brings the first NIC up with busybox udhcpc (the cloud kernel has no
#       built-in NIC driver, so the kernel's own ip=dhcp cannot), attaches
#       /dev/nbd0 with
#         nbd-client SERVER PORT /dev/nbd0 -N ID@boot/BOOT_ID -persist -b 4096
#       (BOOT_ID is /proc/sys/kernel/random/boot_id: each boot is recognised
#       by it; tabula.bootid=0 sends the plain ID), starts
#         tabula-nbd-persist /dev/nbd0 SERVER PORT ID@boot/BOOT_ID
#       (nbd-client 3.24's -persist does nothing over netlink: the helper
#       reattaches the device after a dead link), mounts it as the root and
#       goes on as above; before it powers off or reboots it disconnects
#       cleanly (nbd-client -d).
#   mkguest.sh --ibft DIR [--kernel VMLINUZ]
#       The same for a PC that iPXE booted with `sanboot iscsi:...` (the path
#       Windows takes; tests/iscsi-ibft.sh): the initramfs holds Debian's
#       iscsistart (open-iscsi) with its libraries and loads virtio_net,
#       iscsi_tcp, iscsi_ibft and sd_mod.  Given tabula.ibft=1 on the command
#       line, /init reads the iBFT iPXE left in memory (/sys/firmware/ibft),
#       brings the NIC up as it says (iscsistart -N), logs into the target
#       it names with its initiator name and CHAP (iscsistart -b) and mounts
#       root= (e.g. /dev/sda2, a partition of that disk) as above.  The
#       kernel and this initramfs go onto the disk itself, behind a
#       bootloader (tests/ibft-functions.sh builds such a disk).
#   mkguest.sh --rootfs DIR
#       Adds to DIR what the guest's disk needs: /bin/busybox and
#       /tabula/run.sh (plus empty /dev, /proc, /tmp).  Then
#       `mke2fs -t ext4 -d DIR image.raw 64M` makes a master image.
#
# What the guest does comes from the kernel command line:
#   tabula.init=PATH   hand over to PATH on the mounted root (switch_root)
#                      instead of running actions: a whole system with its
#                      own init (scripts/mkguest-debian.sh, systemd)
#   tabula.do=ACTION[,ACTION...]   each ACTION is VERB[:ARG[:ARG]]
#   tabula.do=ask       print "tabula-ask" once the root is mounted and read
#                       the ACTIONs as one line from the console: a PC that
#                       reboots gets each boot's actions from the host
#     write:PATH:TEXT     TEXT and a newline into PATH (directories created)
#     random:PATH:KIB     KIB KiB of random bytes into PATH
#     rm:PATH             delete PATH (recursively)
#     cat:PATH            print "tabula-cat PATH: LINE" for each line (or
#                         "tabula-cat PATH: (no such file)")
#     list[:DIR]          print "tabula-file SHA256 PATH" for every regular file
#                         under DIR (default /), sorted by path
#     sync                flush the filesystem to the disk
#     sleep:SECONDS
#     pause[:SECONDS]     sync, print "tabula-paused", wait for a line on the
#                         console (qemu's stdin) or SECONDS (default 120)
#     reboot              reboot instead of powering off at the end (a PXE PC
#                         then boots again over the network)
#   TEXT and PATH cannot hold spaces, commas or colons.
# The guest prints "tabula-done ok" when every action succeeded, else
# "tabula-done failed ACTION", then powers off; with -no-reboot and panic=-1
# QEMU exits either way.  A boot:
#
#   qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot \
#     -kernel DIR/vmlinuz -initrd DIR/initramfs.cpio.gz \
#     -append 'console=ttyS0 root=/dev/vda panic=-1 quiet tabula.do=list' \
#     -drive 'file=nbd+unix:///pc01?socket=SOCK,format=raw,if=virtio'
#
# The serial console (QEMU's stdout) carries the tabula-* lines.
set -eu

usage()
{
  sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die()
{
  echo "mkguest.sh: $*" >&2
  exit 1
}

# The guest's modules: what virtio-blk over PCI needs, in load order; for a
# PXE boot, the virtio NIC and the kernel's NBD client instead.
GUEST_MODULES="virtio_pci virtio_blk"
PXE_MODULES="virtio_pci virtio_net nbd"
IBFT_MODULES="virtio_pci virtio_net iscsi_tcp iscsi_ibft sd_mod"
# Busybox applets the init calls (the PXE boot's list adds its own).
GUEST_APPLETS="sh mount umount insmod mkdir sleep cat cut chroot switch_root sync poweroff"
PXE_APPLETS="ip udhcpc ls grep head awk reboot"
NBD_CLIENT=/sbin/nbd-client
ISCSISTART=/usr/sbin/iscsistart

# newest_kernel: the newest cloud kernel, else the newest kernel.
newest_kernel()
{
  k=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$k" ] || k=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
  echo "$k"
}

# module_load_order KVER MOD...: module paths (relative to /lib/modules/KVER)
# with their dependencies first, each once.  Built-in modules print nothing.
module_load_order()
{
  awk -v mods="$*" '
    FNR == 1 { file++ }
    file == 1 {                       # modules.dep: "path: dep dep ..."
      path = $1; sub(/:$/, "", path)
      name = path; sub(/.*\//, "", name); sub(/\.ko.*$/, "", name); gsub(/-/, "_", name)
      bypath[name] = path; deps[path] = ""
      for (i = 2; i <= NF; i++) deps[path] = deps[path] " " $i
    }
    function load(path,   n, d, i) {
      if (path in seen) return
      seen[path] = 1
      # modules.dep lists the deepest dependency last: load from the end.
      n = split(deps[path], d, " ")
      for (i = n; i >= 1; i--) load(d[i])
      print path
    }
    END {
      n = split(mods, m, " ")
      for (i = 1; i <= n; i++) {
        name = m[i]; gsub(/-/, "_", name)
        if (name in bypath) load(bypath[name])
      }
    }' "$1/modules.dep"
}

# write_init FILE: the initramfs's /init (busybox sh), for both kinds of boot.
write_init()
{
  cat >"$1" <<'INIT'
#!/bin/busybox sh
# The tabula test guest's init (scripts/mkguest.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /modules.order); do
  insmod "/$m" || echo "tabula-error insmod $m failed"
done
actions=
init=
root=/dev/vda
nbd=
bootid=1
nbdopts=
ibft=
for arg in $(cat /proc/cmdline); do
  case $arg in
  tabula.do=*) actions=${arg#tabula.do=} ;;
  tabula.nbd=*) nbd=${arg#tabula.nbd=} ;;
  tabula.bootid=*) bootid=${arg#tabula.bootid=} ;;
  tabula.nbdopts=*) nbdopts=${arg#tabula.nbdopts=} ;;
  tabula.init=/*) init=${arg#tabula.init=} ;;
  tabula.ibft=*) ibft=${arg#tabula.ibft=} ;;
  root=/dev/*) root=${arg#root=} ;;
  esac
done
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# attach_nbd SERVER:PORT:ID: DHCP on the first NIC, then the kernel's NBD
# client on $root (/dev/nbd0).
attach_nbd()
{
  server=${1%%:*}
  rest=${1#*:}
  port=${rest%%:*}
  id=${rest#*:}
  ip link set lo up
  i=0
  nic=
  while [ -z "$nic" ] && [ $i -lt 100 ]; do
    nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    [ -n "$nic" ] || sleep 0.1
    i=$((i + 1))
  done
  [ -n "$nic" ] || { echo "tabula-done failed no network interface"; return 1; }
  ip link set "$nic" up
  udhcpc -i "$nic" -s /bin/udhcpc.script -q -n -t 20 -T 1 >/dev/null 2>&1 ||
    { echo "tabula-done failed no DHCP lease on $nic"; return 1; }
  echo "tabula-net $nic $(ip -4 -o addr show dev "$nic" | awk '{ print $4 }') $(uptime_s)"
  name=$id
  [ "$bootid" = 0 ] || name="$id@boot/$(cat /proc/sys/kernel/random/boot_id)"
  echo "tabula-nbd $server $port $name"
  nbd-client "$server" "$port" "$root" -N "$name" -persist -b 4096 $nbdopts ||
    { echo "tabula-done failed nbd-client $server $port $name"; return 1; }
  i=0
  while [ "$(cat "/sys/block/${root#/dev/}/size" 2>/dev/null || echo 0)" = 0 ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  tabula-nbd-persist "$root" "$server" "$port" "$name" &
}

# attach_ibft: the iSCSI disk iPXE booted from, as its iBFT says: the NIC
# configured from it (iscsistart -N), then a login with its initiator name,
# target and CHAP (iscsistart -b); $root is a partition of that disk.
attach_ibft()
{
  ip link set lo up
  i=0
  while ! [ -d /sys/firmware/ibft/target0 ] && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  [ -d /sys/firmware/ibft/target0 ] ||
    { echo "tabula-done failed no iBFT (was this PC booted by iPXE's sanboot?)"; return 1; }
  # The NIC iPXE booted from, by its MAC (a virtio NIC's net device sits
  # below the PCI device the iBFT names, not in it).
  mac=$(cat /sys/firmware/ibft/ethernet0/mac)
  i=0
  nic=
  while [ -z "$nic" ] && [ $i -lt 100 ]; do
    for n in $(ls /sys/class/net); do
      [ "$(cat "/sys/class/net/$n/address")" != "$mac" ] || nic=$n
    done
    [ -n "$nic" ] || sleep 0.1
    i=$((i + 1))
  done
  [ -n "$nic" ] || { echo "tabula-done failed no network interface with the iBFT's MAC $mac"; return 1; }
  ibft_target=$(cat /sys/firmware/ibft/target0/target-name)
  ibft_initiator=$(cat /sys/firmware/ibft/initiator/initiator-name)
  # A line of its own: the bootloader's last screen codes end without one.
  echo
  echo "tabula-ibft $(cat /sys/firmware/ibft/target0/ip-addr):$(cat /sys/firmware/ibft/target0/port) $ibft_target $ibft_initiator $(uptime_s)"
  iscsistart -N >/tmp/iscsistart-N.log 2>&1 ||
    { echo "tabula-done failed iscsistart -N: $(tail -n 1 /tmp/iscsistart-N.log)"; return 1; }
  echo "tabula-net $nic $(ip -4 -o addr show dev "$nic" | awk '{ print $4 }') $(uptime_s)"
  iscsistart -b >/tmp/iscsistart-b.log 2>&1 ||
    { echo "tabula-done failed iscsistart -b: $(tail -n 1 /tmp/iscsistart-b.log)"; return 1; }
  echo "tabula-iscsi $ibft_target $(uptime_s)"
}

# finish: unmount (flushes the disk), detach an NBD disk, power off or reboot.
finish()
{
  if [ "$mounted" = yes ]; then
    umount /newroot/proc /newroot/dev
    sync
    umount /newroot || echo "tabula-error cannot unmount $root"
  fi
  [ -z "$nbd" ] || nbd-client -d "$root" >/dev/null 2>&1
  case ",$actions," in
  *,reboot,*)
    echo "tabula-reboot $(uptime_s)"
    reboot -f
    ;;
  esac
  echo "tabula-poweroff $(uptime_s)"
  poweroff -f
}

mounted=no
mkdir -p /newroot
if [ -n "$nbd" ] && ! attach_nbd "$nbd"; then
  finish
fi
if [ -n "$ibft" ] && ! attach_ibft; then
  finish
fi
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
if ! [ -b "$root" ]; then
  echo "tabula-done failed no disk $root"
elif ! mount -t ext4 -o noatime "$root" /newroot; then
  echo "tabula-done failed cannot mount $root"
elif [ -n "$init" ]; then
  # A whole system (scripts/mkguest-debian.sh): its own init takes over
  # with /dev, /proc and /sys already mounted, as from any initramfs.
  echo "tabula-booted $(uptime_s)"
  for m in dev proc sys; do
    mkdir -p "/newroot/$m" && mount -o move "/$m" "/newroot/$m"
  done
  exec switch_root /newroot "$init"
elif ! [ -f /newroot/tabula/run.sh ]; then
  echo "tabula-done failed no /tabula/run.sh on $root"
else
  mounted=yes
  echo
  echo "tabula-booted $(uptime_s)"
  if [ "$actions" = ask ]; then
    echo "tabula-ask"
    read -r actions || actions=
  fi
  mkdir -p /newroot/dev /newroot/proc
  mount -t devtmpfs devtmpfs /newroot/dev
  mount -t proc proc /newroot/proc
  chroot /newroot /bin/busybox sh /tabula/run.sh "$actions"
fi
finish
INIT
  chmod 755 "$1"
}

# write_udhcpc_script FILE: what busybox udhcpc runs with the lease it got.
write_udhcpc_script()
{
  cat >"$1" <<'DHCP'
#!/bin/busybox sh
case $1 in
deconfig) ip -4 addr flush dev "$interface" ;;
bound | renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -z "$router" ] || ip route add default via "${router%% *}" dev "$interface"
  ;;
esac
exit 0
DHCP
  chmod 755 "$1"
}

# write_run FILE: /tabula/run.sh on the guest's disk (runs chrooted there).
write_run()
{
  cat >"$1" <<'RUN'
#!/bin/busybox sh
# The tabula test guest's actions (scripts/mkguest.sh --help): $1 is
# tabula.do from the kernel command line.
export PATH=/bin
act()
{
  verb=$1
  a1=${2:-}
  a2=${3:-}
  case $verb in
  write) mkdir -p "$(dirname "$a1")" && echo "$a2" >"$a1" ;;
  random) mkdir -p "$(dirname "$a1")" && dd if=/dev/urandom of="$a1" bs=1024 count="$a2" 2>/dev/null ;;
  rm) rm -rf "$a1" ;;
  cat)
    if [ -f "$a1" ]; then
      sed "s|^|tabula-cat $a1: |" "$a1"
    else
      echo "tabula-cat $a1: (no such file)"
    fi
    ;;
  list)
    find "${a1:-/}" -xdev -type f | sort | while read -r f; do
      echo "tabula-file $(sha256sum "$f" | cut -d' ' -f1) $f"
    done
    ;;
  sync) sync ;;
  sleep) sleep "$a1" ;;
  reboot) ;; # /init reboots at the end
  pause)
    sync
    echo "tabula-paused"
    read -t "${a1:-120}" line || true
    echo "tabula-resumed"
    ;;
  *)
    echo "tabula-error unknown action $verb"
    return 1
    ;;
  esac
}
IFS_SAVED=$IFS
IFS=,
set -f
for action in $1; do
  IFS=:
  set -- $action
  IFS=$IFS_SAVED
  if ! act "$@"; then
    echo "tabula-done failed $action"
    exit 1
  fi
  IFS=,
done
sync
echo "tabula-done ok"
RUN
  chmod 755 "$1"
}

# need_static_busybox: the guest has no libc, so busybox must be static.
need_static_busybox()
{
  [ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static"
  ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' ||
    die "/bin/busybox is not static: apt-get install busybox-static"
}

make_rootfs()
{
  dir=$1
  need_static_busybox
  mkdir -p "$dir/bin" "$dir/tabula" "$dir/dev" "$dir/proc" "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  ln -sf busybox "$dir/bin/sh"
  write_run "$dir/tabula/run.sh"
}

# make_boot DIR KERNEL: DIR/vmlinuz and DIR/initramfs.cpio.gz, unless DIR/stamp
# says they were made from this kernel by this script.
# copy_with_libs ROOT FILE DEST: FILE to ROOT/DEST, and the shared libraries
# it links (as ldd resolves them here) into their own paths under ROOT.
copy_with_libs()
{
  mkdir -p "$1/$(dirname "$3")"
  cp -L "$2" "$1/$3"
  for f in $(ldd "$2" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$1/$(dirname "$f")"
    cp -L "$f" "$1/$f"
  done
}

# make_boot DIR KERNEL KIND: KIND "disk" (virtio-blk), "pxe" (NBD over the
# NIC) or "ibft" (the iSCSI disk iPXE booted from).
make_boot()
{
  dir=$1
  kernel=$2
  kind=$3
  [ -r "$kernel" ] || die "cannot read the kernel $kernel (apt-get install linux-image-cloud-amd64; run as root)"
  need_static_busybox
  kver=${kernel##*/vmlinuz-}
  moddir=/lib/modules/$kver
  [ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep is missing for $kernel"
  modules=$GUEST_MODULES
  applets=$GUEST_APPLETS
  stamp="$kind $kernel $(stat -c %Y:%s "$kernel") $(cksum <"$0")"
  if [ "$kind" = pxe ]; then
    [ -x "$NBD_CLIENT" ] || die "$NBD_CLIENT is missing: apt-get install nbd-client"
    [ -n "$persist" ] && [ -x "$persist" ] ||
      die "--pxe needs --persist PATH of tabula-nbd-persist (built in BUILD/restored/)"
    case $persist in /*) ;; *) persist=$(pwd)/$persist ;; esac
    modules=$PXE_MODULES
    applets="$applets $PXE_APPLETS"
    stamp="$stamp $(stat -c %Y:%s "$NBD_CLIENT") $persist $(stat -c %Y:%s "$persist")"
  fi
  if [ "$kind" = ibft ]; then
    [ -x "$ISCSISTART" ] || die "$ISCSISTART is missing: apt-get install open-iscsi"
    modules=$IBFT_MODULES
    applets="$applets $PXE_APPLETS tail"
    stamp="$stamp $(stat -c %Y:%s "$ISCSISTART")"
  fi
  if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] &&
    [ -f "$dir/vmlinuz" ] && [ -f "$dir/initramfs.cpio.gz" ]; then
    return 0
  fi
  mkdir -p "$dir"
  work=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/newroot"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $applets; do
    ln -s busybox "$root/bin/$applet"
  done
  write_init "$root/init"
  if [ "$kind" = pxe ]; then
    write_udhcpc_script "$root/bin/udhcpc.script"
    copy_with_libs "$root" "$NBD_CLIENT" /bin/nbd-client
    copy_with_libs "$root" "$persist" /bin/tabula-nbd-persist
  fi
  if [ "$kind" = ibft ]; then
    copy_with_libs "$root" "$ISCSISTART" /bin/iscsistart
    mkdir -p "$root/tmp" "$root/run" "$root/etc/iscsi"
  fi
  : >"$root/modules.order"
  for m in $(module_load_order "$moddir" $modules); do
    mkdir -p "$root/$(dirname "$m")"
    case $m in
    *.ko) cp "$moddir/$m" "$root/$m" ;;
    *.ko.xz) xz -dc "$moddir/$m" >"$root/${m%.xz}" && m=${m%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$m" >"$root/${m%.zst}" && m=${m%.zst} ;;
    *.ko.gz) gzip -dc "$moddir/$m" >"$root/${m%.gz}" && m=${m%.gz} ;;
    *) die "unknown module format $m" ;;
    esac
    echo "$m" >>"$root/modules.order"
  done
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.cpio.gz"
  cp "$kernel" "$work/vmlinuz"
  # Each rename is atomic: a concurrent builder makes the same files.
  mv -f "$work/vmlinuz" "$dir/vmlinuz"
  mv -f "$work/initramfs.cpio.gz" "$dir/initramfs.cpio.gz"
  echo "$stamp" >"$work/stamp" && mv -f "$work/stamp" "$dir/stamp"
  rm -rf "$work"
  trap - EXIT
}

mode=
target=
kernel=
persist=
while [ $# -gt 0 ]; do
  case $1 in
  --boot | --pxe | --ibft | --rootfs)
    [ $# -ge 2 ] || die "$1 needs a directory (try --help)"
    mode=$1
    target=$2
    shift 2
    ;;
  --kernel)
    [ $# -ge 2 ] || die "--kernel needs a file"
    kernel=$2
    shift 2
    ;;
  --persist)
    [ $# -ge 2 ] || die "--persist needs the path of tabula-nbd-persist"
    persist=$2
    shift 2
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown argument $1 (try --help)" ;;
  esac
done

case $mode in
--rootfs)
  make_rootfs "$target"
  echo "$target: guest root filesystem content (busybox, /tabula/run.sh)"
  ;;
--boot | --pxe | --ibft)
  [ -n "$kernel" ] || kernel=$(newest_kernel)
  [ -n "$kernel" ] || die "no kernel in /boot: apt-get install linux-image-cloud-amd64"
  kind=disk
  [ "$mode" = --pxe ] && kind=pxe
  [ "$mode" = --ibft ] && kind=ibft
  make_boot "$target" "$kernel" "$kind"
  echo "$target/vmlinuz $target/initramfs.cpio.gz"
  ;;
*)
  usage >&2
  exit 2
  ;;
esac
