# SPDX-License-Identifier: BSD-3-Clause
# tests/initramfs-functions.sh: the real-PC initramfs (sourced after
# functions.sh and tb_setup).  Debian's own mkinitramfs with tabula's
# initramfs-tools hook (conf/initramfs-tools), as README's "The initramfs of
# a real PC" has an administrator build it.
#
#   ti_mkinitramfs DIR   the initramfs in DIR/initrd.img (checked to hold the
#                        hook's script, nbd-client, tabula-nbd-persist and
#                        nbd.ko); sets kernel (the cloud kernel's path) and kver

tb_require qemu-system-x86_64 mkinitramfs lsinitramfs mke2fs jq python3 timeout
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || tb_skip "no cloud kernel in /boot (apt-get install linux-image-cloud-amd64)"
kver=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$kver" ] || tb_skip "no modules for $kver"
[ -x /bin/busybox ] || tb_skip "/bin/busybox is missing (apt-get install busybox-static)"
[ -x /usr/sbin/nbd-client ] || [ -x /sbin/nbd-client ] || tb_skip "nbd-client is not installed"

ti_mkinitramfs()
{
  local dir=$1 persist=$abs_top_builddir/restored/tabula-nbd-persist f
  [ -x "$persist" ] || tb_fail "$persist was not built"
  echo "== mkinitramfs with tabula's hook"
  cp -r /etc/initramfs-tools "$dir/itc"
  cp "$abs_top_srcdir/conf/initramfs-tools/hooks/tabula" "$dir/itc/hooks/"
  mkdir -p "$dir/itc/scripts/local-top"
  cp "$abs_top_srcdir/conf/initramfs-tools/scripts/local-top/tabula" "$dir/itc/scripts/local-top/"
  chmod +x "$dir/itc/hooks/tabula" "$dir/itc/scripts/local-top/tabula"
  TABULA_NBD_PERSIST=$persist mkinitramfs -d "$dir/itc" -o "$dir/initrd.img" "$kver" \
    >"$dir/mkinitramfs.log" 2>&1 || tb_fail "mkinitramfs: $(tail -n 5 "$dir/mkinitramfs.log")"
  lsinitramfs "$dir/initrd.img" >"$dir/initrd.list"
  for f in scripts/local-top/tabula sbin/nbd-client sbin/tabula-nbd-persist drivers/block/nbd.ko; do
    grep -q "$f" "$dir/initrd.list" || tb_fail "the initramfs lacks $f"
  done
}
