#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Hostile names in the view (issue 14, items 2 and 3).  The master's ext4
# has, written raw into its directory block as a guest with raw disk access
# could: hide/me.exe (a '/'), a file named "." and one named ".." (beyond the
# directory's own two entries).  The view must list them under escaped names
# (hide\x2fme.exe, \x2e, \x2e\x2e) and read them; a name that is not UTF-8
# stays as it is.  A client session creates a file whose name carries a
# terminal escape (ESC[2J) and an OSC sequence: changes.txt must show it
# encoded (\x1b...), never the raw control bytes.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs debugfs nbdfuse

T=$TB_TMP
mkdir -p "$T/src/d"
echo hidden >"$T/src/d/hideXme.exe"
echo dot >"$T/src/d/Q"
echo dotdot >"$T/src/d/QQ"
echo evil >"$T/src/d/$(printf 'evil\377.exe')"
tf_ext4 "$T/master.img" "$T/src" 16M
# Patch a directory entry's name in IMG: inode(4) rec_len(2) name_len(1)
# file_type(1, 1 = regular) name; the unique match of PATTERN (perl).
patch_dirent()
{
  perl -0777 -e '
    my ($img, $from, $to) = @ARGV;
    open(my $f, "+<:raw", $img) or die "$img: $!";
    local $/; my $d = <$f>;
    my @at; while ($d =~ /$from/g) { push @at, $-[0]; }
    die "pattern found " . scalar(@at) . " times\n" unless @at == 1;
    seek($f, $at[0], 0); print $f $to; close $f;' "$T/master.img" "$1" "$2" ||
    tb_fail "cannot patch $1 into the image"
}
patch_dirent 'hideXme\.exe' 'hide/me.exe'
patch_dirent '\x01\x01Q\x00\x00\x00' "$(printf '\001\001.')"
patch_dirent '\x02\x01QQ\x00\x00' "$(printf '\002\001..')"
tf_appliance "$T/master.img"

D=$M/images/demo/1/fs/whole-ext4/d
ls -a "$D" >"$T/ls" || tb_fail "cannot list $D"
for n in 'hide\x2fme.exe' '\x2e' '\x2e\x2e' "$(printf 'evil\377.exe')"; do
  grep -qxF "$n" "$T/ls" || tb_fail "the view does not list $n: $(cat -v "$T/ls")"
done
[ "$(cat "$D/hide\\x2fme.exe")" = hidden ] || tb_fail "cannot read hide\\x2fme.exe"
[ "$(cat "$D/\\x2e")" = dot ] || tb_fail "cannot read the file named ."
[ "$(cat "$D/\\x2e\\x2e")" = dotdot ] || tb_fail "cannot read the file named .."
[ "$(cat "$D/$(printf 'evil\377.exe')")" = evil ] || tb_fail "cannot read evil\\377.exe"

# A session creates a name with terminal escapes (patched in: debugfs
# cannot type them).
mkdir "$T/nf"
nbdfuse "$T/nf/disk" "nbd+unix:///pc01?socket=$T/srv.sock" >"$T/nbdfuse.log" 2>&1 &
echo $! >"$T/nbdfuse.bgpid"
TB_MOUNTS="$T/nf $TB_MOUNTS"
i=0
until [ -f "$T/nf/disk" ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "nbdfuse did not expose pc01: $(cat "$T/nbdfuse.log")"
  sleep 0.1
done
echo x >"$T/x"
debugfs -w -R "write $T/x QQQQclearQQQQQtitleQ.txt" "$T/nf/disk" >"$T/debugfs.log" 2>&1
o=$(grep -obUa 'QQQQclearQQQQQtitleQ\.txt' "$T/nf/disk" | head -1 | cut -d: -f1)
[ -n "$o" ] || tb_fail "the new file is not on pc01's disk: $(cat "$T/debugfs.log")"
printf '\033[2Jclear\033]0;title\007.txt' | dd of="$T/nf/disk" bs=1 seek="$o" conv=notrunc status=none
sync
fusermount3 -u "$T/nf"
wait "$(cat "$T/nbdfuse.bgpid")" || true
tb_wait_idle "$state" pc01
i=0
until grep -q 'clear' "$M/clients/pc01/changes.txt" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "changes.txt does not list the new file: $(cat -v "$M/clients/pc01/changes.txt")"
  sleep 0.1
done
grep '^created' "$M/clients/pc01/changes.txt" |
  grep -qF ' whole-ext4/\x1b[2Jclear\x1b]0;title\x07.txt' ||
  tb_fail "changes.txt does not encode the name: $(cat -v "$M/clients/pc01/changes.txt")"
LC_ALL=C grep -q "$(printf '[\001-\010\016-\037\177]')" "$M/clients/pc01/changes.txt" &&
  tb_fail "changes.txt holds raw control characters: $(cat -v "$M/clients/pc01/changes.txt")"

tf_umount "$M"
tb_check_logs
exit 0
