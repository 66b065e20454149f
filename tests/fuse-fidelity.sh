#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The view tells the exact truth: each filesystem is built with its own
# tools (mke2fs -d; mkntfs and ntfs-3g; mkfs.vfat and mtools; mkfs.exfat
# and exfat-fuse) with the cases of issue 16, and the view's full walk
# (tests/fuse-walk.py: path, type, size, mode, nlink, uid/gid, mtime in ns,
# rdev, symlink target, xattrs, hard-link identity, sha256) must equal the
# walk of the reference mount: the kernel's ext2/3/4 driver (loop device),
# ntfs-3g, mtools (mcopy -m of the tree), exfat-fuse.
#
# The deliberate differences, as tabula-fuse(1) lists them:
#   - NTFS, FAT, exFAT have no Unix modes or owners: the view shows 0444
#     files and 0555 directories owned by 0:0 (asserted below), ntfs-3g and
#     exfat-fuse 0777, mtools' copy whatever the host's umask gives;
#   - absolute NTFS symlink and junction targets are volume-rooted in the
#     view ("/target-dir"); ntfs-3g puts its mount point in front;
#   - mtools and exfat-fuse take 2100 for a leap year: their times after
#     2100-02-28 are a day late (the view decodes the entry exactly);
#   - FAT's reference is a copy (mcopy -m): its nlink and directory sizes
#     are the host's, not compared;
#   - ext system.* xattrs (POSIX ACLs, inline data) are not shown.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs mkntfs ntfs-3g mkfs.vfat mcopy mkfs.exfat python3

T=$TB_TMP
WALK="python3 $abs_top_srcdir/tests/fuse-walk.py"
E=$T/exports
mkdir "$E" "$T/ref"

# ---- ext2/3/4 ----
S=$T/src-ext
mkdir -p "$S/dir/sub" "$S/big" "$S/many"
echo hello >"$S/hello.txt"
touch -d '2020-01-02 03:04:05.123456789' "$S/hello.txt"
ln "$S/hello.txt" "$S/dir/hard-link"
ln "$S/hello.txt" "$S/dir/sub/hard2"
python3 -c "import os; os.setxattr('$S/hello.txt', 'user.comment', b'a comment');
os.setxattr('$S/dir', 'user.d', b'x' * 300)" || tb_skip "no user xattrs in $T"
mknod "$S/dir/null" c 1 3
mknod "$S/dir/sda" b 8 0
mknod "$S/dir/big-dev" c 260 70000
mkfifo "$S/dir/fifo"
echo old >"$S/old.txt"
touch -d '1969-07-20 20:17:40' "$S/old.txt"
ln -s hello.txt "$S/fast-link"
ln -s "$(printf 'd/%.0s' $(seq 60))target" "$S/slow-link"
head -c 300000 /dev/urandom >"$S/big/rand.bin"
chmod 4755 "$S/big/rand.bin"
chown 1234:5678 "$S/big/rand.bin"
echo long >"$S/$(printf 'L%.0s' $(seq 255))"
echo ü >"$S/ünïcödé.txt"
for i in $(seq 1 300); do echo "$i" >"$S/many/f-$i"; done
cp -a "$S" "$T/src-ext23"
# ext2/3: a 5 GiB sparse file maps its end through the triple-indirect
# block (read by lib/inspect's own block-map walker, not libtsk).
truncate -s 5G "$T/src-ext23/big/sparse-5G.bin"
printf mid | dd of="$T/src-ext23/big/sparse-5G.bin" bs=1 seek=$((4 << 30)) conv=notrunc status=none
printf end | dd of="$T/src-ext23/big/sparse-5G.bin" bs=1 seek=$(((5 << 30) - 3)) conv=notrunc status=none
truncate -s 1T "$S/big/sparse-1T.bin"
printf end | dd of="$S/big/sparse-1T.bin" bs=1 seek=$((1 << 39)) conv=notrunc status=none
truncate -s 5G "$S/big/sparse-5G.bin"
printf mid | dd of="$S/big/sparse-5G.bin" bs=1 seek=$((4 << 30)) conv=notrunc status=none
truncate -s 600M "$E/ext4@1"
mke2fs -q -F -t ext4 -O inline_data,metadata_csum -I 256 -d "$S" "$E/ext4@1"
for t in ext2 ext3; do
  truncate -s 40M "$E/$t@1"
  mke2fs -q -F -t $t -b 4096 -d "$T/src-ext23" "$E/$t@1"
done

