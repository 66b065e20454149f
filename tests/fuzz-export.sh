#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Export names (lib/export.c) under libFuzzer: tests/fuzz/export.c.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz export 256 "export.c boot.c util.c store.c clientdir.c manifest.c json.c" "-ljansson -lcrypto"
echo PASS
