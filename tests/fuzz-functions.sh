# SPDX-License-Identifier: BSD-3-Clause
# Helpers of the libFuzzer tests (tests/fuzz-*.sh), one way for every fuzzer.
#
# A target is a C file defining LLVMFuzzerTestOneInput (tests/fuzz/NAME.c)
# built here with $FUZZ_CC (configure found clang with
# -fsanitize=fuzzer,address,undefined; empty: the test skips, saying so)
# together with the lib/ sources it exercises, so the parser is
# coverage-instrumented and under ASan/UBSan.  The sources must be a closed set
# (dead code is dropped: --gc-sections).  It runs from its seed corpus
# (tests/fuzz/NAME/, committed, large ones as .gz; new inputs go to a
# temporary directory) for
# TB_FUZZ_SECONDS (default 3: make check; set e.g. 600 for a longer run).
# A crash, a sanitizer report, a leak, a timeout (10 s per input) or memory
# past 2 GiB fails the test; the input that did it is kept as
# tests/fuzz-NAME-crash-* in the build directory, to replay with
#   tests/fuzz-NAME tests/fuzz-NAME-crash-...   (the binary is kept too).
#
# Usage: tb_fuzz NAME MAX_LEN "LIB SOURCES (relative to lib/)" "LIBS"
tb_fuzz()
{
  _name=$1 _max=$2 _srcs=$3 _libs=$4
  if [ -z "${FUZZ_CC:-}" ]; then
    tb_skip "configure found no clang with -fsanitize=fuzzer (install clang, re-run configure)"
  fi
  _src=
  for _f in $_srcs; do _src="$_src $abs_top_srcdir/lib/$_f"; done
  _bin=$abs_builddir/fuzz-$_name
  # shellcheck disable=SC2086
  "$FUZZ_CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer -ffunction-sections -fdata-sections -Wl,--gc-sections -DTB_FUZZ -I"$abs_top_builddir" -I"$abs_top_srcdir/lib" \
    -I/usr/include/tsk $(pkg-config --cflags jansson libnbd 2>/dev/null) \
    "$abs_top_srcdir/tests/fuzz/$_name.c" $_src $_libs -lpthread -o "$_bin" \
    2>"$TB_TMP/cc.log" || tb_fail "building the $_name fuzzer: $(tail -n 20 "$TB_TMP/cc.log")"
  mkdir -p "$TB_TMP/corpus"
  _seeds=$abs_top_srcdir/tests/fuzz/$_name
  [ -d "$_seeds" ] || tb_fail "no seed corpus $_seeds"
  # Large seeds (disk images) are committed gzipped.
  rm -rf "$TB_TMP/seeds" && mkdir -p "$TB_TMP/seeds" && cp "$_seeds"/* "$TB_TMP/seeds/" &&
    for _f in "$TB_TMP"/seeds/*.gz; do [ ! -e "$_f" ] || gunzip "$_f"; done ||
    tb_fail "cannot copy the seeds of $_name"
  _seeds=$TB_TMP/seeds
  _secs=${TB_FUZZ_SECONDS:-3}
  echo "fuzzing $_name for $_secs s from $(ls "$_seeds" | wc -l) seeds"
  rm -f "$abs_builddir/fuzz-$_name-crash-"*
  (cd "$TB_TMP" && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 "$_bin" -max_total_time="$_secs" \
    -max_len="$_max" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$abs_builddir/fuzz-$_name-" corpus "$_seeds" >"$TB_TMP/fuzz.log" 2>&1) || {
    tail -n 40 "$TB_TMP/fuzz.log"
    tb_fail "the $_name fuzzer found a crash: $(ls "$abs_builddir/fuzz-$_name-crash-"* 2>/dev/null)"
  }
  grep -E "^Done [0-9]+ runs|stat::number_of_executed_units" "$TB_TMP/fuzz.log" | head -n 2
}
