#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Readers of the view at once are served side by side (issue 16, speed):
# lib/inspect-disk.c opens up to four NBD connections to an export when the
# open ones are busy, rather than queueing every FUSE thread behind one
# libnbd handle.
#  - four files read at once give their own bytes, and the server saw more
#    than one connection to the export (nbdkit's log filter counts them);
#  - a server that takes one connection only (nbdkit's limit filter): the
#    refused connection is not an error, every read still succeeds on the
#    one open connection.
. "$abs_top_srcdir/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/fuse-functions.sh"
tb_require mke2fs

T=$TB_TMP
mkdir -p "$T/src"
for i in 1 2 3 4; do
  head -c 16777216 /dev/urandom >"$T/src/f$i.bin"
done
(cd "$T/src" && sha256sum f?.bin) >"$T/want.sha"
mkdir "$T/exports"
truncate -s 96M "$T/exports/ext4@1"
mke2fs -q -F -t ext4 -b 4096 -d "$T/src" "$T/exports/ext4@1" >/dev/null

# read_all MOUNT: the four files at once; their sums in $T/got.sha
read_all()
{
  _v=$1/images/ext4/1/fs/whole-ext4
  ls "$_v" >/dev/null || tb_fail "cannot list $_v"
  _pids=
  for i in 1 2 3 4; do
    (cd "$_v" && sha256sum "f$i.bin" >"$T/sum$i") &
    _pids="$_pids $!"
  done
  # (not a bare wait: the servers are this shell's children too)
  for _p in $_pids; do
    wait "$_p" || tb_fail "sha256sum under $_v failed"
  done
  cat "$T/sum1" "$T/sum2" "$T/sum3" "$T/sum4" >"$T/got.sha"
  cmp "$T/want.sha" "$T/got.sha" || tb_fail "files read at once differ: $(cat "$T/got.sha")"
}

echo "== four readers at once: their own bytes, over more than one connection"
tb_start_plugin srv --filter=log file dir="$T/exports" logfile="$T/nbd.log"
tf_mount "$T/mnt" --uri "nbd+unix:///?socket=$T/srv.sock"
read_all "$T/mnt"
n=$(grep -c 'Connect export="ext4@1"' "$T/nbd.log" || true)
[ "$n" -ge 2 ] && [ "$n" -le 4 ] ||
  tb_fail "four readers at once opened $n connections to the export (want 2 to 4)"
echo "$n connections"
tf_umount "$T/mnt"

echo "== a server that takes one connection: the reads share it"
tb_start_plugin one --filter=limit --filter=log file dir="$T/exports" limit=1 \
  logfile="$T/one.log"
tf_mount "$T/one-mnt" --uri "nbd+unix:///?socket=$T/one.sock"
read_all "$T/one-mnt"
n=$(grep -c 'Connect export="ext4@1"' "$T/one.log" || true)
[ "$n" = 1 ] || tb_fail "the limited server logged $n connections to the export"
tf_umount "$T/one-mnt"
tb_check_logs
exit 0
