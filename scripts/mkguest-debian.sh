#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# scripts/mkguest-debian.sh: a Debian guest whose PID 1 is systemd, for
# tests/deploy-systemd.sh (README's Deployment run as written, under a real
# systemd).
#
#   mkguest-debian.sh CACHE_DIR
#       CACHE_DIR/debian-systemd.img: a raw ext4 image (2 GiB, sparse) of a
#       Debian "minbase" userland made with debootstrap, of this machine's
#       release (its /etc/os-release) from the mirror apt uses here, with
#       systemd as init, udev, the packages of scripts/packages-runtime.txt
#       (what an appliance runs on: no compiler, no -dev package) and
#       libnbd-bin (the test's client: nbdinfo, nbdcopy).  Nothing of the
#       host or the build tree is in it.  The first build downloads about
#       60 MB and takes 2-4 minutes; the image is reused while this script
#       and the package list are unchanged (CACHE_DIR/debian-systemd.stamp),
#       and the downloaded packages stay in CACHE_DIR/debs for a rebuild.
#       Concurrent callers wait for one build (flock on CACHE_DIR/.lock).
#       Exit 3 when the mirror cannot be reached (a test then skips).
#
# Boot it with the kernel and initramfs of scripts/mkguest.sh --boot, which
# hands over to the image's /sbin/init given tabula.init=/sbin/init, and a
# second disk (the "payload", ext4, holding run.sh):
#
#   qemu-img create -f qcow2 -b CACHE_DIR/debian-systemd.img -F raw root.qcow2
#   qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic -no-reboot -nic none \
#     -kernel BOOT/vmlinuz -initrd BOOT/initramfs.cpio.gz \
#     -append 'console=ttyS0 root=/dev/vda panic=-1 quiet tabula.init=/sbin/init' \
#     -drive file=root.qcow2,format=qcow2,if=virtio -drive file=payload.img,format=raw,if=virtio
#
# The guest's tabula-guest-run.service (after multi-user.target) mounts the
# payload (/dev/vdb) on /mnt/tabula, runs /mnt/tabula/run.sh as root with
# its output on the serial console (QEMU's stdout), unmounts the payload
# (what run.sh wrote there is then on the host's payload.img) and powers off.
set -eu

die()
{
  echo "mkguest-debian.sh: $*" >&2
  exit "${2:-1}"
}

usage()
{
  sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}
case ${1:-} in
-h | --help)
  usage
  exit 0
  ;;
'' | -*)
  usage >&2
  exit 2
  ;;
esac
cache=$1
top=$(cd "$(dirname "$0")/.." && pwd)
image=$cache/debian-systemd.img
# The guest's packages besides scripts/packages-runtime.txt: the init and the
# test's NBD client.
EXTRA_PACKAGES="systemd systemd-sysv udev libnbd-bin"
IMAGE_SIZE=2G
BUILD_TIMEOUT=${TB_DEBOOTSTRAP_TIMEOUT:-900}

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, device nodes in the image)"
for cmd in debootstrap mke2fs flock curl; do
  command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (apt-get install debootstrap e2fsprogs util-linux curl)"
done

# The release of this machine: the binaries built here link its libraries.
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || die "/etc/os-release names no VERSION_CODENAME"

# The Debian mirror apt uses here (deb822 .sources or a sources.list line),
# or TB_DEBIAN_MIRROR.
mirror()
{
  [ -z "${TB_DEBIAN_MIRROR:-}" ] || { echo "$TB_DEBIAN_MIRROR"; return; }
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (ok && uri != "") { print uri; exit } ok = 0; uri = ""; next }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (ok && uri != "") print uri }' "$f"
  done | head -n 1
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
}
url=$(mirror | head -n 1)
[ -n "$url" ] || die "no Debian mirror for $suite in /etc/apt/sources.list*: set TB_DEBIAN_MIRROR"

packages=$(sed -e 's/#.*//' "$top/scripts/packages-runtime.txt" | tr -s ' \n' '\n' | sed '/^$/d')
packages="$packages $EXTRA_PACKAGES"
# The script without its comments: a change of its text alone keeps the image.
stamp="$suite $url $(echo $packages) $(grep -v '^#' "$0" | cksum)"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$image" ] && [ -f "$cache/debian-systemd.stamp" ] &&
  [ "$(cat "$cache/debian-systemd.stamp")" = "$stamp" ]; then
  echo "$image"
  exit 0
fi

curl -fsS --max-time 30 -o /dev/null "$url/dists/$suite/Release" 2>/dev/null ||
  die "the Debian mirror $url ($suite) cannot be reached" 3

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$cache/debs"
echo "mkguest-debian.sh: debootstrap $suite from $url into $image (a few minutes, once)" >&2
if ! timeout "$BUILD_TIMEOUT" debootstrap --variant=minbase --cache-dir="$cache/debs" \
  --include="$(echo $packages | tr ' ' ,)" "$suite" "$root" "$url" >"$work/debootstrap.log" 2>&1; then
  tail -n 20 "$work/debootstrap.log" >&2
  die "debootstrap failed or took more than $BUILD_TIMEOUT s (log above)"
fi

# The test's runner: the payload disk's /run.sh after the system is up.
cat >"$root/etc/systemd/system/tabula-guest-run.service" <<'UNIT'
[Unit]
Description=tabula test guest: /run.sh of the payload disk (scripts/mkguest-debian.sh)
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStartPre=/bin/mount -t ext4 /dev/vdb /mnt/tabula
ExecStart=/bin/sh /mnt/tabula/run.sh
ExecStopPost=-/bin/umount /mnt/tabula
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/mnt/tabula"
ln -sf ../tabula-guest-run.service "$root/etc/systemd/system/multi-user.target.wants/"
# No login prompt on the console the runner writes to.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
echo tabula-guest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 tabula-guest\n' >"$root/etc/hosts"
: >"$root/etc/machine-id" # systemd makes one at the first boot of each copy
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

rm -f "$work/image"
truncate -s "$IMAGE_SIZE" "$work/image"
mke2fs -q -F -t ext4 -L tabula-debian -d "$root" "$work/image" || die "mke2fs -d $root failed"
mv -f "$work/image" "$image"
echo "$stamp" >"$cache/debian-systemd.stamp"
echo "$image"
