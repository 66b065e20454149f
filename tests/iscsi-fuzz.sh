#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The iSCSI PDU parser under fuzzing (tests/iscsi-fuzz.c).  make check runs
# the built-in mutator (ASan/UBSan build, fixed seed) and, when clang is
# installed, libFuzzer for TB_FUZZ_SECONDS (default 10; set e.g. 600 for a
# longer run).  Any crash, sanitizer report or parser overrun fails.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
TB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tabula-test.XXXXXX")
trap 'rm -rf "$TB_TMP"' EXIT
"$abs_builddir/iscsi-fuzz" "${TB_FUZZ_ITERATIONS:-200000}" || tb_fail "the built-in fuzzer found a crash"
if command -v clang >/dev/null 2>&1; then
  clang -g -O1 -fsanitize=fuzzer,address,undefined -DISC_LIBFUZZER -I"$abs_top_builddir" \
    -I"$abs_top_srcdir/iscsi" "$abs_top_srcdir/tests/iscsi-fuzz.c" "$abs_top_srcdir/iscsi/pdu.c" \
    -lpthread -o "$TB_TMP/fuzz" 2>"$TB_TMP/cc.log" || tb_fail "clang -fsanitize=fuzzer: $(tail -n 5 "$TB_TMP/cc.log")"
  mkdir -p "$TB_TMP/corpus"
  (cd "$TB_TMP" && ./fuzz -max_total_time="${TB_FUZZ_SECONDS:-10}" -max_len=9000 corpus \
    >"$TB_TMP/fuzz.log" 2>&1) || { tail -n 30 "$TB_TMP/fuzz.log"; tb_fail "libFuzzer found a crash"; }
  grep -E "^Done [0-9]+ runs" "$TB_TMP/fuzz.log" || true
else
  echo "clang is not installed: libFuzzer run skipped, the built-in mutator ran"
fi
echo "PASS: $0"
