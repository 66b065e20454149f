#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check.sh: install what is missing, build with warnings as errors and
# ASan + UBSan, and run every test (make check).  The output ends with
# automake's summary (# TOTAL / # PASS / # FAIL ...).
#
#   ./scripts/check.sh            everything
#   TESTS='unit-conf' ./scripts/check.sh   a subset (any make check variable)
#   TB_DISTCHECK=0 ./scripts/check.sh       without make distcheck at the end
set -euo pipefail
. "$(dirname "$0")/setup.sh"

tb_install_packages
tb_install_guest_packages
build=${TB_BUILD_DIR:-$TB_TOP/build-check}
tb_build "$build" --enable-werror --enable-sanitizers
cd "$build"
make -C "$build" format-check >/dev/null 2>&1 || echo "warning: some C files are not clang-formatted (make format)" >&2

status=0
make -j2 check || status=$?
# What a failing test said, before the summary: CI shows the end of this
# output, not the test's log file.
for trs in tests/*.trs; do
  [ -f "$trs" ] && grep -q '^:test-result: \(FAIL\|ERROR\)' "$trs" || continue
  echo "--- ${trs%.trs}.log says:"
  { grep -a -m 3 '^FAIL: ' "${trs%.trs}.log"; echo "..."; tail -n 12 "${trs%.trs}.log"; } 2>/dev/null |
    cut -c1-400 || true
done
if [ -f tests/test-suite.log ]; then
  sed -n '/^# TOTAL/,/^# ERROR/p' tests/test-suite.log
fi
# A run with zero tests is a failure, not a success.
total=$(sed -n 's/^# TOTAL: *//p' tests/test-suite.log 2>/dev/null | head -1)
if [ "${total:-0}" -eq 0 ]; then
  echo "check.sh: no test ran" >&2
  exit 1
fi
# The release tarball: it builds from scratch (-Werror, no sanitizers),
# installs and uninstalls under its own prefix and passes the unit tests
# (Makefile.am: distcheck-unit).  TB_DISTCHECK=0 skips it.
if [ "${TB_DISTCHECK:-1}" != 0 ]; then
  make -C "$build" distcheck-unit >"$build/distcheck.log" 2>&1 || {
    tail -n 30 "$build/distcheck.log"
    echo "check.sh: make distcheck failed (log: $build/distcheck.log)" >&2
    status=1
  }
  grep -E "^=+$|archives ready|is ready for distribution" "$build/distcheck.log" | tail -n 3 || true
fi
exit $status
