#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench.sh: the one entry point for tabula's figures (README.md quotes them).
#
#   scripts/bench.sh [--build DIR] [--runtime SECONDS] [--repeat N] [--quick]
#                    [--only fio,rollback,idle,sections] [--clients N]
#
# Sections, printed as one report:
#   fio       fio's nbd engine, iodepth 16, one job, over a unix socket, on a
#             1 GiB master of random data: 4 KiB and 1 MiB random read and
#             write, side by side in one run with nbdkit's file plugin (the
#             ceiling: no overlay) on a copy of the same raw file, nbdkit's
#             cow filter on it, qemu-nbd serving a qcow2 overlay backed by it,
#             and a second tabula client with ten protected regions (the
#             watchdog's data-path guards).  Each figure is the median of
#             --repeat runs (servers interleaved run by run), after a warm-up
#             run of the same workload.
#   rollback  a session that wrote 2 GiB ends; the time of the next connection
#             (handshake + session start, which rotates the overlay away) is
#             compared with the same on a clean client.  Also with
#             keep_sessions 0, where the 2 GiB retained session is deleted.
#   idle      N (200) clients, each its own export, connected to one nbdkit on
#             a 64 GiB sparse master: nbdkit's VmRSS before and after, per client.
#   sections  every scripts/bench-*.sh (boot storm, PXE boot storm of real
#             diskless PCs, view, pull, merge, watchdog scan), called with the
#             build directory, its output appended.
#
# The report ends with one summary table: every figure, its anchor from the
# same run, the ratio and the goal the issues set.
#
# The build used is a plain optimised one (no sanitizers): --build DIR, else
# $TB_BENCH_BUILD, else build-bench/ at the top of the tree (built if missing).
# Work files go to $TMPDIR (default /var/tmp): about 4 GiB of disk.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
. "$(dirname "$0")/benchlib.sh"

runtime=12
repeat=3
ramp=2
clients=200
only=fio,rollback,idle,sections
build=${TB_BENCH_BUILD:-$TB_TOP/build-bench}

usage()
{
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case $1 in
  --build) build=$2; shift 2 ;;
  --runtime) runtime=$2; shift 2 ;;
  --repeat) repeat=$2; shift 2 ;;
  --clients) clients=$2; shift 2 ;;
  --only) only=$2; shift 2 ;;
  --quick) runtime=5; repeat=1; ramp=1; shift ;;
  -h | --help) usage; exit 0 ;;
  *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
