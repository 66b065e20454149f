#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Progress on a terminal (issue 18 §4): tabulactl draws a progress line on
# stderr when it is a terminal (script(1) gives it one here):
#  - image import: the "copying" and "hashing" passes, percent, "X of Y" in
#    bytes;
#  - image publish: the copy into the repository, percent and "X / Y" (it
#    showed nothing before);
#  - image pull at --rate-limit 4M of a 12 MiB version, so its download
#    takes 3 s whatever the machine's load: a rate and an ETA;
#  - no progress on a pipe, or with --quiet.
# Every command draws the same line (tabulactl/progress.c): "WHAT: PHASE
# [####....] N% X of Y RATE, ETA"; merge's is checked in
# tests/daemon-merge.sh.  -q (or --quiet, before or after the command)
# turns it off.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/repo-common.sh"
tb_require script

# on_tty NAME CMD...: CMD with a terminal as stdin, stdout and stderr; the
# terminal's output, one line per redraw, in $TB_TMP/NAME.tty.
on_tty()
{
  _name=$1
  shift
  _cmd=
  for _a in "$@"; do
    _cmd="$_cmd '$_a'"
  done
  script -qec "$_cmd" /dev/null </dev/null >"$TB_TMP/$_name.raw" 2>&1 ||
    tb_fail "$_name on a terminal: $(tr '\r' '\n' <"$TB_TMP/$_name.raw" | tail -n 5)"
  tr '\r' '\n' <"$TB_TMP/$_name.raw" | sed 's/\x1b\[K//g' >"$TB_TMP/$_name.tty"
}

# has NAME WHAT REGEX: a line of NAME's terminal output matches REGEX.
has()
{
  grep -Eq -- "$3" "$TB_TMP/$1.tty" ||
    tb_fail "$1: $2: no line /$3/ on the terminal: $(grep -v '^$' "$TB_TMP/$1.tty" | tail -n 8)"
  echo "ok: $1: $2: $(grep -E -- "$3" "$TB_TMP/$1.tty" | tail -n 1)"
}

repo_make_image "$TB_TMP/v1.img" 3 1
repo_write_config "$pub"
repo_write_config "$app"

echo "== import"
on_tty import "$TB_CTL" -c "$pub.json" image import demo "$TB_TMP/v1.img"
has import "the copying pass" '^importing demo: copying \[[#.]+\] +[0-9]+% [0-9.]+ [KMG]?i?B of 12'
has import "the hashing pass" '^importing demo: hashing \[[#.]+\] +[0-9]+% [0-9.]+ [KMG]?i?B of 12'
has import "the result, on a line of its own" '^imported .* as demo@1 '

echo "== publish"
on_tty publish "$TB_CTL" -c "$pub.json" image publish demo@1 "$www"
has publish "the copy's progress" '^publishing demo@1: copying \[[#.]+\] +[0-9]+% .* of 12'
has publish "the result, on a line of its own" '^published demo@1 '
cmp -s "$www/demo/1.img" "$TB_TMP/v1.img" || tb_fail "published 1.img differs from demo@1"
rm -rf "$www/demo"
"$TB_CTL" -c "$pub.json" image publish demo@1 "$www" >"$TB_TMP/pipe.out" 2>"$TB_TMP/pipe.err" ||
  tb_fail "publish on a pipe: $(cat "$TB_TMP/pipe.err")"
[ ! -s "$TB_TMP/pipe.err" ] || tb_fail "publish drew progress on a pipe: $(cat "$TB_TMP/pipe.err")"
rm -rf "$www/demo"
on_tty publish-quiet "$TB_CTL" -c "$pub.json" image publish -q demo@1 "$www"
if grep -q 'copying' "$TB_TMP/publish-quiet.tty"; then
  tb_fail "publish --quiet drew progress: $(cat "$TB_TMP/publish-quiet.tty")"
fi
echo "ok: no progress on a pipe or with --quiet"

echo "== pull, rate-limited: an ETA"
repo_serve
on_tty pull "$TB_CTL" -c "$app.json" image pull demo --from "$url" --rate-limit 4M
has pull "the download with a rate and an ETA" '^pulling demo: downloading \[[#.]+\] +[0-9]+% .* of 12[.0-9]* MiB [0-9.]+ [KMG]?i?B/s, ETA [0-9]+m[0-9]{2}s'
has pull "the result, on a line of its own" '^pulled demo@1 '

echo "== -q: no progress line, as a command's option or before the command"
on_tty import-quiet "$TB_CTL" -c "$pub.json" image import -q demo "$TB_TMP/v1.img"
has import-quiet "the result" 'identical to demo@1'
if grep -q 'importing demo:' "$TB_TMP/import-quiet.tty"; then
  tb_fail "import -q drew progress: $(cat "$TB_TMP/import-quiet.tty")"
fi
on_tty pull-quiet "$TB_CTL" -q -c "$app.json" image pull demo --from "$url"
has pull-quiet "the result" 'is already here as demo@1'
if grep -q 'pulling demo:' "$TB_TMP/pull-quiet.tty"; then
  tb_fail "tabulactl -q image pull drew progress: $(cat "$TB_TMP/pull-quiet.tty")"
fi
on_tty pull-again "$TB_CTL" -c "$app.json" image pull demo --from "$url"
has pull-again "the index step without -q" '^pulling demo: fetching the index\.\.\.'
echo "ok: -q"
