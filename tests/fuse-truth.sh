#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# changes.txt and the watchdog's file rules tell the exact truth.  A GPT
# disk with an ext4, an NTFS, a FAT32 and an exFAT is the master; a copy of
# each filesystem gets every kind of change from its own tools (the kernel's
# ext4 on a loop device, ntfs-3g, mtools, exfat-fuse): create, delete,
# rename of a file and of a directory, truncate and extend, a same-size
# same-mtime rewrite, a resident NTFS file rewritten in place, an xattr, an
# alternate data stream, a hard link, chmod and chown, a file deleted and made
# again identical, a change inside a large file, names deleted from a large
# NTFS directory.  The blocks where the changed disk differs from the master
# are written into a client's export through NBD (nbdfuse), so its dirty map
# is exactly what changed.  The ground truth is tests/fuse-walk.py's rule
# applied to walks of the reference mounts before and after; the view's
# changes.txt and the kinds and paths the watchdog's rules report (one rule
# per kind, on every path, at the session's end) must equal it line for line.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"
tb_require mke2fs mkntfs ntfs-3g mkfs.vfat mcopy mmove mkfs.exfat mount.exfat-fuse sfdisk losetup \
  python3 jq
L=$(losetup -f --show "$abs_top_srcdir/README.md" 2>/dev/null) || tb_skip "no loop devices here"
losetup -d "$L"

T=$TB_TMP
WALK="python3 $abs_top_srcdir/tests/fuse-walk.py"
P=$T/parts
mkdir -p "$P" "$T/ref" "$T/m"

# tt_mount KIND IMG DIR [ro]: the reference driver of KIND mounts IMG, always
# through a loop device (ntfs-3g and exfat-fuse then run as fuseblk, whose
# unmount waits for the data), detached as soon as the mount lets it go.
tt_mount()
{
  mkdir -p "$3"
  _l=$(losetup -f --show ${4:+-r} "$2") || tb_fail "losetup $2"
  case $1 in
  ext4) mount -t ext4 -o "${4:-rw}${4:+,noload}" "$_l" "$3" ;;
  ntfs) ntfs-3g -o "${4:-rw},streams_interface=xattr" "$_l" "$3" ;;
  exfat) mount.exfat-fuse -o "${4:-rw}" "$_l" "$3" >/dev/null 2>&1 ;;
  esac || {
    losetup -d "$_l"
    tb_fail "cannot mount $2 ($1)"
  }
  losetup -d "$_l" # autoclear: gone with the mount
  TB_MOUNTS="$3 $TB_MOUNTS"
}
tt_umount()
{
  umount "$1" || tb_fail "cannot unmount $1"
}
# tt_walk KIND IMG OUT: the reference's walk of the filesystem in IMG.
tt_walk()
{
  if [ "$1" = fat32 ]; then
    rm -rf "$T/fat-copy" && mkdir "$T/fat-copy"
    TZ=UTC MTOOLS_NO_VFAT=0 mcopy -s -m -n -Q -i "$2" '::/*' "$T/fat-copy"/ ||
      tb_fail "mcopy of $2 failed"
    $WALK walk "$T/fat-copy" >"$3" || tb_fail "walk of $2 failed"
    return
  fi
  tt_mount "$1" "$2" "$T/m/ref" ro
  if [ "$1" = ntfs ]; then
    $WALK walk "$T/m/ref" --strip-target "$T/m/ref" >"$3"
  else
    $WALK walk "$T/m/ref" >"$3"
  fi || tb_fail "walk of $2 failed"
  tt_umount "$T/m/ref"
}

# ---- the masters ----
# Files every filesystem has (same size: over-src and over-dst, renamed one
# over the other; recreate is deleted and made again first, on the inode it
# had; replace after other deletions, on another one).
FILES="keep.txt del.txt rename.txt trunc.txt extend.txt rewrite.txt recreate.txt replace.txt
  over-src.txt over-dst.txt dir/sub/deep.txt"
SAME="rewrite.txt recreate.txt replace.txt over-src.txt over-dst.txt"
S=$T/src-ext4
mkdir -p "$S/dir/sub" "$S/rename-dir/inner" "$S/del-dir/x" "$S/big"
for f in $FILES xattr.txt linked.txt chmod.txt chown.txt rename-dir/a.txt rename-dir/inner/b.txt \
  del-dir/x/y.txt; do
  echo "content of $f, which is long enough to matter" >"$S/$f"
