#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Control-socket reply lines (lib/control.c) under libFuzzer: tests/fuzz/control.c.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz control 131072 "control.c util.c" "-ljansson"
echo PASS
