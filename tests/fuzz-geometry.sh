#!/bin/sh
# The ext record geometry and raw-inode parsers of lib/inspect.c (the
# indexed diff's, on guest bytes) under libFuzzer: tests/fuzz/geometry.c.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz geometry 65536 "util.c" "-ljansson -lcrypto -lnbd -ltsk"
echo PASS
