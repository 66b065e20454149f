# SPDX-License-Identifier: BSD-3-Clause
# tests/ibft-functions.sh: a disk that iPXE can `sanboot`, for
# tests/iscsi-ibft.sh (sourced after lab-functions.sh).
#
# The disk is what a Windows PC's disk is to iPXE: an MBR with boot code and
# an active partition whose boot sector loads the operating system through
# the BIOS (int 13h, which iPXE's sanboot hooks onto the iSCSI target).  Here
# the operating system is Linux: partition 1 is FAT with syslinux (installed
# with Debian's syslinux, which writes the image through mtools: nothing is
# mounted), Debian's cloud kernel and the initramfs of
# `scripts/mkguest.sh --ibft`; partition 2 is the guest's ext4 root
# (mkguest.sh --rootfs).  The kernel command line says tabula.ibft=1: the
# initramfs logs into the target named in the iBFT that iPXE left in memory
# and mounts /dev/sda2, the same disk iPXE booted.
#
#   ib_disk IMG DIR   DIR (files of the test) + the guest's rootfs -> IMG
#
# Layout: 1 MiB (MBR, syslinux's mbr.bin), 32 MiB FAT16 (type 0e, active),
# 64 MiB ext4 with 4 KiB blocks, every inode table written now.

tb_require mkfs.vfat mcopy syslinux sfdisk mke2fs
[ -f /usr/lib/syslinux/mbr/mbr.bin ] ||
  tb_skip "syslinux's MBR is missing (apt-get install syslinux-common)"
[ -x /usr/sbin/iscsistart ] || tb_skip "iscsistart is missing (apt-get install open-iscsi)"
IB_BOOT=$abs_top_builddir/tests/ibft-boot
"$TL_MKGUEST" --ibft "$IB_BOOT" >/dev/null || tb_fail "scripts/mkguest.sh --ibft failed"
IB_MIB=1048576

ib_disk()
{
  _fat=$TB_TMP/disk-fat.img
  _root=$TB_TMP/disk-root.img
  rm -f "$_fat" "$1"
  "$TL_MKGUEST" --rootfs "$2" >/dev/null || tb_fail "mkguest.sh --rootfs $2"
  truncate -s 64M "$_root"
  mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -L tabula-ibft -d "$2" "$_root" ||
    tb_fail "mke2fs -d $2"
  mkfs.vfat -F 16 -n TABULABOOT -C "$_fat" 32768 >/dev/null || tb_fail "mkfs.vfat"
  cat >"$TB_TMP/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT tabula
PROMPT 0
TIMEOUT 0
LABEL tabula
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet panic=-1 no_timer_check root=/dev/sda2 tabula.ibft=1 tabula.do=ask
EOF
  MTOOLS_SKIP_CHECK=1 mcopy -i "$_fat" "$IB_BOOT/vmlinuz" ::/vmlinuz || tb_fail "mcopy vmlinuz"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$_fat" "$IB_BOOT/initramfs.cpio.gz" ::/initrd.gz || tb_fail "mcopy initrd"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$_fat" "$TB_TMP/syslinux.cfg" ::/syslinux.cfg || tb_fail "mcopy syslinux.cfg"
  syslinux --install "$_fat" || tb_fail "syslinux --install"
  truncate -s $((97 * IB_MIB)) "$1"
  sfdisk -q "$1" <<EOF || tb_fail "sfdisk"
label: dos
start=2048, size=65536, type=e, bootable
start=67584, size=131072, type=83
EOF
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$1" bs=440 count=1 conv=notrunc status=none || tb_fail "dd mbr.bin"
  dd if="$_fat" of="$1" bs=$IB_MIB seek=1 conv=notrunc,sparse status=none || tb_fail "dd the FAT partition"
  dd if="$_root" of="$1" bs=$IB_MIB seek=33 conv=notrunc,sparse status=none || tb_fail "dd the root partition"
  rm -f "$_fat" "$_root"
}

# ib_root IMG OUT: partition 2 (the root) of disk IMG into OUT.
ib_root()
{
  dd if="$1" of="$2" bs=$IB_MIB skip=33 count=64 status=none || tb_fail "dd the root partition out of $1"
}
