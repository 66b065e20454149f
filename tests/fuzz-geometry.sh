#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The ext and NTFS record geometry (lib/inspect-geom.c) and the raw-inode
# parsers (lib/inspect-meta.c) of the indexed diff, on guest bytes, under
# libFuzzer:
# tests/fuzz/geometry.c, tests/fuzz/ntfs-geometry.c (a 2 MiB mkntfs image
# as its seed).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz geometry 65536 "util.c" "-ljansson -lcrypto -lnbd -ltsk"
tb_fuzz ntfs-geometry 2097152 "util.c" "-ljansson -lcrypto -lnbd -ltsk"
echo PASS