done
(cd "$S" && touch -d '2021-03-04 05:06:07.123456789' $SAME)
python3 -c "import os; os.setxattr('$S/xattr.txt', 'user.tag', b'before')"
head -c 40000000 /dev/urandom >"$S/big/large.bin"
ln -s keep.txt "$S/link"
truncate -s 96M "$P/ext4"
mke2fs -q -F -t ext4 -b 4096 -d "$S" "$P/ext4"

truncate -s 96M "$P/ntfs"
mkntfs -q -F -Q "$P/ntfs" >/dev/null 2>&1
tt_mount ntfs "$P/ntfs" "$T/m/w"
(
  cd "$T/m/w" && mkdir -p dir/sub rename-dir/inner del-dir/x many &&
    for f in $FILES linked.txt rename-dir/a.txt rename-dir/inner/b.txt del-dir/x/y.txt; do
      echo "content of $f, which is long enough to matter" >"$f"
    done &&
    printf '127.0.0.1 localhost\n::1 localhost\n' >hosts &&
    head -c 3000 /dev/urandom >mid-resident.bin &&
    echo main >ads.txt &&
    for i in $(seq 1 300); do echo "file $i" >"many/f-$i.txt"; done &&
    head -c 40000000 /dev/urandom >large.bin &&
    touch -d '2021-03-04 05:06:07.1234567' $SAME hosts
) || tb_fail "cannot fill the NTFS master"
python3 -c "import os; os.setxattr('$T/m/w/ads.txt', 'user.stream', b'stream before')" ||
  tb_fail "cannot make an ADS"
tt_umount "$T/m/w"

F=$T/src-fat
mkdir -p "$F/dir/sub" "$F/rendir/inner" "$F/deldir/x"
for f in $FILES rendir/a.txt rendir/inner/b.txt deldir/x/y.txt; do
  echo "content of $f, which is long enough to matter" >"$F/$f"