# ---- NTFS ----
N=$T/ntfs-mnt
truncate -s 120M "$E/ntfs@1"
mkntfs -q -F -Q "$E/ntfs@1" >/dev/null 2>&1
mkdir -p "$N"
ntfs-3g -o streams_interface=xattr "$E/ntfs@1" "$N" || tb_fail "ntfs-3g cannot mount"
TB_MOUNTS="$N $TB_MOUNTS"
(
  cd "$N" && mkdir -p dir target-dir many comp &&
    echo hi >dir/f.txt && echo hello >hello.txt && ln hello.txt hard.txt &&
    ln -s hello.txt ln-rel && ln -s /abs/path ln-abs &&
    for i in $(seq 1 300); do echo "file $i" >"many/f-$i.txt"; done &&
    for i in $(seq 7 7 300); do rm "many/f-$i.txt"; done &&
    truncate -s 100M sparse.bin &&
    printf x | dd of=sparse.bin bs=1 seek=50000000 conv=notrunc status=none &&
    head -c 200000 /dev/urandom >rand.bin && touch -d '1999-12-31 23:59:59.1234567' rand.bin &&
    echo résumé >"unicodé ✓.txt" && echo long >"$(printf 'U%.0s' $(seq 255))"
) || tb_fail "cannot fill the NTFS volume"
python3 - "$N" <<'EOF' || tb_fail "cannot make the NTFS special files"
import os, struct, sys
os.chdir(sys.argv[1])
# An Interix symlink: a system file holding IntxLNK\1 and the UTF-16 target.
open("interix", "wb").write(b"IntxLNK\x01" + "hello.txt".encode("utf-16-le"))
os.setxattr("interix", "system.ntfs_attrib", struct.pack("<I", 0x4))
# A junction to C:\target-dir (a mount-point reparse point).
os.mkdir("junction")
sub = "\\??\\C:\\target-dir".encode("utf-16-le")
pr = "C:\\target-dir".encode("utf-16-le")
data = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(pr)) + sub + b"\0\0" + pr + b"\0\0"
os.setxattr("junction", "system.ntfs_reparse_data", struct.pack("<IHH", 0xA0000003, len(data), 0) + data)
# An alternate data stream; compressed content.
open("ads.txt", "w").write("main")
os.setxattr("ads.txt", "user.stream1", b"stream data")
os.setxattr("comp", "system.ntfs_attrib", struct.pack("<I", 0x800))
open("comp/c.txt", "w").write("hello\n" * 50000)
EOF
umount "$N"
ntfs-3g -o ro,streams_interface=xattr "$E/ntfs@1" "$N" || tb_fail "ntfs-3g cannot mount read-only"
$WALK walk "$N" --strip-target "$N" >"$T/ref/ntfs" || tb_fail "walk of ntfs-3g failed"
umount "$N"

