#!/usr/bin/env bash
# scripts/check.sh: install what is missing, build with warnings as errors and
# ASan + UBSan, and run every test (make check).  The output ends with
# automake's summary (# TOTAL / # PASS / # FAIL ...).
#
#   ./scripts/check.sh            everything
#   TESTS='unit-conf' ./scripts/check.sh   a subset (any make check variable)
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
# A run with zero tests is a failure, not a success.
total=$(sed -n 's/^# TOTAL: *//p' tests/test-suite.log 2>/dev/null | head -1)
if [ -f tests/test-suite.log ]; then
  sed -n '/^# TOTAL/,/^# ERROR/p' tests/test-suite.log
fi
if [ "${total:-0}" -eq 0 ]; then
  echo "check.sh: no test ran" >&2
  exit 1
fi
exit $status
