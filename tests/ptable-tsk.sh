#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The core's partition-table reader (lib/ptable, no libtsk) numbers and places
# every partition exactly as libtsk does through lib/inspect (what the view
# shows as pN-...): sfdisk's MBR with primaries, an extended partition and
# logical partitions, MBRs with empty slots, GPTs with gaps in the entry array
# and a high slot, a GPT whose primary header is damaged (libtsk reads the
# protective MBR then), a disk whose table reaches past its end, filesystems
# without a table (FAT, NTFS, ext4), and tables with hostile fields (an
# extended chain that loops, a GPT claiming 2^32 entries, entries outside the
# disk).  tests/ptable-tsk prints DIFF lines where they disagree.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require sfdisk python3 mkfs.vfat mkntfs mke2fs

M=1048576
T=$TB_TMP
img()
{
  truncate -s "$2" "$T/$1"
  sfdisk -q --no-reread "$T/$1" >/dev/null
}

printf 'label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=4096, type=7
start=10240, size=40960, type=5\nstart=12288, size=2048, type=83
start=16384, size=2048, type=c\nstart=20480, size=2048, type=83
start=51200, size=4096, type=83\n' | img mbr-logical 32M
# slots 1 and 3 empty, the extended partition in slot 4, a logical in it
printf 'label: dos\n2 : start=2048, size=2048, type=83
4 : start=8192, size=8192, type=f\n5 : start=10240, size=2048, type=83\n' | img mbr-gaps 16M
printf 'label: gpt\nstart=2048, size=4096\nstart=6144, size=8192
start=14336, size=2048\nstart=16384, size=4096\nstart=20480, size=2048\n' | img gpt 16M
printf 'label: gpt\n1 : start=2048, size=2048\n3 : start=4096, size=2048
100 : start=8192, size=4096\n' | img gpt-gaps 16M
# The primary GPT header damaged: libtsk falls back to the MBR (the
# protective partition is partition 1), and so must the core.
printf 'label: gpt\nstart=2048, size=4096\n' | img gpt-noprimary 8M
printf 'XXXXXXXX' | dd of="$T/gpt-noprimary" bs=1 seek=512 conv=notrunc status=none
# A table made for a bigger disk, the disk then cut.
printf 'label: dos\nstart=2048, size=4096\nstart=8192, size=65536\nstart=80000, size=100\n' |
  img mbr-cut 64M
truncate -s 8M "$T/mbr-cut"
# Filesystems on the whole disk: boot sectors with 0x55AA, no table.
truncate -s 8M "$T/fat" "$T/ntfs" "$T/ext4"
mkfs.vfat "$T/fat" >/dev/null
mkntfs -q -F -f "$T/ntfs" >/dev/null 2>&1
mke2fs -q -F -t ext4 "$T/ext4"

# tests/fuse-files.sh's disks, filesystems in: a GPT of FAT32, ext4, NTFS,
# exFAT (here FAT16, ext4, NTFS, FAT12), an MBR of a FAT16 primary and an ext2
# logical partition; the view's volume names must be the table's numbers.
printf 'label: gpt\nstart=2048, size=16M, type=linux\nsize=8M, type=linux
size=8M, type=linux\nsize=8M, type=linux\n' | img gpt-fs 48M
mkfs.vfat --offset 2048 "$T/gpt-fs" 16384 >/dev/null 2>&1
mke2fs -q -F -t ext4 -E offset=$((34816 * 512)) "$T/gpt-fs" 8M
truncate -s 8M "$T/ntfs-part"
mkntfs -q -F -f "$T/ntfs-part" >/dev/null 2>&1
dd if="$T/ntfs-part" of="$T/gpt-fs" bs=512 seek=51200 conv=notrunc status=none
mkfs.vfat --offset 67584 "$T/gpt-fs" 8192 >/dev/null 2>&1
printf 'label: dos\nstart=2048, size=16M, type=6\nstart=34816, size=20M, type=5
start=36864, size=16M, type=83\n' | img mbr-fs 40M
mkfs.vfat -F 16 --offset 2048 "$T/mbr-fs" 16384 >/dev/null 2>&1
mke2fs -q -F -t ext2 -E offset=$((36864 * 512)) "$T/mbr-fs" 16M

# Hostile tables, written byte by byte.
python3 - "$T" <<'EOF'
import struct, sys
d = sys.argv[1]
def mbr(entries, size=16 << 20, oem=b"\0" * 8):
    b = bytearray(size)
    b[3:11] = oem
    for i, (t, start, n) in enumerate(entries):
        o = 446 + 16 * i
        b[o + 4] = t
        b[o + 8:o + 16] = struct.pack("<II", start, n)
    b[510:512] = b"\x55\xaa"
    return b
