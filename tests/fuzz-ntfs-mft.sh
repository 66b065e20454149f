#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# lib/ntfs-mft.c, the MFT record reader of NTFS listings (the records of
# a guest's volume), under libFuzzer: tests/fuzz/ntfs-mft.c, the records
# of a small ntfs-3g-filled volume as its seeds.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/fuzz-functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
tb_fuzz ntfs-mft 1025 "ntfs-mft.c" ""
echo PASS
