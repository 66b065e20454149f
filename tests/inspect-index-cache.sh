#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# lib/inspect's cache of base indexes, the one the daemon's rules and the
# view's changes.txt share (issue 17): hits, LRU eviction, the memo of a
# failed build, racing threads (tests/inspect-index-cache.c) on an ext4 image
# with a few directories.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require mke2fs

T=$TB_TMP
mkdir -p "$T/tree/etc/conf.d" "$T/tree/home/user/docs" "$T/tree/var/log"
for d in etc etc/conf.d home/user home/user/docs var/log; do
  for i in 1 2 3; do echo "$d $i" >"$T/tree/$d/file$i"; done
done
truncate -s 16M "$T/ext4"
mke2fs -q -F -t ext4 -d "$T/tree" "$T/ext4"
"$abs_builddir/inspect-index-cache" "$T/ext4" || tb_fail "the index cache"
