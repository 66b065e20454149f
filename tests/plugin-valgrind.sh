#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The plugin under valgrind memcheck, inside a real nbdkit: session turns of
# both policies, unaligned writes, zeroes, trims, flushes, extents, admin
# exports and a reload, with no invalid read or write, no use of
# uninitialised memory (which ASan does not see), and no definite leak (the
# plugin's leaks, which ASan cannot tell from nbdkit's: tests/nbdkit-san.in).
# memcheck cannot run ASan code: in a sanitizer build this loads the copy of
# the plugin built with UBSan only (nbdkit-plugin/Makefile.am).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require valgrind
if grep -q "^san_runtime='/" "$TB_NBDKIT"; then # a sanitizer build (nbdkit-san.in)
  TB_PLUGIN=$abs_top_builddir/nbdkit-plugin/.libs/nbdkit-tabula-memcheck-plugin.so
  [ -f "$TB_PLUGIN" ] || tb_fail "$TB_PLUGIN is not built (make builds it with --enable-sanitizers)"
fi

M=1048576
tb_make_file "$TB_TMP/master.img" $((16 * M)) 1 $((2 * M))
state=$TB_TMP/state
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
  "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 1 },
  "vm01": { "image": "demo", "policy": "persist",
            "watchdog": { "protect": [ { "name": "boot", "region": "mbr" } ], "idle": "1s" } } }'

sock=$TB_TMP/v.sock
valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
  --log-file="$TB_TMP/valgrind.log" \
  nbdkit -f --unix "$sock" "$TB_PLUGIN" config="$TB_TMP/tabula.json" >"$TB_TMP/v.log" 2>&1 &
pid=$!
echo $pid >"$TB_TMP/v.bgpid"
i=0
until [ -S "$sock" ]; do
  kill -0 $pid 2>/dev/null || tb_fail "nbdkit under valgrind did not start: $(cat "$TB_TMP/v.log")"
  i=$((i + 1))
  [ $i -lt 600 ] || tb_fail "nbdkit under valgrind did not listen within 60 s"
  sleep 0.1
done

io() { "$TB_IO" -s "$sock" "$@"; }
io -e pc01 write:100:5000:2 zero:65536:70000 trim:$((4 * M)):$M fua:$((3 * M + 7)):9000:3 \
  flush read:100:5000:2 extents:0:$((16 * M)) >/dev/null || tb_fail "pc01 session 1"
io -e pc01 read:100:5000:1 write:8192:512:5 >/dev/null || tb_fail "pc01 session 2 must be clean"
io -e vm01 write:8192:4096:4 !write:0:512:4 flush >/dev/null || tb_fail "vm01 session 1"
io -e vm01 read:8192:4096:4 >/dev/null || tb_fail "vm01 session 2"
io -e vm01@overlay extents:0:$((16 * M)) read:0:8192:0 read:8192:4096:4 >/dev/null || tb_fail "vm01@overlay"
io -e vm01@live read:8192:4096:4 >/dev/null || tb_fail "vm01@live"
io -e pc01@session/1 read:100:5000:2 >/dev/null || tb_fail "pc01@session/1"
io -e demo@1 read:0:4096:1 >/dev/null || tb_fail "demo@1"
io --list >/dev/null || tb_fail "export list"
io -e ../x read:0:1:0 >/dev/null 2>&1 && tb_fail "../x was served"
# A reload with a bad file is logged and the old configuration kept.
cp "$TB_TMP/tabula.json" "$TB_TMP/good.json"
echo '{ "state_dir": 1 }' >"$TB_TMP/tabula.json"
io -e pc01 read:0:4096:1 >/dev/null || tb_fail "a bad reload must keep the running config"
cp "$TB_TMP/good.json" "$TB_TMP/tabula.json"
sleep 1.5 # one watchdog tick with a client idle

kill -TERM $pid
i=0
while kill -0 $pid 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 600 ] || tb_fail "nbdkit under valgrind did not stop within 60 s"
  sleep 0.1
done
st=0
wait $pid || st=$?
rm -f "$TB_TMP/v.bgpid"
if [ $st -ne 0 ] || grep -q . "$TB_TMP/valgrind.log"; then
  cat "$TB_TMP/valgrind.log" >&2
  tb_fail "valgrind found errors in the plugin (exit $st)"
fi
echo "ok: no memcheck errors"
