#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A big ext or NTFS directory is listed names first (issue 16, speed: a
# `find` reads no file's inode or MFT record): lib/inspect-list.c gives the
# first listing of a directory of more than TB_INSPECT_LAZY_MIN entries
# with its files' names, types and inode numbers only, and reads their
# inodes when something asks for their attributes.
#  - mounting and listing /big (6,000 files and a subdirectory, listed
#    ahead with the root) reads none of the inode table blocks that hold
#    only its files' inodes (nbdkit's log filter gives every read), while
#    the subdirectory, listed with its attributes, lists and stats;
#  - that first listing (`find -type f`) sees every file, with its type
#    (d_type), and so does the next (`ls -f`, whole: a directory listed
#    again is being walked again);
#  - the first stat of a file gives what debugfs gives (size, mtime, mode),
#    and so do all the others (the first filled the stat cache), the
#    symbolic link's target included;
#  - an NTFS directory of 3,000 files is listed from its index alone (what
#    mount and the first listing read is less than the files' MFT records),
#    and its files' sizes, read when asked, are their sources'.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs

T=$TB_TMP
N=6000
mkdir -p "$T/src/big/sub"
(cd "$T/src/big" && seq -f 'e%g' 1 $N | xargs touch)
i=1
while [ $i -le $N ]; do
  [ $((i % 7)) = 0 ] && printf '%*s' $((i % 101)) x >"$T/src/big/e$i"
  i=$((i + 1))
done
touch -d '2021-03-04 05:06:07' "$T/src/big/e77"
chmod 0640 "$T/src/big/e14"
ln -s e14 "$T/src/big/link"
echo inside >"$T/src/big/sub/in.txt"
mkdir "$T/exports"
truncate -s 64M "$T/exports/ext4@1"
mke2fs -q -F -t ext4 -b 4096 -I 256 -N 16384 -d "$T/src" "$T/exports/ext4@1" >/dev/null

# The reference: debugfs's listing of /big (inode, mode, size, name).
debugfs -R "ls -l /big" "$T/exports/ext4@1" 2>/dev/null |
  awk '$NF != "." && $NF != ".." && NF >= 8 { print $1, $2, $(NF-3), $NF }' >"$T/ref"
[ "$(wc -l <"$T/ref")" = $((N + 2)) ] || tb_fail "debugfs listed $(wc -l <"$T/ref") entries"
# The inode table block of inode $1.
iblock() { debugfs -R "imap <$1>" "$T/exports/ext4@1" 2>/dev/null | sed -n 's/.*located at block \([0-9]*\),.*/\1/p'; }
# Blocks that hold inodes of directories (and what libtsk's 64 KiB cache
# block and a 256 KiB span read around them): not the test's.
dirblocks=
for ino in 2 11 $(awk '$2 ~ /^4/ { print $1 }' "$T/ref") \
  $(debugfs -R "ls -l /" "$T/exports/ext4@1" 2>/dev/null | awk '$NF == "big" { print $1 }'); do
  dirblocks="$dirblocks $(iblock "$ino")"
done
# Files' inode blocks far from every directory's: the ones to watch.
watch=$(awk '$2 ~ /^10/ { print $1 }' "$T/ref" | awk 'NR % 97 == 0' | while read -r ino; do
  b=$(iblock "$ino")
  far=1
  for d in $dirblocks; do [ $((b > d ? b - d : d - b)) -gt 64 ] || far=0; done
  [ $far = 1 ] && echo "$b"
done | sort -un)
[ -n "$watch" ] || tb_fail "no file inode block lies away from the directories' ($dirblocks)"
echo "watching inode table blocks: $(echo $watch)"

# first_find SRV EXPORTS MNT FS: serve EXPORTS (nbdkit's log filter into
# $T/SRV.nbd.log), mount, list the root, `find -type f` in /big (into
# $T/SRV.files), read big/sub/in.txt, wait for the worker's reads to end;
# $v: the volume.
first_find()
{
  tb_start_plugin "$1" --filter=log file dir="$2" logfile="$T/$1.nbd.log"
  tf_mount "$3" --uri "nbd+unix:///?socket=$T/$1.sock"
  v=$3/images/$4/1/fs/whole-$4
  ls "$v" >/dev/null || tb_fail "cannot list $v"
  find "$v/big" -type f >"$T/$1.files" || tb_fail "find failed in $4's /big"
  [ "$(cat "$v/big/sub/in.txt")" = inside ] || tb_fail "$4's big/sub/in.txt does not read"
  tf_settle "$T/$1.nbd.log"
}
first_find srv "$T/exports" "$T/mnt" ext4
# Which watched blocks did a read cover?  (offset and count in hex)
covered()
{
  grep ' Read id=' "$T/srv.nbd.log" |
    sed -n 's/.* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' | while read -r o c; do
    for b in $watch; do
      [ $((b * 4096)) -ge $((o)) ] && [ $((b * 4096)) -lt $((o + c)) ] && echo "$b"
    done
  done | sort -u | wc -l
}
n=$(covered)
echo "after the first listing (find -type f): $n of $(echo $watch | wc -w) watched blocks read"
[ "$n" = 0 ] || tb_fail "the first listing of /big read $n inode table blocks of its files" \
  "(want names first: no file's inode)"