# ---- FAT32 (mkfs.vfat + mcopy; the reference is mtools' copy) ----
F=$T/src-fat
mkdir -p "$F/dir/sub"
echo hi >"$F/hello.txt"
touch -d '1999-06-15 12:34:56' "$F/hello.txt"
echo x >"$F/$(printf 'N%.0s' $(seq 237)).txt" # 241 characters
echo y >"$F/future.txt"
touch -d '2107-12-31 23:59:58' "$F/future.txt"
echo ü >"$F/ünï cödé.txt"
head -c 100000 /dev/urandom >"$F/dir/sub/r.bin"
echo z >"$F/dir/UPPER.TXT"
truncate -s 40M "$E/fat32@1"
mkfs.vfat -F 32 -n MYLABEL "$E/fat32@1" >/dev/null
MTOOLS_NO_VFAT=0 mcopy -s -m -Q -i "$E/fat32@1" "$F"/* ::/
mkdir "$T/fat-copy"
TZ=UTC MTOOLS_NO_VFAT=0 mcopy -s -m -n -Q -i "$E/fat32@1" '::/*' "$T/fat-copy"/ ||
  tb_fail "mcopy of the FAT volume failed"
$WALK walk "$T/fat-copy" --leap-2100 >"$T/ref/fat32"

# ---- exFAT (mkfs.exfat, filled and read through exfat-fuse on a loop device) ----
EXFAT=0
truncate -s 32M "$E/exfat@1"
mkfs.exfat "$E/exfat@1" >/dev/null
if command -v mount.exfat-fuse >/dev/null && L=$(losetup -f --show "$E/exfat@1" 2>/dev/null); then
  X=$T/exfat-mnt
  mkdir -p "$X"
  if mount.exfat-fuse "$L" "$X" >/dev/null 2>&1; then
    cp -r "$F"/. "$X"/
    touch -d '2107-12-31 23:59:58' "$X/future.txt"
    touch -d '2020-05-05 05:05:05.55' "$X/hello.txt" # the 10 ms field
    umount "$X"
    mount.exfat-fuse -o ro "$L" "$X" >/dev/null 2>&1 && $WALK walk "$X" --leap-2100 >"$T/ref/exfat" &&
      EXFAT=1
    umount "$X" 2>/dev/null
  fi
  losetup -d "$L"
fi
[ $EXFAT = 1 ] || echo "exFAT: no loop device or exfat-fuse here: not compared"

# ---- ext references: the kernel's driver (a loop device), else fuse2fs ----
EXT=0
K=$T/ext-mnt
mkdir -p "$K"
for t in ext4 ext3 ext2; do
  if mount -o ro,loop "$E/$t@1" "$K" 2>/dev/null || fuse2fs -o ro "$E/$t@1" "$K" 2>/dev/null; then
    $WALK walk "$K" >"$T/ref/$t" || tb_fail "walk of the $t reference failed"
    umount "$K"
    EXT=1
  fi
done
[ $EXT = 1 ] || echo "ext: neither a loop device nor fuse2fs here: not compared"

# ---- the view ----
tb_start_plugin srv file dir="$E"
M=$T/mnt
tf_mount "$M" --uri "nbd+unix:///?socket=$T/srv.sock"
bad=0
check()
{
  _fs=$1
  shift
  [ -f "$T/ref/$_fs" ] || return 0
  $WALK walk "$M/images/$_fs/1/fs/whole-$_fs" >"$T/view-$_fs" || tb_fail "walk of the view's $_fs failed"
  if ! $WALK compare "$T/ref/$_fs" "$T/view-$_fs" "$@" >"$T/diff-$_fs"; then
    echo "$_fs: the view differs from the reference:"
    cat "$T/diff-$_fs"
    bad=1
  fi
}
check ext4
check ext3
check ext2
check ntfs --ignore mode
check fat32 --ignore mode,uid,gid,nlink,dirsize
check exfat --ignore mode,uid,gid
[ $bad = 0 ] || tb_fail "the view is not the reference (see above)"

# Filesystems without Unix modes: 0444 files, 0555 directories, owner 0:0.
for fs in ntfs fat32 exfat; do
  [ -f "$T/view-$fs" ] || continue
  python3 - "$T/view-$fs" <<'EOF' || tb_fail "$fs: modes or owners are not as documented"
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    want = {"dir": "0555", "symlink": "0444"}.get(e["type"], "0444")
    if e["mode"] != want or e["uid"] != 0 or e["gid"] != 0:
        sys.exit("%s: mode %s owner %d:%d" % (e["path"], e["mode"], e["uid"], e["gid"]))
EOF
done
# Every mount used to log libfuse's "Ignoring invalid max threads value".
grep -i 'max threads' "$T"/fuse-*.log && tb_fail "tabula-fuse logs a libfuse complaint"

tf_umount "$M"

# NTFS listings stat their entries from the MFT records with lib/ntfs-mft.c,
# libtsk only for what it does not mirror.  TB_NTFS_MFT=check stats every
# entry both ways and aborts at a difference in any field (the diff's
# digest of streams and resident data too): the walk must go through, equal
# to the first, and nearly every entry must have been read by us.
if [ -f "$T/view-ntfs" ]; then
  C=$T/mnt-check
  export TB_NTFS_MFT=check
  tf_mount "$C" --uri "nbd+unix:///?socket=$T/srv.sock"
  unset TB_NTFS_MFT
  $WALK walk "$C/images/ntfs/1/fs/whole-ntfs" >"$T/view-ntfs-check" ||
    tb_fail "walk with TB_NTFS_MFT=check failed: $(grep 'TB_NTFS_MFT' "$T/fuse-mnt-check.log" | tail -3)"
  tf_umount "$C"
  cmp -s "$T/view-ntfs" "$T/view-ntfs-check" || tb_fail "TB_NTFS_MFT=check changed the NTFS walk"
  counts=$(grep 'TB_NTFS_MFT=check' "$T/fuse-mnt-check.log" | tail -1)
  ours=$(echo "$counts" | sed -n "s/.*: \([0-9]*\) entries stat'ed by lib\/ntfs-mft.c, \([0-9]*\) by libtsk.*/\1/p")
  theirs=$(echo "$counts" | sed -n "s/.*: \([0-9]*\) entries stat'ed by lib\/ntfs-mft.c, \([0-9]*\) by libtsk.*/\2/p")
  entries=$(wc -l <"$T/view-ntfs")
  echo "NTFS: $ours entries stat'ed by lib/ntfs-mft.c, ${theirs:-?} by libtsk, all equal ($entries walked)"
  [ -n "$ours" ] && [ "$ours" -ge $((entries - 5)) ] ||
    tb_fail "lib/ntfs-mft.c stat'ed too few NTFS entries: $counts"
fi
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log && tb_fail "sanitizer report in tabula-fuse"
exit 0
