#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# What image repositories and the state directory hand us: version manifests
# (lib/manifest.c) and a repository's index.json (lib/repo-index.c) under libFuzzer:
# tests/fuzz/manifest.c, tests/fuzz/repo-index.c.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz manifest 65536 "store.c clientdir.c manifest.c json.c util.c" "-ljansson -lcrypto"
tb_fuzz repo-index 65536 "store.c clientdir.c manifest.c json.c util.c events.c" "-ljansson -lcrypto"
echo PASS
