#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tabula-fuse reads guest filesystems byte for byte: ext4, ext2, FAT12/16/32,
# NTFS and exFAT, unpartitioned, in an MBR (with a logical partition) and in a
# GPT disk.  The images are served by nbdkit's file plugin as exports named
# the way the appliance names them, and the view finds them with --uri
# (NBD_OPT_LIST).  Everything is read-only: writes answer EROFS.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs mkfs.vfat mcopy sfdisk mkfs.exfat ntfs-3g

T=$TB_TMP
tf_src "$T/src"
mkdir "$T/src-ext"
cp -a "$T/src"/. "$T/src-ext"/
ln -s hello.txt "$T/src-ext/link-to-hello"
ln -s /etc/nowhere "$T/src-ext/a/dangling"

mkdir "$T/exports"
E=$T/exports
tf_ext4 "$E/ext4@1" "$T/src-ext" 32M
tf_fat "$E/fat@1" "$T/src" 16M 16
tf_fat "$E/fat@2" "$T/src" 4M 12
tf_ntfs "$E/ntfs@1" "$T/src" 24M
cp "$E/ext4@1" "$E/pc01@live"

# GPT: FAT32, ext4, NTFS, exFAT.
tf_fat "$T/p1" "$T/src" 40M 32
tf_ext4 "$T/p2" "$T/src-ext" 24M
tf_ntfs "$T/p3" "$T/src" 24M
tf_exfat "$T/p4" "$T/src" 16M
truncate -s 110M "$E/gpt@1"
sfdisk -q "$E/gpt@1" <<EOF
label: gpt
start=2048, size=40M, type=linux
size=24M, type=linux
size=24M, type=linux
size=16M, type=linux
EOF
off=2048
for p in p1 p2 p3 p4; do
  dd if="$T/$p" of="$E/gpt@1" bs=512 seek=$off conv=notrunc,sparse status=none
  off=$((off + $(stat -c %s "$T/$p") / 512))
done

# MBR: FAT16 primary, ext2 in a logical partition.
tf_fat "$T/m1" "$T/src" 16M 16
truncate -s 16M "$T/m5"
mke2fs -q -F -t ext2 -d "$T/src-ext" "$T/m5" >/dev/null
truncate -s 40M "$E/mbr@1"
sfdisk -q "$E/mbr@1" <<EOF
label: dos
start=2048, size=16M, type=6
start=34816, size=20M, type=5
start=36864, size=16M, type=83
EOF
dd if="$T/m1" of="$E/mbr@1" bs=512 seek=2048 conv=notrunc status=none
dd if="$T/m5" of="$E/mbr@1" bs=512 seek=36864 conv=notrunc status=none

tb_start_plugin srv file dir="$E"
M=$T/mnt
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock"

# The tree.
[ "$(ls "$M")" = "$(printf 'clients\nimages')" ] || tb_fail "root lists: $(ls "$M")"
[ "$(ls "$M/clients")" = pc01 ] || tb_fail "clients lists: $(ls "$M/clients")"
[ "$(ls "$M/images" | tr '\n' ' ')" = "ext4 fat gpt mbr ntfs " ] ||
  tb_fail "images lists: $(ls "$M/images")"
[ "$(ls "$M/images/fat" | tr '\n' ' ')" = "1 2 " ] || tb_fail "fat versions: $(ls "$M/images/fat")"
for f in disk fs changes.txt status.json sessions; do
  [ -e "$M/clients/pc01/$f" ] || tb_fail "clients/pc01/$f is missing"
done
[ ! -e "$M/clients/pc02" ] || tb_fail "clients/pc02 exists"
[ ! -e "$M/images/ext4/2" ] || tb_fail "images/ext4/2 exists"

# Raw disks are the images.
cmp -s "$M/images/gpt/1/disk" "$E/gpt@1" || tb_fail "images/gpt/1/disk differs from the image"

