#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-iscsi.sh: the iSCSI frontend's speed (issue 19), side by side in one run:
#   - tabula-iscsid serving client pc01 (LUN 0 of iqn...:pc01),
#   - tgt (Debian's user-space target, tgtd) serving a copy of the same raw
#     master on another loopback port (LUN 1: tgt's LUN 0 is its controller),
#   - tabula's own NBD export of client pc02 (nbdkit + the plugin over TCP
#     loopback, fio's nbd engine),
# all on one 1 GiB master of random data, over 127.0.0.1.  Workloads: 4 KiB
# random read and random write at queue depth 16, 1 MiB sequential read and
# write at queue depth 4.  The iSCSI figures come from scripts/bench-iscsi-load.c
# (libiscsi, one session, QD commands in flight; built here), the NBD ones
# from fio (one job, the same queue depths).  Each figure is the median of
# REPEAT runs after a warm-up run; tabula's clients write into their overlays
# (first writes allocate overlay blocks), tgt into its copy of the file.
# "tgt null LUN" is tgt's null backing store (no I/O at all): tgt's own
# overhead with the same load tool and loopback.
#
#   scripts/bench-iscsi.sh [BUILD_DIR] [RUNTIME] [REPEAT]   (default: ., 10, 1)
#
# Goals: tabula ≥ 1.5 × tgt on 4 KiB random I/O, ≥ 0.8 × tabula's NBD path.
set -eu
. "$(dirname "$0")/benchlib.sh"
src=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-.}" && pwd)
runtime=${2:-10}
repeat=${3:-1}
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
ctl=$build/tabulactl/tabulactl
iscsid=$build/iscsi/tabula-iscsid
for f in "$plugin" "$ctl" "$iscsid"; do
  [ -f "$f" ] || { echo "bench-iscsi: $f is not built" >&2; exit 1; }
done
for p in fio tgtd tgtadm cc; do
  command -v $p >/dev/null || { echo "bench-iscsi: $p is missing (scripts/packages-bench.txt)" >&2; exit 1; }
