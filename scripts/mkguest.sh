#!/bin/sh
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
#   mkguest.sh --rootfs DIR
#       Adds to DIR what the guest's disk needs: /bin/busybox and
#       /tabula/run.sh (plus empty /dev, /proc, /tmp).  Then
#       `mke2fs -t ext4 -d DIR image.raw 64M` makes a master image.
#
# What the guest does comes from the kernel command line:
#   tabula.do=ACTION[,ACTION...]   each ACTION is VERB[:ARG[:ARG]]
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

# The guest's modules: what virtio-blk over PCI needs, in load order.
GUEST_MODULES="virtio_pci virtio_blk"

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

# write_init FILE: the initramfs's /init (busybox sh).
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
root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case $arg in
  tabula.do=*) actions=${arg#tabula.do=} ;;
  root=/dev/*) root=${arg#root=} ;;
  esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
mkdir -p /newroot
if ! [ -b "$root" ]; then
  echo "tabula-done failed no disk $root"
elif ! mount -t ext4 "$root" /newroot; then
  echo "tabula-done failed cannot mount $root"
elif ! [ -f /newroot/tabula/run.sh ]; then
  echo "tabula-done failed no /tabula/run.sh on $root"
else
  echo
  echo "tabula-booted $(cut -d' ' -f1 /proc/uptime)"
  mkdir -p /newroot/dev /newroot/proc
  mount -t devtmpfs devtmpfs /newroot/dev
  mount -t proc proc /newroot/proc
  chroot /newroot /bin/busybox sh /tabula/run.sh "$actions"
  umount /newroot/proc /newroot/dev
  sync
  umount /newroot || echo "tabula-error cannot unmount $root"
fi
echo "tabula-poweroff $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
INIT
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
make_boot()
{
  dir=$1
  kernel=$2
  [ -r "$kernel" ] || die "cannot read the kernel $kernel (apt-get install linux-image-cloud-amd64; run as root)"
  need_static_busybox
  kver=${kernel##*/vmlinuz-}
  moddir=/lib/modules/$kver
  [ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep is missing for $kernel"
  stamp="$kernel $(stat -c %Y:%s "$kernel") $(cksum <"$0")"
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
  for applet in sh mount umount insmod mkdir sleep cat cut chroot sync poweroff; do
    ln -s busybox "$root/bin/$applet"
  done
  write_init "$root/init"
  : >"$root/modules.order"
  for m in $(module_load_order "$moddir" $GUEST_MODULES); do
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
while [ $# -gt 0 ]; do
  case $1 in
  --boot | --rootfs)
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
--boot)
  [ -n "$kernel" ] || kernel=$(newest_kernel)
  [ -n "$kernel" ] || die "no kernel in /boot: apt-get install linux-image-cloud-amd64"
  make_boot "$target" "$kernel"
  echo "$target/vmlinuz $target/initramfs.cpio.gz"
  ;;
*)
  usage >&2
  exit 2
  ;;
esac
