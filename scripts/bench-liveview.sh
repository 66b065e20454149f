#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-liveview.sh: admin reads of a live client (ID@live), by where its
# session runs, side by side in one run (lib/liveview.h):
#   - pc01's session runs in tabula-iscsid: nbdkit asks it over
#     STATE/view-iscsi.sock, one round trip per request;
#   - pc02's session runs in nbdkit itself: read in its own memory;
#   - pc03 runs no session: nbdkit reads its overlay on disk.
# Each session wrote 64 KiB first and stays open during the runs.  One
# 256 MiB master of random data; nbdkit on a unix socket, fio's nbd engine
# (one job): 4 KiB random read at queue depth 1 and 16, 1 MiB sequential
# read at queue depth 4.  Each figure is the median of REPEAT runs after a
# warm-up run.
#
#   scripts/bench-liveview.sh [BUILD_DIR] [RUNTIME] [REPEAT]   (default: ., 5, 3)
#
# Goal (none set by an issue): pc01 close to pc02; the view reads 4 KiB to
# 128 KiB requests.
set -eu
. "$(dirname "$0")/benchlib.sh"
src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-.}" && pwd)
runtime=${2:-5}
repeat=${3:-3}
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
ctl=$build/tabulactl/tabulactl
iscsid=$build/iscsi/tabula-iscsid
for f in "$plugin" "$ctl" "$iscsid"; do
  [ -f "$f" ] || { echo "bench-liveview: $f is not built" >&2; exit 1; }
done
for p in fio qemu-io python3 jq; do
  command -v $p >/dev/null || { echo "bench-liveview: $p is missing (scripts/packages-bench.txt)" >&2; exit 1; }
done

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-liveview.XXXXXX")
cleanup()
{
  exec 3>&- 4>&- 2>/dev/null || true
  for p in "$T"/*.pid; do [ ! -f "$p" ] || kill "$(cat "$p")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

PI=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
M=1048576
head -c $((256 * M)) /dev/urandom >"$T/master.img"
head -c 65536 /dev/urandom >"$T/blk"
cat >"$T/tabula.json" <<EOF
{ "state_dir": "$T/state", "listen": { "iscsi": "127.0.0.1:$PI" },
  "images": { "demo": {} },
  "clients": { "pc01": { "image": "demo", "keep_sessions": 0 },
               "pc02": { "image": "demo", "keep_sessions": 0 },
               "pc03": { "image": "demo", "keep_sessions": 0 } } }
EOF
"$ctl" -c "$T/tabula.json" image import demo "$T/master.img" >/dev/null
"$iscsid" --pidfile "$T/iscsid.pid" "$T/tabula.json" 2>"$T/iscsid.log" &
sock=$T/nbd.sock
nbdkit --unix "$sock" -P "$T/nbdkit.pid" --threads 16 "$plugin" config="$T/tabula.json"
i=0
while [ ! -s "$T/iscsid.pid" ] || [ ! -s "$T/nbdkit.pid" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "bench-liveview: servers did not start: $(cat "$T/iscsid.log")" >&2; exit 1; }
  sleep 0.1
done

# pc01: an iSCSI session that wrote and stays logged in (commands on a fifo).
mkfifo "$T/fifo"
python3 "$src/tests/iscsi-raw.py" "$PI" iqn.2026-12.lan.tabula:pc01 iqn.2024-01.lan.tabula.bench:init \
  session <"$T/fifo" >"$T/init.out" 2>&1 &
echo $! >"$T/init.pid"
exec 3>"$T/fifo"
echo "write 0 $T/blk" >&3
# pc02: an NBD session that wrote and stays connected (qemu-io reading
# commands from a fifo).
mkfifo "$T/fifo2"
qemu-io -f raw "nbd+unix:///pc02?socket=$sock" <"$T/fifo2" >"$T/qemu-io.out" 2>&1 &
echo $! >"$T/qemu-io.pid"
exec 4>"$T/fifo2"
echo "write -P 0x5a 0 64k" >&4
i=0
until grep -q written "$T/init.out" && [ -f "$T/state/clients/pc02/overlay" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "bench-liveview: the sessions did not start: $(cat "$T/init.out")" >&2; exit 1; }
  sleep 0.1
done

# run CLIENT MODE BS QD SECONDS: MiB/s and IOPS
run()
{
  fio --name=b --ioengine=nbd --uri="nbd+unix:///$1@live?socket=$sock" --readonly --rw="$2" --bs="$3" \
    --iodepth="$4" --numjobs=1 --time_based --runtime="$5" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | jq -r '.jobs[0].read | "\(.bw_bytes / 1048576 | floor) \(.iops | floor)"'
}
median()
{
  sort -n | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'
}

echo "| ID@live read, $runtime s a run, median of $repeat | pc01: session in tabula-iscsid | pc02: session in nbdkit | pc03: no session (overlay file) | pc01 / pc02 |"
echo "|---|---:|---:|---:|---:|"
for w in "randread 4k 1" "randread 4k 16" "read 1m 4"; do
  set -- $w
  for c in pc01 pc02 pc03; do
    run $c "$1" "$2" "$3" 2 >/dev/null
    : >"$T/$c.v"
  done
  r=0
  while [ $r -lt "$repeat" ]; do
    for c in pc01 pc02 pc03; do run $c "$1" "$2" "$3" "$runtime" >>"$T/$c.v"; done
    r=$((r + 1))
  done
  unit=IOPS
  col=2
  [ "$2" = 4k ] || { unit=MiB/s; col=1; }
  v1=$(median <"$T/pc01.v" | cut -d' ' -f$col)
  v2=$(median <"$T/pc02.v" | cut -d' ' -f$col)
  v3=$(median <"$T/pc03.v" | cut -d' ' -f$col)
  echo "| $1 $2 QD$3 | $v1 $unit | $v2 $unit | $v3 $unit | $(awk "BEGIN { printf \"%.2f\", $v1 / $v2 }") |"
  bench_summary "ID@live $1 $2 QD$3, session in tabula-iscsid" "$v1 $unit" "session in nbdkit" "$v2 $unit" "-"
done
echo quit >&3
echo quit >&4