done
[ -f /usr/include/iscsi/iscsi.h ] || { echo "bench-iscsi: libiscsi-dev is missing" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench-iscsi.XXXXXX")
cleanup()
{
  # tgtd leaves only through tgtadm (a SIGTERM with targets is ignored).
  [ -z "${CP:-}" ] || tgtadm -C "$CP" --op delete --mode system >/dev/null 2>&1 || true
  sleep 0.3
  if [ -f "$T/tgtd.pid" ]; then
    kill -9 "$(cat "$T/tgtd.pid")" 2>/dev/null || true
    wait "$(cat "$T/tgtd.pid")" 2>/dev/null || true # our child: no "Killed" line in the report
  fi
  for p in "$T"/*.pid; do [ ! -f "$p" ] || kill "$(cat "$p")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

free_port()
{
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cc -O2 -o "$T/load" "$src/bench-iscsi-load.c" -liscsi
M=1048576
head -c $((1024 * M)) /dev/urandom >"$T/master.img"
cp "$T/master.img" "$T/tgt.img"
truncate -s $((1024 * M)) "$T/null.img"
PI=$(free_port)
PN=$(free_port)
PT=$(free_port)
cat >"$T/tabula.json" <<EOF
{ "state_dir": "$T/state", "listen": { "iscsi": "127.0.0.1:$PI" },
  "images": { "demo": {} },
  "clients": { "pc01": { "image": "demo", "keep_sessions": 0 },
               "pc02": { "image": "demo", "keep_sessions": 0 } } }
EOF
"$ctl" -c "$T/tabula.json" image import demo "$T/master.img" >/dev/null
"$iscsid" --pidfile "$T/iscsid.pid" "$T/tabula.json" 2>"$T/iscsid.log" &
nbdkit --port "$PN" -i 127.0.0.1 -P "$T/nbdkit.pid" --threads 16 "$plugin" config="$T/tabula.json"
# tgtd: its own control socket (-C), so a tgtd of the machine is left alone.
CP=$((PT % 1000 + 100))
tgtd -f -C "$CP" --iscsi portal="127.0.0.1:$PT" >"$T/tgtd.log" 2>&1 &
echo $! >"$T/tgtd.pid"
i=0
until tgtadm -C "$CP" --lld iscsi --op show --mode target >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 50 ] || { echo "bench-iscsi: tgtd did not start: $(cat "$T/tgtd.log")" >&2; exit 1; }
  sleep 0.1
done
tgtadm -C "$CP" --lld iscsi --op new --mode target --tid 1 -T iqn.2024-01.lan.tabula.bench:tgt
tgtadm -C "$CP" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$T/tgt.img"
tgtadm -C "$CP" --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 -E null -b "$T/null.img"
tgtadm -C "$CP" --lld iscsi --op bind --mode target --tid 1 -I ALL
i=0
while [ ! -s "$T/iscsid.pid" ] || [ ! -s "$T/nbdkit.pid" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "bench-iscsi: servers did not start: $(cat "$T/iscsid.log")" >&2; exit 1; }
  sleep 0.1
done

U_TAB="iscsi://127.0.0.1:$PI/iqn.2026-12.lan.tabula:pc01/0"
U_TGT="iscsi://127.0.0.1:$PT/iqn.2024-01.lan.tabula.bench:tgt/1"
U_NULL="iscsi://127.0.0.1:$PT/iqn.2024-01.lan.tabula.bench:tgt/2"

# iscsi_run URL MODE BS QD SECONDS: IOPS
iscsi_run()
{
  "$T/load" "$1" "$2" "$3" "$4" "$5" | awk '{ print $1 }'
}
# nbd_run MODE BS QD SECONDS: IOPS
nbd_run()
{
  fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$PN/pc02" --rw="$1" --bs="$2" \
    --iodepth="$3" --numjobs=1 --time_based --runtime="$4" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | jq -r '.jobs[0] | (.read.iops + .write.iops) | floor'
}
median()
{
  sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# mode fio-mode bs qd
row()
{
  for k in tab tgt nbd null; do : >"$T/$k.v"; done
  iscsi_run "$U_TAB" "$1" "$3" "$4" 2 >/dev/null
  iscsi_run "$U_TGT" "$1" "$3" "$4" 2 >/dev/null
  nbd_run "$2" "$3" "$4" 2 >/dev/null
  r=0
  while [ $r -lt "$repeat" ]; do
    iscsi_run "$U_TAB" "$1" "$3" "$4" "$runtime" >>"$T/tab.v"
    iscsi_run "$U_TGT" "$1" "$3" "$4" "$runtime" >>"$T/tgt.v"
    nbd_run "$2" "$3" "$4" "$runtime" >>"$T/nbd.v"
    iscsi_run "$U_NULL" "$1" "$3" "$4" "$runtime" >>"$T/null.v"
    r=$((r + 1))
  done
  tab=$(median <"$T/tab.v")
  tgt=$(median <"$T/tgt.v")
  nbd=$(median <"$T/nbd.v")
  null=$(median <"$T/null.v")
  mib=$(awk -v i="$tab" -v b="$3" 'BEGIN { printf "%.0f", i * b / 1048576 }')
  printf '| %-26s | %9s | %9s | %9s | %9s | %5s | %5s | %6s |\n' "$5" "$tab" "$tgt" "$nbd" "$null" \
    "$(awk -v a="$tab" -v b="$tgt" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$tab" -v b="$nbd" 'BEGIN { printf "%.2f", a / b }')" "$mib"
  goal_tgt="-"
  case $1 in rand*) goal_tgt="≥ 1.5 × tgt" ;; esac
  bench_summary "iSCSI $5: tabula-iscsid vs tgt" "$tab IOPS" "tgt" "$tgt IOPS" "$goal_tgt"
  bench_summary "iSCSI $5: tabula-iscsid vs tabula NBD" "$tab IOPS" "tabula NBD (fio)" "$nbd IOPS" "≥ 0.8 × NBD"
}

echo "iSCSI over 127.0.0.1, 1 GiB master of random data, ${runtime} s per run, median of $repeat, $(nproc) cores"
echo "(IOPS; MiB/s is tabula-iscsid's)"
echo
echo "| workload | tabula-iscsid | tgt | tabula NBD | tgt null LUN | ×tgt | ×NBD | MiB/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
row randread randread 4096 16 "4 KiB random read QD16"
row randwrite randwrite 4096 16 "4 KiB random write QD16"
row seqread read 1048576 4 "1 MiB sequential read QD4"
row seqwrite write 1048576 4 "1 MiB sequential write QD4"