done
(cd "$F" && touch -d '2021-03-04 05:06:08' $SAME)
head -c 8000000 /dev/urandom >"$F/large.bin"
touch -d '2020-01-01 00:00:00' "$F/large.bin"
truncate -s 48M "$P/fat32"
mkfs.vfat -F 32 "$P/fat32" >/dev/null
MTOOLS_NO_VFAT=0 mcopy -s -m -Q -i "$P/fat32" "$F"/* ::/ || tb_fail "mcopy into the FAT master"

truncate -s 48M "$P/exfat"
mkfs.exfat "$P/exfat" >/dev/null
tt_mount exfat "$P/exfat" "$T/m/w"
cp -r "$F"/. "$T/m/w"/ || tb_fail "cannot fill the exFAT master"
(cd "$T/m/w" && touch -d '2021-03-04 05:06:07.55' $SAME)
tt_umount "$T/m/w"

# The disk: GPT, the four filesystems at 1 MiB boundaries.
D=$T/master.img
truncate -s 292M "$D"
printf 'label: gpt\nstart=1M, size=96M\nsize=96M\nsize=48M\nsize=48M\n' | sfdisk -q "$D" ||
  tb_fail "sfdisk"
tt_assemble()
{
  dd if="$2/ext4" of="$1" bs=1M seek=1 conv=notrunc,sparse status=none &&
    dd if="$2/ntfs" of="$1" bs=1M seek=97 conv=notrunc,sparse status=none &&
    dd if="$2/fat32" of="$1" bs=1M seek=193 conv=notrunc,sparse status=none &&
    dd if="$2/exfat" of="$1" bs=1M seek=241 conv=notrunc,sparse status=none ||
    tb_fail "cannot assemble $1"
}
tt_assemble "$D" "$P"
for fs in ext4 ntfs fat32 exfat; do tt_walk $fs "$P/$fs" "$T/ref/before-$fs"; done

# ---- every kind of change, each by its filesystem's own tools ----
C=$T/changed
mkdir "$C"
for fs in ext4 ntfs fat32 exfat; do cp --sparse=always "$P/$fs" "$C/$fs"; done

# tt_common DIR: the changes every writable mount gets.
tt_common()
{
  (
    cd "$1" &&
      cp -p recreate.txt "$T/recreate.copy" && rm recreate.txt &&
      cp -p "$T/recreate.copy" recreate.txt &&
      echo "a new file" >created.txt && mkdir -p new-dir/deeper &&
      echo "in a new directory" >new-dir/deeper/n.txt &&
      rm del.txt && rm -r "$2" &&
      mv rename.txt renamed.txt && mv "$3" "$3-moved" &&
      truncate -s 5 trunc.txt && echo "more bytes at the end" >>extend.txt &&
      touch -r rewrite.txt "$T/stamp" &&
      printf 'CONTENT' | dd of=rewrite.txt conv=notrunc status=none &&
      touch -r "$T/stamp" rewrite.txt &&
      cp -p replace.txt "$T/replace.copy" && rm replace.txt &&
      cp -p "$T/replace.copy" replace.txt &&
      mv over-src.txt over-dst.txt &&
      touch -r "$4" "$T/stamp" &&
      printf 'changed in the middle' | dd of="$4" bs=1 seek=12345678 conv=notrunc status=none &&
      touch -r "$T/stamp" "$4"
  ) || tb_fail "changes in $1 failed"
}

tt_mount ext4 "$C/ext4" "$T/m/w"
tt_common "$T/m/w" del-dir rename-dir big/large.bin
(
  cd "$T/m/w" &&
    python3 -c "import os; os.setxattr('xattr.txt', 'user.tag', b'after!')" &&
    ln linked.txt dir/hard-link && chmod 0600 chmod.txt && chown 1234:5678 chown.txt &&
    ln -s renamed.txt new-link && mkfifo new-fifo
) || tb_fail "ext4 changes failed"
tt_umount "$T/m/w"

tt_mount ntfs "$C/ntfs" "$T/m/w"
tt_common "$T/m/w" del-dir rename-dir large.bin
(
  cd "$T/m/w" && ln linked.txt dir/hard-link &&
    touch -r hosts "$T/stamp" && printf '6.6.6.6' | dd of=hosts conv=notrunc status=none &&
    touch -r "$T/stamp" hosts &&
    touch -r mid-resident.bin "$T/stamp" &&
    printf 'XYZ' | dd of=mid-resident.bin bs=1 seek=1000 conv=notrunc status=none &&
    touch -r "$T/stamp" mid-resident.bin &&
    touch -r ads.txt "$T/stamp" &&
    python3 -c "import os; os.setxattr('ads.txt', 'user.stream', b'stream after!')" &&
    touch -r "$T/stamp" ads.txt &&
    for i in $(seq 11 11 300); do rm "many/f-$i.txt"; done
) || tb_fail "NTFS changes failed"
tt_umount "$T/m/w"

(
  export MTOOLS_NO_VFAT=0
  i=$C/fat32
  echo "a new file" >"$T/created.txt" && mcopy -Q -i "$i" "$T/created.txt" ::/created.txt &&
    mmd -i "$i" ::/new-dir ::/new-dir/deeper &&
    mcopy -Q -i "$i" "$T/created.txt" ::/new-dir/deeper/n.txt &&
    mdel -i "$i" ::/del.txt && mdeltree -i "$i" ::/deldir &&
    mmove -i "$i" ::/rename.txt ::/renamed.txt && mmove -i "$i" ::/rendir ::/rendir-moved &&
    head -c 5 "$F/trunc.txt" >"$T/trunc.txt" && mcopy -o -Q -i "$i" "$T/trunc.txt" ::/trunc.txt &&
    { cat "$F/extend.txt" && echo more; } >"$T/extend.txt" &&
    mcopy -o -Q -i "$i" "$T/extend.txt" ::/extend.txt &&
    cp -p "$F/rewrite.txt" "$T/rewrite.txt" &&
    printf 'CONTENT' | dd of="$T/rewrite.txt" conv=notrunc status=none &&
    touch -r "$F/rewrite.txt" "$T/rewrite.txt" &&
    mcopy -o -m -Q -i "$i" "$T/rewrite.txt" ::/rewrite.txt &&
    mdel -i "$i" ::/recreate.txt && mcopy -m -Q -i "$i" "$F/recreate.txt" ::/recreate.txt &&
    mdel -i "$i" ::/replace.txt && mcopy -m -Q -i "$i" "$F/replace.txt" ::/replace.txt &&
    mdel -i "$i" ::/over-dst.txt && mmove -i "$i" ::/over-src.txt ::/over-dst.txt &&
    cp -p "$F/large.bin" "$T/large.bin" &&
    printf 'changed in the middle' | dd of="$T/large.bin" bs=1 seek=1234567 conv=notrunc status=none &&
    touch -r "$F/large.bin" "$T/large.bin" &&
    mcopy -o -m -Q -i "$i" "$T/large.bin" ::/large.bin
) || tb_fail "FAT changes failed"

tt_mount exfat "$C/exfat" "$T/m/w"
tt_common "$T/m/w" deldir rendir large.bin
tt_umount "$T/m/w"

for fs in ext4 ntfs fat32 exfat; do tt_walk $fs "$C/$fs" "$T/ref/after-$fs"; done
for f in recreate.txt replace.txt; do
  echo "ext4 $f: inode and first block $(debugfs -R "stat $f" "$P/ext4" 2>/dev/null |
    sed -n 's/^Inode: *\([0-9]*\).*/\1/p') $(debugfs -R "bmap $f 0" "$P/ext4" 2>/dev/null) before," \
    "$(debugfs -R "stat $f" "$C/ext4" 2>/dev/null | sed -n 's/^Inode: *\([0-9]*\).*/\1/p')" \
    "$(debugfs -R "bmap $f 0" "$C/ext4" 2>/dev/null) after"