def ebr(b, at, data, link):
    o = at * 512
    for i, (t, start, n) in enumerate([data, link]):
        e = o + 446 + 16 * i
        b[e + 4] = t
        b[e + 8:e + 16] = struct.pack("<II", start, n)
    b[o + 510:o + 512] = b"\x55\xaa"
# An extended chain whose second record links to itself.
b = mbr([(0x83, 2048, 2048), (0x05, 8192, 16384)])
ebr(b, 8192, (0x83, 2048, 1024), (0x05, 4096, 4096))
ebr(b, 12288, (0x83, 2048, 1024), (0x05, 4096, 4096))
open(d + "/mbr-loop", "wb").write(b)
# A chain with a link past the disk, one with an unsigned record.
b = mbr([(0x83, 2048, 2048), (0x0f, 8192, 16384)])
ebr(b, 8192, (0x83, 2048, 1024), (0x05, 1 << 30, 4096))
open(d + "/mbr-far", "wb").write(b)
b = mbr([(0x83, 2048, 2048), (0x85, 8192, 16384)])
open(d + "/mbr-unsigned", "wb").write(b)
# Entries 3 and 4 past the disk (libtsk keeps them), entry 1 empty.
open(d + "/mbr-outside", "wb").write(
    mbr([(0, 0, 0), (0x83, 2048, 2048), (0x83, 1 << 31, 100), (0x7, 4096, 1 << 31)]))
# Entry 1 starting past the disk: libtsk refuses the table.
open(d + "/mbr-refused", "wb").write(mbr([(0x83, 1 << 31, 100), (0x83, 2048, 2048)]))
# The OEM names that make sector 0 a FAT or NTFS boot sector.
open(d + "/mbr-oem", "wb").write(mbr([(0x83, 2048, 2048)], oem=b"MSDOS5.0"))
def gpt(count, esize, table, entries, size=16 << 20):
    b = mbr([(0xee, 1, (size >> 9) - 1)], size)
    h = bytearray(512)
    h[0:8] = b"EFI PART"
    h[72:88] = struct.pack("<QII", table, count, esize)
    b[512:1024] = h
    for i, (first, last) in entries:
        o = table * 512 + i * esize
        b[o + 32:o + 48] = struct.pack("<QQ", first, last)
    return b
open(d + "/gpt-huge", "wb").write(gpt(0xffffffff, 128, 2, [(0, (2048, 4095)), (5, (4096, 8191))]))
open(d + "/gpt-esize", "wb").write(gpt(8, 256, 2, [(0, (2048, 4095)), (3, (4096, 8191))]))
open(d + "/gpt-table-out", "wb").write(gpt(128, 128, 1 << 40, []))
open(d + "/gpt-first-out", "wb").write(gpt(128, 128, 2, [(1, (1 << 40, (1 << 40) + 10))]))
EOF

set -- mbr-logical mbr-gaps gpt gpt-gaps gpt-noprimary mbr-cut fat ntfs ext4 gpt-fs mbr-fs \
  mbr-loop mbr-far mbr-unsigned mbr-outside mbr-refused mbr-oem \
  gpt-huge gpt-esize gpt-table-out gpt-first-out
cd "$T"
"$abs_builddir/ptable-tsk" "$@" >"$T/out" 2>&1 || {
  cat "$T/out"
  tb_fail "lib/ptable and libtsk disagree"
}
cat "$T/out"
# The tables were read at all: the counts each image must give.
for want in gpt-fs:p1-fat16 gpt-fs:p2-ext4 gpt-fs:p3-ntfs gpt-fs:p4-fat12 mbr-fs:p1-fat16 \
  mbr-fs:p5-ext2; do
  grep -q "^${want%:*} volume ${want#*:}\$" "$T/out" ||
    tb_fail "${want%:*}: the view shows no ${want#*:}: $(grep "^${want%:*} volume" "$T/out")"
done
# (A GPT that libtsk refuses leaves its protective MBR: one partition.)
for want in mbr-logical:6 mbr-gaps:2 gpt:5 gpt-fs:4 mbr-fs:2 gpt-gaps:3 gpt-noprimary:1 mbr-cut:3 mbr-loop:3 \
  mbr-far:2 mbr-unsigned:1 mbr-outside:3 gpt-huge:1 gpt-esize:2 gpt-table-out:1 \
  gpt-first-out:1; do
  n=$(grep -c "^${want%:*} [0-9]" "$T/out" || true)
  [ "$n" = "${want#*:}" ] || tb_fail "${want%:*}: $n partitions, expected ${want#*:}"
done
for none in fat ntfs ext4 mbr-refused mbr-oem; do
  ! grep -q "^$none [0-9]" "$T/out" || tb_fail "$none: no partition expected"
done
