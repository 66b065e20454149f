#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A big directory's records are read in a few large requests (issue 16,
# speed): lib/inspect-list.c reads the inodes of an ext directory's entries
# (and the MFT records of an NTFS one) in inode order, in spans of up to
# 1 MiB, not one libtsk cache block (64 KiB) at a time.
#  - listing a 6,000-entry ext4 directory (1.5 MiB of inodes) reads its
#    inodes in a few spans, not in the 24 or more 64 KiB blocks of
#    libtsk's cache (nbdkit's log filter counts the reads: beside those of
#    the directory's own blocks, which libtsk reads one cache block each,
#    at most a few small reads), and the names and sizes are the ones
#    debugfs lists;
#  - a directory whose blocks lie together (20,000 entries, 100 blocks) is
#    read in 256 KiB requests (EXT_DIR_CHUNK), not in libtsk's 64 KiB cache
#    blocks;
#  - the disk's last 64 KiB, where libtsk looks for a backup GPT header at
#    five sector sizes when sector 1 has none, is read once (lib/
#    inspect-handle.c), not five times;
#  - the same directory listed again (a second mount) gives the same entries.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs

T=$TB_TMP
mkdir -p "$T/src/many"
i=1
while [ $i -le 6000 ]; do
  printf '%s' "$i" >"$T/src/many/e$i"
  i=$((i + 1))
done
mkdir "$T/src/names"
(cd "$T/src/names" && seq -f 'entry-%g' 1 20000 | xargs touch)
mkdir "$T/exports"
truncate -s 64M "$T/exports/ext4@1"
mke2fs -q -F -t ext4 -b 4096 -I 256 -N 32768 -d "$T/src" "$T/exports/ext4@1" >/dev/null

# The reference: debugfs's listing (name, size), sorted.
debugfs -R "ls -l /many" "$T/exports/ext4@1" 2>/dev/null |
  awk '$NF != "." && $NF != ".." && NF >= 8 { print $NF, $(NF-3) }' | sort >"$T/want"
[ "$(wc -l <"$T/want")" = 6000 ] || tb_fail "debugfs listed $(wc -l <"$T/want") entries"

tb_start_plugin srv --filter=log file dir="$T/exports" logfile="$T/nbd.log"
tf_mount "$T/mnt" --uri "nbd+unix:///?socket=$T/srv.sock"
v=$T/mnt/images/ext4/1/fs/whole-ext4
ls "$v" >/dev/null || tb_fail "cannot list $v"
# wait for the reads the root listing started (the worker lists ahead) to end
tf_settle "$T/nbd.log"
total=$(tf_reads "$T/nbd.log")
small=$(grep ' Read id=' "$T/nbd.log" | grep -c 'count=0x10000 ' || true)
# the directory's own blocks (scattered among its files' data: one cache
# block each)
dblocks=$(debugfs -R "blocks /many" "$T/exports/ext4@1" 2>/dev/null | wc -w)
echo "mount, root listing and the listing ahead of /many: $total reads, $small of 64 KiB;" \
  "the directory has $dblocks blocks"
[ "$dblocks" -ge 10 ] || tb_fail "debugfs gave $dblocks blocks for /many"
[ "$small" -le $((dblocks + 8)) ] ||
  tb_fail "listing a 6,000-entry directory took $small reads of 64 KiB for $dblocks directory" \
    "blocks (want its inodes in spans)"

# /names: its blocks (debugfs) are one stretch; count the reads inside it
set -- $(debugfs -R "blocks /names" "$T/exports/ext4@1" 2>/dev/null | tr ' ' '\n' | grep . | sort -n | sed -n '1p;$p')
[ $# = 2 ] && [ $(($2 - $1)) -ge 50 ] || tb_fail "debugfs gave no stretch of blocks for /names: $*"
lo=$(($1 * 4096)) hi=$((($2 + 1) * 4096))
dreads=$(grep ' Read id=' "$T/nbd.log" | sed -n 's/.* offset=\(0x[0-9a-f]*\) .*/\1/p' |
  while read -r o; do [ $((o)) -ge $lo ] && [ $((o)) -lt $hi ] && echo "$o"; done | wc -l)
echo "/names: $((($hi - $lo) / 1024)) KiB of directory blocks in $dreads reads"
[ "$dreads" -le 3 ] ||
  tb_fail "/names's $((($hi - $lo) / 1024)) KiB of blocks took $dreads reads (want 256 KiB requests)"
[ "$(ls -f "$v/names" | grep -c '^entry-')" = 20000 ] || tb_fail "/names does not list 20000 entries"

size=$(stat -c %s "$T/exports/ext4@1")
tail_reads=$(grep ' Read id=' "$T/nbd.log" | sed -n 's/.* offset=\(0x[0-9a-f]*\) .*/\1/p' |
  while read -r o; do [ $((o)) -ge $((size - 65536)) ] && echo "$o"; done | wc -l)
echo "reads in the disk's last 64 KiB: $tail_reads"
[ "$tail_reads" = 1 ] || tb_fail "the disk's last 64 KiB was read $tail_reads times (want once)"

(cd "$v/many" && for f in *; do printf '%s %s\n' "$f" "$(stat -c %s "$f")"; done) | sort >"$T/got"
cmp "$T/want" "$T/got" || tb_fail "the view's /many differs from debugfs: $(diff "$T/want" "$T/got" | head -5)"
tf_umount "$T/mnt"

echo "== listed again on a new mount: the same entries"
tf_mount "$T/mnt2" --uri "nbd+unix:///?socket=$T/srv.sock"
(cd "$T/mnt2/images/ext4/1/fs/whole-ext4/many" && ls -f | grep -v '^\.\.\?$' | sort) >"$T/names2"
awk '{ print $1 }' "$T/want" | sort | cmp - "$T/names2" || tb_fail "second listing differs"
tf_umount "$T/mnt2"
tb_check_logs
exit 0
