#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# bench-status.sh: how fast the daemon answers an administrator.  A daemon with
# 500 configured clients (each with a state directory and a finished session,
# so status has something to read for every one); `tabulactl status`,
# `tabulactl --json status` and `tabulactl clients` are each run 20 times and
# the median and slowest wall-clock times are printed.  Goal: status under
# 100 ms.
#
#   scripts/bench-status.sh [BUILD_DIR] [CLIENTS]   (default: ., 500)
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
n=${2:-500}
daemon=$build/restored/tabula-restored
ctl=$build/tabulactl/tabulactl
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
io=$build/tests/plugin-io
for f in "$daemon" "$ctl" "$plugin" "$io"; do
  [ -e "$f" ] || { echo "bench-status: $f is not built (give the build directory)" >&2; exit 1; }
done

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-status.XXXXXX")
dpid=
cleanup()
{
  [ -n "$dpid" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

truncate -s 1G "$T/master.img"
{
  printf '{ "state_dir": "%s/state", "listen": { "unix": "%s/nbd.sock" },\n' "$T" "$T"
  printf '  "control": "%s/control.sock", "plugin": "%s",\n' "$T" "$plugin"
  printf '  "images": { "demo": {} }, "clients": {\n'
  for i in $(seq 1 "$n"); do
    printf '    "pc%03d": { "image": "demo", "policy": "%s" }%s\n' "$i" \
      "$([ $((i % 2)) = 0 ] && echo rollback || echo persist)" "$([ "$i" -lt "$n" ] && echo ,)"
  done
  printf '} }\n'
} >"$T/tabula.json"
"$ctl" -c "$T/tabula.json" image import demo "$T/master.img" >/dev/null

"$daemon" -c "$T/tabula.json" >"$T/daemon.log" 2>&1 &
dpid=$!
i=0
until "$ctl" -c "$T/tabula.json" status >/dev/null 2>&1 && [ -S "$T/nbd.sock" ]; do
  i=$((i + 1))
  [ $i -lt 300 ] || { echo "bench-status: the daemon did not start: $(tail -5 "$T/daemon.log")" >&2; exit 1; }
  sleep 0.1
done

# One short session per client (in batches of 50 connections at once), so
# every client has an overlay, a session.json and events.
for b in $(seq 0 50 $((n - 1))); do
  args=()
  for i in $(seq $((b + 1)) $((b + 50 < n ? b + 50 : n))); do args+=(-e "$(printf 'pc%03d' "$i")"); done
  "$io" -s "$T/nbd.sock" "${args[@]}" write:0:4096:1 >/dev/null
done
sleep 1

# timed CMD...: prints "median_ms max_ms" of 20 runs
timed()
{
  local t0 t1 r times=()
  for r in $(seq 1 20); do
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000)))
  done
  printf '%s\n' "${times[@]}" | sort -n |
    awk '{ v[NR] = $1 } END { printf "%.1f %.1f\n", (v[10] + v[11]) / 2000, v[NR] / 1000 }'
}

printf '\n## tabulactl against a daemon with %d clients (20 runs each)\n\n' "$n"
printf '| command | median ms | slowest ms |\n|---|---:|---:|\n'
for cmd in "status" "--json status" "clients"; do
  # shellcheck disable=SC2086
  set -- $(timed "$ctl" -c "$T/tabula.json" $cmd)
  printf '| tabulactl %s | %s | %s |\n' "$cmd" "$1" "$2"
  if [ "$cmd" = status ]; then
    bench_summary "tabulactl status, $n clients (median of 20)" "$1 ms" "-" "-" "< 100 ms"
  fi
done