want()
{
  case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

progress()
{
  if [ -t 2 ]; then printf '\r\033[K%s' "$*" >&2; fi
}
progress_done()
{
  if [ -t 2 ]; then printf '\r\033[K' >&2; fi
}

# ---- build -----------------------------------------------------------------------

tb_install_packages "$TB_TOP/scripts/packages.txt" "$TB_TOP/scripts/packages-bench.txt"
plugin=$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so
if [ ! -f "$plugin" ]; then
  progress "building tabula in $build (no sanitizers)..."
  tb_build "$build"
fi
if ldd "$plugin" | grep -q libasan; then
  echo "bench.sh: $build is a sanitizer build; give a plain one with --build" >&2
  exit 2
fi
make -C "$build/tests" --quiet plugin-io plugin-import >/dev/null
io=$build/tests/plugin-io
import=$build/tests/plugin-import

T=$(mktemp -d "${TMPDIR:-/var/tmp}/tabula-bench.XXXXXX")
pids=()
cleanup()
{
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$T"/*.pid; do if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export TB_BENCH_SUMMARY=$T/summary.tsv
: >"$TB_BENCH_SUMMARY"

# serve NAME NBDKIT-ARGS...: nbdkit on $T/NAME.sock, in the background.
serve()
{
  local name=$1
  shift
  rm -f "$T/$name.sock" "$T/$name.pid"
  nbdkit -f --unix "$T/$name.sock" -P "$T/$name.pid" "$@" >>"$T/$name.log" 2>&1 &
  pids+=($!)
  wait_serving "$name" nbdkit
}

# wait_serving NAME WHAT: until NAME's socket and pidfile exist.
wait_serving()
{
  local i=0
  until [ -S "$T/$1.sock" ] && [ -s "$T/$1.pid" ]; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
      echo "bench.sh: $2 $1 did not start: $(cat "$T/$1.log")" >&2
      exit 1
    fi
    sleep 0.1
  done
}
# serve_qcow2 NAME BACKING: qemu-nbd on $T/NAME.sock serving a fresh qcow2
# overlay of BACKING (the usual way to give a VM a copy-on-write disk).
serve_qcow2()
{
  local name=$1
  rm -f "$T/$name.sock" "$T/$name.pid" "$T/$name.qcow2"
  qemu-img create -q -f qcow2 -b "$2" -F raw "$T/$name.qcow2"
  qemu-nbd --socket="$T/$name.sock" --pid-file="$T/$name.pid" --format=qcow2 --shared=16 \
    --persistent --aio=threads "$T/$name.qcow2" >>"$T/$name.log" 2>&1 &
  pids+=($!)
  wait_serving "$name" qemu-nbd
}
unserve()
{
  local pid
  pid=$(cat "$T/$1.pid")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
now_ns()
{
  date +%s%N
}

# ---- figures ------------------------------------------------------------------------

report=()
line()
{
  report+=("$*")
}

ratio()
{
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
}

median()
{
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---- fio: tabula vs file vs cow -------------------------------------------------------

fio_run()
{ # fio_run SOCK EXPORT RW BS RUNTIME OUT: on the first 1000 MiB (the guarded
  # client's protected regions lie beyond, so its writes are checked, not refused)
  fio --name=bench --ioengine=nbd --uri="nbd+unix:///$2?socket=$1" --rw="$3" --bs="$4" --size=1000m \
    --iodepth=16 --numjobs=1 --time_based --runtime="$5" --ramp_time="$ramp" \
    --randrepeat=0 --output-format=json --output="$6" >/dev/null 2>"$6.err" || {
    echo "bench.sh: fio failed: $(cat "$6.err")" >&2
    exit 1
  }
}

bench_fio()
{
  local M=1048576
  progress "fio: making a 1 GiB master of random data..."
  head -c $((1024 * M)) /dev/urandom >"$T/master.raw"
  cp "$T/master.raw" "$T/file-copy.raw" # the file plugin writes in place: not on the master
  "$import" "$T/state" bench "$T/master.raw" >/dev/null
  # Ten protected regions in the last 8 MiB of the disk: LBA 2080768 and up.
  local regions="" k first
  for k in $(seq 0 9); do
    first=$((2080768 + k * 1600))
    regions="$regions${regions:+, }{\"name\": \"r$k\", \"region\": \"lba:$first-$((first + 799))\", \"action\": \"deny\"}"
  done
  cat >"$T/fio.json" <<EOF
{ "state_dir": "$T/state", "images": { "bench": {} },
  "clients": { "fio": { "image": "bench", "policy": "persist" },
               "guarded": { "image": "bench", "policy": "persist",
                            "watchdog": { "protect": [ $regions ] } } } }
EOF
  serve file file "$T/file-copy.raw"
  serve cow --filter=cow file "$T/master.raw"
  serve_qcow2 qcow2 "$T/master.raw"
  serve tabula "$plugin" config="$T/fio.json"
  ln -s tabula.sock "$T/guarded.sock"
  local servers="file cow qcow2 tabula guarded"
  export_of()
  {
    case $1 in tabula) echo fio ;; guarded) echo guarded ;; esac
  }

  local w rw bs s r
  for w in "randread 4k" "randwrite 4k" "randread 1m" "randwrite 1m"; do
    set -- $w
    rw=$1 bs=$2
    # Every workload starts from a dropped page cache.  The kernel caches a
    # file in folios as large as the writes that filled it, so an overlay that
    # the 4 KiB workload just wrote would be read back 4 KiB a folio while the
    # file plugin's copy (made by cp) sits in large folios: 15-25% apart on
    # 1 MiB requests, for a reason that has nothing to do with the servers.
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    for s in $servers; do # warm-up: caches, and the overlays' first writes
      progress "fio: $rw $bs warm-up on $s..."
      fio_run "$T/$s.sock" "$(export_of $s)" "$rw" "$bs" $((runtime / 2 + 1)) "$T/warm.json"
    done
    for r in $(seq 1 "$repeat"); do
      for s in $servers; do
        progress "fio: $rw $bs on $s, run $r of $repeat..."
        fio_run "$T/$s.sock" "$(export_of $s)" "$rw" "$bs" "$runtime" "$T/fio-$s-$rw-$bs-$r.json"
      done
    done
  done
  progress_done

  line "## fio, nbd engine, iodepth 16, 1 job, unix socket, 1 GiB master (median of $repeat x ${runtime}s)"
  line ""
  line "$(printf '%-14s %10s %10s %10s %10s %10s %8s %8s %8s' workload file cow qcow2 tabula \
    'guarded' 'vs file' 'vs cow' 'guards')"
  for w in "randread 4k" "randwrite 4k" "randread 1m" "randwrite 1m"; do
    set -- $w
    rw=$1 bs=$2
    local dir=read
    [ "$rw" = randwrite ] && dir=write
    local metric=iops unit=IOPS
    [ "$bs" = 1m ] && metric=bw unit=MB/s
    declare -A val=()
    for s in $servers; do
      val[$s]=$(for r in $(seq 1 "$repeat"); do
        jq -r ".jobs[0].$dir.$metric" "$T/fio-$s-$rw-$bs-$r.json"
      done | median)
      [ $metric = bw ] && val[$s]=$(awk -v k="${val[$s]}" 'BEGIN { printf "%.0f", k * 1024 / 1e6 }')
      [ $metric = iops ] && val[$s]=$(awk -v v="${val[$s]}" 'BEGIN { printf "%.0f", v }')
    done
    line "$(printf '%-14s %10s %10s %10s %10s %10s %8s %8s %8s' "$bs $rw" "${val[file]}" \
      "${val[cow]}" "${val[qcow2]}" "${val[tabula]}" "${val[guarded]}" \
      "$(ratio "${val[tabula]}" "${val[file]}")" "$(ratio "${val[tabula]}" "${val[cow]}")" \
      "$(ratio "${val[guarded]}" "${val[tabula]}")") $unit"
    local goal=">= 0.85 of file"
    [ "$bs" = 1m ] && goal=">= 0.9 of file"
    bench_summary "fio $bs $rw" "${val[tabula]} $unit" "nbdkit file" "${val[file]} $unit" "$goal"
    if [ "$rw$bs" = randwrite4k ]; then
      bench_summary "fio $bs $rw" "${val[tabula]} $unit" "nbdkit cow filter" "${val[cow]} $unit" \
        ">= 2.5 x cow"
      bench_summary "fio $bs $rw, 10 protected regions" "${val[guarded]} $unit" "tabula, none" \
        "${val[tabula]} $unit" ">= 0.97 (guards cost <= 3%)"
    fi
    bench_summary "fio $bs $rw" "${val[tabula]} $unit" "qemu-nbd + qcow2 overlay" \
      "${val[qcow2]} $unit" "(anchor)"
  done
  line ""
  line "(file: nbdkit file plugin on a copy of the master; cow: nbdkit --filter=cow file MASTER;"
  line " qcow2: qemu-nbd --aio=threads on a qcow2 overlay backed by the master;"
  line " tabula: a persist client, so like cow and qcow2 its overlay carries over from the warm-up;"
  line " guarded: another tabula client with ten deny regions; guards = guarded / tabula)"
  unserve file
  unserve cow
  unserve qcow2
  unserve tabula
  rm -f "$T/file-copy.raw"
}

# ---- rollback of a session with 2 GiB dirty ------------------------------------------------

connect_ms()
{ # connect_ms SOCK EXPORT: wall time of connect + the first write (the session turn, which
  # happens at a boot's first write) + close
  local t0 t1
  t0=$(now_ns)
  "$io" -s "$1" -e "$2" write:0:4096:0 >/dev/null
  t1=$(now_ns)
  awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }'
}

wait_idle()
{ # wait_idle STATE ID
  local i=0
  until { [ ! -f "$1/clients/$2/session.json" ] ||
    [ "$(jq -r .state "$1/clients/$2/session.json" 2>/dev/null)" = idle ]; } &&
    flock -n -s "$1/clients/$2/lock" true; do
    i=$((i + 1))
    [ $i -lt 600 ] || { echo "bench.sh: session of $2 did not end" >&2; exit 1; }
    sleep 0.05
  done
}

bench_rollback()
{
  local G=1073741824
  progress "rollback: a 4 GiB sparse master..."
  truncate -s $((4 * G)) "$T/sparse4.raw"
  "$import" "$T/state" sparse4 "$T/sparse4.raw" >/dev/null
  cat >"$T/rb.json" <<EOF
{ "state_dir": "$T/state", "reconnect_grace": "0s", "images": { "sparse4": {} },
  "clients": { "rb2": { "image": "sparse4", "policy": "rollback", "keep_sessions": 2 },
               "rb0": { "image": "sparse4", "policy": "rollback", "keep_sessions": 0 } } }
EOF
  serve rb "$plugin" config="$T/rb.json"
  local id clean=() dirty_rb2=() dirty_rb0=() i ms
  for id in rb2 rb0; do
    for i in 1 2 3; do # clean turns: nothing to rotate
      clean+=("$(connect_ms "$T/rb.sock" $id)")
      wait_idle "$T/state" $id
    done
  done
  for id in rb2 rb0; do
    for i in 1 2 3; do
      progress "rollback: $id, writing 2 GiB, turn $i of 3..."
      fio --name=fill --ioengine=nbd --uri="nbd+unix:///$id?socket=$T/rb.sock" --rw=write \
        --bs=1m --iodepth=16 --size=$((2 * G)) --output="$T/fill.out" >/dev/null 2>&1
      wait_idle "$T/state" $id
      local dirty_bytes
      dirty_bytes=$(jq -r .dirty_bytes "$T/state/clients/$id/session.json")
      [ "$dirty_bytes" -ge $((2 * G)) ] || {
        echo "bench.sh: $id has $dirty_bytes dirty bytes, expected 2 GiB" >&2
        exit 1
      }
      sync
      ms=$(connect_ms "$T/rb.sock" $id)
      if [ $id = rb2 ]; then dirty_rb2+=("$ms"); else dirty_rb0+=("$ms"); fi
      wait_idle "$T/state" $id
    done
  done
  progress_done
  unserve rb
  local c d2 d0
  c=$(printf '%s\n' "${clean[@]}" | median)
  d2=$(printf '%s\n' "${dirty_rb2[@]}" | median)
  d0=$(printf '%s\n' "${dirty_rb0[@]}" | median)
  line "## session rollback (connect + first 4 KiB write, which makes the turn, + close; median of 3)"
  line ""
  line "$(printf '%-52s %10s' 'clean client (nothing to rotate)' "$c ms")"
  line "$(printf '%-52s %10s' 'after a 2 GiB session, keep_sessions 2 (rotate)' "$d2 ms")"
  line "$(printf '%-52s %10s' 'after a 2 GiB session, keep_sessions 0 (rotate+delete)' "$d0 ms")"
  line "$(printf '%-52s %10s' 'rollback cost (rotate) = difference' \
    "$(awk -v a="$d2" -v b="$c" 'BEGIN { printf "%.1f", a - b }') ms")"
  bench_summary "session start after 2 GiB dirty (rollback)" "$d2 ms" "clean session start" "$c ms" \
    "rollback < 50 ms"
  rm -rf "$T/state/clients/rb0" "$T/state/clients/rb2"
}

# ---- idle clients: resident memory per client -----------------------------------------------

rss_kib()
{
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

bench_idle()
{
  local G=1073741824 n=$clients i
  progress "idle: a 64 GiB sparse master..."
  truncate -s $((64 * G)) "$T/sparse64.raw"
  "$import" "$T/state" big "$T/sparse64.raw" >/dev/null
  {
    printf '{ "state_dir": "%s", "images": { "big": {} }, "clients": {\n' "$T/state"
    for i in $(seq 1 "$n"); do
      printf '  "c%03d": { "image": "big", "policy": "rollback" }%s\n' "$i" "$([ "$i" -lt "$n" ] && echo ,)"
    done
    printf '} }\n'
  } >"$T/idle.json"
  serve idle "$plugin" config="$T/idle.json"
  local pid
  pid=$(cat "$T/idle.pid")
  "$io" -s "$T/idle.sock" -e c001 read:0:4096:0 >/dev/null # warm: everything loaded once
  wait_idle "$T/state" c001
  sleep 0.5
  local before after threads
  before=$(rss_kib "$pid")
  local args=()
  for i in $(seq 1 "$n"); do args+=(-e "$(printf 'c%03d' "$i")"); done
  progress "idle: connecting $n clients..."
  mkfifo "$T/idle.fifo"
  "$io" -s "$T/idle.sock" "${args[@]}" hold <"$T/idle.fifo" >"$T/idle.out" 2>&1 &
  local iopid=$!
  pids+=($iopid)
  exec 7>"$T/idle.fifo"
  i=0
  until grep -q holding "$T/idle.out"; do
    i=$((i + 1))
    [ $i -lt 1200 ] && kill -0 $iopid 2>/dev/null || {
      echo "bench.sh: $n clients did not connect: $(cat "$T/idle.out")" >&2
      exit 1
    }
    sleep 0.1
  done
  sleep 1
  after=$(rss_kib "$pid")
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
  exec 7>&-
  wait $iopid || true
  progress_done
  unserve idle
  line "## $n idle clients on one nbdkit, 64 GiB sparse master"
  line ""
  line "$(printf '%-40s %12s' 'nbdkit VmRSS before' "$before KiB")"
  line "$(printf '%-40s %12s' "with $n clients connected" "$after KiB")"
  line "$(printf '%-40s %12s' 'per client' "$(((after - before) / n)) KiB")"
  line "$(printf '%-40s %12s' 'nbdkit threads with them' "$threads")"
  bench_summary "idle clients: resident memory per client ($n, 64 GiB)" \
    "$(((after - before) / n)) KiB" "-" "-" "< 200 KiB"
}

# ---- run ---------------------------------------------------------------------------------

echo "tabula bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), nbdkit $(nbdkit --version | awk '{ print $2 }'), fio $(fio --version), build $build"
echo
want fio && bench_fio
want rollback && bench_rollback
want idle && bench_idle
for l in "${report[@]}"; do echo "$l"; done
if want sections; then
  for s in "$TB_TOP"/scripts/bench-*.sh; do
    [ -f "$s" ] || continue
    echo
    echo "## $(basename "$s")"
    echo
    st=0
    bash "$s" "$build" || st=$?
    [ $st -eq 0 ] || echo "($(basename "$s") failed with status $st)"
  done
fi
echo
echo "## summary"
echo
bench_summary_print "$TB_BENCH_SUMMARY"