[ "$(grep -c '/e[0-9]*$' "$T/srv.files")" = $N ] ||
  tb_fail "find -type f gave $(grep -c '/e[0-9]*$' "$T/srv.files") files (want $N: d_type)"
grep -q '/big/link$' "$T/srv.files" && tb_fail "find -type f lists the symbolic link"
grep -q '/big/sub/in.txt$' "$T/srv.files" || tb_fail "find -type f misses big/sub/in.txt"

echo "== listed again (whole): the same names, the link a link"
ls -f "$v/big" >"$T/names" || tb_fail "cannot list /big"
[ "$(grep -c '^e' "$T/names")" = $N ] || tb_fail "ls -f /big gave $(grep -c '^e' "$T/names") e* names"
[ "$(find "$v/big" -maxdepth 1 -type l)" = "$v/big/link" ] || tb_fail "find -type l misses big/link"

echo "== the attributes, read when asked"
[ "$(stat -c '%s %Y %a' "$v/big/e77")" = "$(printf '%d %d 644' $((77 % 101)) \
  "$(date -d '2021-03-04 05:06:07' +%s)")" ] ||
  tb_fail "big/e77: $(stat -c '%s %Y %a' "$v/big/e77")"
[ "$(stat -c %a "$v/big/e14")" = 640 ] || tb_fail "big/e14 mode $(stat -c %a "$v/big/e14")"
[ "$(readlink "$v/big/link")" = e14 ] || tb_fail "big/link -> $(readlink "$v/big/link")"
awk '{ print $4, substr($2, length($2) - 2), $3 }' "$T/ref" | sort >"$T/want"
(cd "$v/big" && stat -c '%n %a %s' -- *) | sort >"$T/got"
cmp -s "$T/want" "$T/got" || tb_fail "the view's /big differs from debugfs: $(diff "$T/want" "$T/got" | head -5)"
tf_settle "$T/srv.nbd.log"
[ "$(covered)" -gt 0 ] || tb_fail "the stats read no watched inode block (is the test watching the right blocks?)"

ls -f "$v/big" | sort >"$T/names2"
sort "$T/names" | cmp -s - "$T/names2" || tb_fail "the third listing of /big differs"
tf_umount "$T/mnt"

echo "== NTFS: /big (3,000 files, filled by ntfs-3g) listed from its index alone"
M=3000
rm -rf "$T/nsrc" && mkdir -p "$T/nsrc/big/sub"
(cd "$T/nsrc/big" && seq -f 'e%g' 1 $M | xargs touch)
i=7
while [ $i -le $M ]; do
  printf '%*s' $((i % 101)) x >"$T/nsrc/big/e$i"
  i=$((i + 7))
done
echo inside >"$T/nsrc/big/sub/in.txt"
mkdir "$T/nexports"
tf_ntfs "$T/nexports/ntfs@1" "$T/nsrc" 64M
first_find nsrv "$T/nexports" "$T/nmnt" ntfs
last=$(grep ' Read id=' "$T/nsrv.nbd.log" | sed -n 's/.* count=\(0x[0-9a-f]*\) .*/\1/p' |
  while read -r c; do echo $((c)); done | awk '{ s += $1 } END { print s + 0 }')
echo "mount, root listing and the first listing of /big: $last bytes read" \
  "(the files' MFT records alone: $((M * 1024)))"
[ "$last" -lt $((M * 1024)) ] ||
  tb_fail "the first listing of the NTFS /big read $last bytes (want its index, not its $M records)"
[ "$(grep -c '/e[0-9]*$' "$T/nsrv.files")" = $M ] ||
  tb_fail "find -type f gave $(grep -c '/e[0-9]*$' "$T/nsrv.files") NTFS files (want $M)"
(cd "$T/nsrc/big" && stat -c '%n %s' -- e*) | sort >"$T/nwant"
(cd "$v/big" && stat -c '%n %s' -- e*) | sort >"$T/ngot"
cmp -s "$T/nwant" "$T/ngot" ||
  tb_fail "the view's NTFS /big differs from its source: $(diff "$T/nwant" "$T/ngot" | head -5)"
[ "$(ls -f "$v/big" | grep -c '^e')" = $M ] || tb_fail "the second listing of the NTFS /big differs"
tf_umount "$T/nmnt"
tb_check_logs
exit 0
