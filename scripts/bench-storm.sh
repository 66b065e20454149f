#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-storm.sh: a boot storm.  N clients (32) start at once, each reading the
# same 256 MiB "boot set" through its own export, as diskless PCs do when a lab
# is switched on.  Reported: aggregate throughput and the slowest client's
# time, against one client alone; side by side with nbdkit's file plugin
# serving the raw master to the same N connections (no overlays: the ceiling).
#
#   scripts/bench-storm.sh [BUILD_DIR] [CLIENTS]   (default: ., 32)
#
# fio's nbd engine, one job a client, sequential 1 MiB reads, iodepth 4.
set -eu
. "$(dirname "$0")/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
n=${2:-32}
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
ctl=$build/tabulactl/tabulactl
for f in "$plugin" "$ctl"; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "bench-storm: $f is not built" >&2; exit 1; }
done
command -v fio >/dev/null || { echo "bench-storm: fio is missing (scripts/packages-bench.txt)" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-storm.XXXXXX")
cleanup()
{
  for p in "$T"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 0.3
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

M=1048576
truncate -s $((1024 * M)) "$T/master.img"
head -c $((256 * M)) /dev/urandom | dd of="$T/master.img" conv=notrunc status=none
{
  printf '{ "state_dir": "%s/state", "images": { "demo": {} }, "clients": {' "$T"
  i=1
  while [ $i -le "$n" ]; do
    [ $i -gt 1 ] && printf ','
    printf '"pc%02d": { "image": "demo", "policy": "rollback", "keep_sessions": 0 }' $i
    i=$((i + 1))
  done
  printf '} }\n'
} >"$T/tabula.json"
"$ctl" -c "$T/tabula.json" image import demo "$T/master.img" >/dev/null

nbdkit --unix "$T/tabula.sock" -P "$T/tabula.pid" --threads 64 "$plugin" config="$T/tabula.json"
nbdkit --unix "$T/file.sock" -P "$T/file.pid" --threads 64 file "$T/master.img"
sleep 0.5

# storm SOCKET CLIENTS EXPORT-PREFIX: prints "MB/s slowest_seconds"
storm()
{
  {
    echo "[global]"
    echo "ioengine=nbd"
    echo "rw=read"
    echo "bs=1M"
    echo "iodepth=4"
    echo "size=256M"
    i=1
    while [ $i -le "$2" ]; do
      echo "[c$i]"
      if [ -n "$3" ]; then
        printf 'uri=nbd+unix:///%s%02d?socket=%s\n' "$3" $i "$1"
      else
        printf 'uri=nbd+unix:///?socket=%s\n' "$1"
      fi
      i=$((i + 1))
    done
  } >"$T/storm.fio"
  fio --output-format=json --output="$T/storm.json" "$T/storm.fio" >/dev/null 2>"$T/fio.err" ||
    { echo "bench-storm: fio failed: $(cat "$T/fio.err")" >&2; exit 1; }
  python3 - "$T/storm.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
jobs = j["jobs"]
total = sum(x["read"]["io_bytes"] for x in jobs)
slowest = max(x["job_runtime"] for x in jobs) / 1000.0
print("%.0f %.2f" % (total / slowest / 1e6, slowest))
PY
}

printf '\n## boot storm: %d clients each read the same 256 MiB at once\n\n' "$n"
printf '| server | clients | aggregate MB/s | slowest client s |\n|---|---:|---:|---:|\n'
for srv in tabula file; do
  prefix=
  [ $srv = tabula ] && prefix=pc
  set -- $(storm "$T/$srv.sock" 1 "$prefix")
  printf '| %s | 1 | %s | %s |\n' "$srv" "$1" "$2"
  eval "${srv}_one_mbs=$1 ${srv}_one_s=$2"
  set -- $(storm "$T/$srv.sock" "$n" "$prefix")
  printf '| %s | %d | %s | %s |\n' "$srv" "$n" "$1" "$2"
  eval "${srv}_all_mbs=$1 ${srv}_all_s=$2"
done
bench_summary "boot storm, $n clients: aggregate" "$tabula_all_mbs MB/s" "nbdkit file, $n clients" \
  "$file_all_mbs MB/s" "(anchor)"
bench_summary "boot storm, $n clients: slowest client" "$tabula_all_s s" "nbdkit file, $n clients" \
  "$file_all_s s" "(anchor)"
bench_summary "boot storm: 1 client alone" "$tabula_one_s s" "nbdkit file, 1 client" \
  "$file_one_s s" "(anchor)"