done
n=1
for fs in ext4 ntfs fat32 exfat; do
  $WALK changes "$T/ref/before-$fs" "$T/ref/after-$fs" "p$n-$fs"
  n=$((n + 1))
done | python3 -c "import sys; print(''.join(sorted(sys.stdin, key=lambda l: l.split(None, 3)[3].encode())), end='')" >"$T/truth"
for kind in created changed deleted; do
  grep -q "^$kind " "$T/truth" || tb_fail "the ground truth has no $kind line: $(cat "$T/truth")"
done
cp "$D" "$T/changed.img"
tt_assemble "$T/changed.img" "$C"

# ---- into a client through NBD ----
state=$T/state
tb_import "$state" demo "$D"
td_config "$T/tabula.json" "$state" '{
  "pc01": { "image": "demo", "policy": "persist",
            "watchdog": { "rules": [
              { "name": "c", "path": "/**/*", "on": "created", "action": "alert" },
              { "name": "m", "path": "/**/*", "on": "changed", "action": "alert" },
              { "name": "d", "path": "/**/*", "on": "deleted", "action": "alert" } ] } } }'
td_start "$T/tabula.json"
tw_disk "$state" pc01
$WALK push "$D" "$T/changed.img" "$T/nf/disk" || tb_fail "cannot write the changes into pc01"
tw_undisk "$state" pc01
tw_wait "$state" '.type == "watchdog-scan" and .client == "pc01" and .scan == "session-end"' \
  "the session-end scan"

M=$T/mnt
tf_mount "$M" -c "$T/tabula.json"
cp "$M/clients/pc01/changes.txt" "$T/changes.txt"
tf_umount "$M"
grep -q '^# incomplete\|^# not available' "$T/changes.txt" && tb_fail "changes.txt: $(cat "$T/changes.txt")"
$WALK changes-txt "$T/changes.txt" >"$T/view"
bad=0
if ! diff -u "$T/truth" "$T/view" >"$T/diff"; then
  echo "changes.txt differs from the ground truth (- truth, + view):"
  cat "$T/diff"
  bad=1
fi
awk '{ print $1, $4 }' "$T/truth" | sort >"$T/truth-rules"
jq -r 'select(.type == "watchdog-rule" and .client == "pc01") | .kind + " " + .path' \
  "$state/events.jsonl" | sort >"$T/rules"
if ! diff -u "$T/truth-rules" "$T/rules" >"$T/diff-rules"; then
  echo "the watchdog's rules differ from the ground truth (- truth, + rules):"
  cat "$T/diff-rules"
  bad=1
fi
[ $bad = 0 ] || tb_fail "changes.txt or the rules are not the truth (see above)"
echo "changes.txt and the rules: $(wc -l <"$T/truth") lines, equal to the ground truth"

td_stop
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T"/fuse-*.log "$T/daemon.log" &&
  tb_fail "sanitizer report"
exit 0