# Volumes are named for what they are.
vols()
{
  ls "$M/images/$1/1/fs" | tr '\n' ' '
}
[ "$(vols ext4)" = "whole-ext4 " ] || tb_fail "ext4 volumes: $(vols ext4)"
[ "$(vols ntfs)" = "whole-ntfs " ] || tb_fail "ntfs volumes: $(vols ntfs)"
[ "$(vols fat)" = "whole-fat16 " ] || tb_fail "fat volumes: $(vols fat)"
[ "$(ls "$M/images/fat/2/fs")" = "whole-fat12" ] || tb_fail "fat12: $(ls "$M/images/fat/2/fs")"
[ "$(vols gpt)" = "p1-fat32 p2-ext4 p3-ntfs p4-exfat " ] || tb_fail "gpt volumes: $(vols gpt)"
[ "$(vols mbr)" = "p1-fat16 p5-ext2 " ] || tb_fail "mbr volumes: $(vols mbr)"

# Every file byte for byte.
tf_same "$T/src-ext" "$M/images/ext4/1/fs/whole-ext4"
tf_same "$T/src" "$M/images/fat/1/fs/whole-fat16"
tf_same "$T/src" "$M/images/fat/2/fs/whole-fat12"
tf_same "$T/src" "$M/images/ntfs/1/fs/whole-ntfs"
tf_same "$T/src" "$M/images/gpt/1/fs/p1-fat32"
tf_same "$T/src-ext" "$M/images/gpt/1/fs/p2-ext4"
tf_same "$T/src" "$M/images/gpt/1/fs/p3-ntfs"
[ "$TF_EXFAT_EMPTY" = 1 ] || tf_same "$T/src" "$M/images/gpt/1/fs/p4-exfat"
tf_same "$T/src" "$M/images/mbr/1/fs/p1-fat16"
tf_same "$T/src-ext" "$M/images/mbr/1/fs/p5-ext2"
tf_same "$T/src-ext" "$M/clients/pc01/fs/whole-ext4"

# Metadata from the guest: sizes, times, modes, symlinks.
X=$M/images/ext4/1/fs/whole-ext4
[ "$(readlink "$X/link-to-hello")" = hello.txt ] || tb_fail "symlink target: $(readlink "$X/link-to-hello")"
[ "$(readlink "$X/a/dangling")" = /etc/nowhere ] || tb_fail "dangling symlink target"
[ -L "$X/link-to-hello" ] || tb_fail "symlink is not a symlink"
s1=$(stat -c '%s %Y %a' "$T/src-ext/a/rand.bin")
s2=$(stat -c '%s %Y %a' "$X/a/rand.bin")
[ "$s1" = "$s2" ] || tb_fail "ext4 stat: source '$s1', view '$s2'"
s2=$(stat -c '%s' "$M/images/ntfs/1/fs/whole-ntfs/a/rand.bin")
[ "$s2" = 1048577 ] || tb_fail "ntfs size: $s2"
# NTFS metadata files are hidden, as ntfs-3g hides them (tests/fuse-fidelity.sh).
ls "$M/images/ntfs/1/fs/whole-ntfs" | grep -q '^\$MFT$' && tb_fail "NTFS metadata files are shown"

# Read-only in every way.
for cmd in "touch $X/new" "mkdir $X/d" "rm $X/hello.txt" "chmod 777 $X/hello.txt" \
  "truncate -s 0 $X/hello.txt" "mv $X/hello.txt $X/h2" "ln -s x $X/l2" \
  "touch $M/clients/pc01/disk" "mkdir $M/clients/pc09"; do
  out=$($cmd 2>&1) && tb_fail "'$cmd' succeeded"
  echo "$out" | grep -q 'Read-only file system' || tb_fail "'$cmd' said: $out"
done
out=$(sh -c "echo x >>'$M/clients/pc01/disk'" 2>&1) && tb_fail "append to disk succeeded"
echo "$out" | grep -q 'Read-only file system' || tb_fail "append to disk said: $out"
cmp -s "$E/pc01@live" "$E/ext4@1" || tb_fail "the export changed"

tf_umount "$M"
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log && tb_fail "sanitizer report in tabula-fuse"
exit 0
