#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-calls.sh (make check's check-calls in restored/) passes on
# restored/ as built, and fires on what it is there to catch: an include of
# a later file's header, a call against daemon.h's order, a cycle, a file the
# order does not place.  Each bad case is the real sources and objects with
# one thing changed, in a copy.
. "$(dirname "$0")/functions.sh"
tb_setup

check=$abs_top_srcdir/scripts/check-calls.sh
src=$abs_top_srcdir/restored
# The objects of today's sources (a build tree can keep the object of a
# file that has since gone, e.g. watchdog.o after its split).
objs=()
for o in "$abs_top_builddir"/restored/tabula_restored-*.o; do
  f=$(basename "$o" .o)
  [ -f "$src/${f#tabula_restored-}.c" ] && objs+=("$o")
done
[ ${#objs[@]} -gt 0 ] || tb_fail "restored/ is not built"

# As built: it passes and shows the graph.
bash "$check" "$src" "${objs[@]}" >"$TB_TMP/ok.out" 2>&1 || {
  cat "$TB_TMP/ok.out"
  tb_fail "check-calls fails on restored/ as built"
}
grep -q "^restored/ include graph" "$TB_TMP/ok.out" || tb_fail "no include graph printed"
grep -Eq "^ +[0-9]+ +daemon.c +-> .*ops.c" "$TB_TMP/ok.out" || tb_fail "no call graph printed"

# expect_fail NAME PATTERN SRCDIR OBJ...: check-calls exits 1 saying PATTERN.
expect_fail()
{
  local name=$1 pattern=$2
  shift 2
  if bash "$check" "$@" >"$TB_TMP/$name.out" 2>&1; then
    cat "$TB_TMP/$name.out"
    tb_fail "$name: check-calls passed"
  fi
  grep -q -- "$pattern" "$TB_TMP/$name.out" || {
    cat "$TB_TMP/$name.out"
    tb_fail "$name: no \"$pattern\""
  }
}

# 1. system.c (rank 1) includes journal.c's header.
mkdir "$TB_TMP/inc"
cp "$src"/*.c "$src"/*.h "$TB_TMP/inc/"
sed -i '0,/#include "daemon.h"/s//#include "daemon.h"\n#include "journal.h"/' "$TB_TMP/inc/system.c"
grep -q '#include "journal.h"' "$TB_TMP/inc/system.c" || tb_fail "the bad include was not added"
expect_fail include "system.c includes journal.h" "$TB_TMP/inc" "${objs[@]}"

# 2. The order with system.c last: every file that logs calls against it.
mkdir "$TB_TMP/order"
cp "$src"/*.c "$src"/*.h "$TB_TMP/order/"
sed -i '/^ \*   system\.c /{h;d}; /^ \*   daemon\.c /{G}' "$TB_TMP/order/daemon.h"
expect_fail order "supervise.c calls system.c (log_msg)" "$TB_TMP/order" "${objs[@]}"

# 3. A cycle: two files of one rank that call each other.
mkdir "$TB_TMP/cycle"
printf '%s\n' '/* in this order:' ' *' ' *   a.c b.c   each other' ' *' ' */' >"$TB_TMP/cycle/daemon.h"
printf 'int b(int);\nint a(int x) { return x ? b(x - 1) : 0; }\n' >"$TB_TMP/cycle/a.c"
printf 'int a(int);\nint b(int x) { return x ? a(x - 1) : 1; }\n' >"$TB_TMP/cycle/b.c"
(cd "$TB_TMP/cycle" && cc -c -o prog-a.o a.c && cc -c -o prog-b.o b.c)
expect_fail cycle "form a cycle" "$TB_TMP/cycle" "$TB_TMP/cycle/prog-a.o" "$TB_TMP/cycle/prog-b.o"
grep -q "a.c calls b.c (b)" "$TB_TMP/cycle.out" || tb_fail "cycle: the edge is not named"

# 4. A file the order does not place.
mkdir "$TB_TMP/unplaced"
cp "$src"/*.c "$src"/*.h "$TB_TMP/unplaced/"
printf 'int extra(void) { return 0; }\n' >"$TB_TMP/unplaced/extra.c"
cc -c -o "$TB_TMP/unplaced/prog-extra.o" "$TB_TMP/unplaced/extra.c"
expect_fail unplaced "extra.c is not in daemon.h's order" "$TB_TMP/unplaced" "${objs[@]}" \
  "$TB_TMP/unplaced/prog-extra.o"

sed -n '/^restored\//,$p' "$TB_TMP/ok.out"
