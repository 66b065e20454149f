#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# bench-pxe-storm.sh: a PXE boot storm of real diskless PCs.  In a network
# namespace (tests/lab-functions.sh), N PCs (default 8) -- QEMU under TCG,
# PXE through iPXE, Debian's cloud kernel, root over NBD with the guest
# kernel's client -- are powered on at the same moment; before that, one PC
# boots alone in the same run, as the anchor.  Each PC's time is from power-on
# (QEMU started) to its root mounted ("tabula-booted") and to a marker
# written and synced ("tabula-paused"), as the host sees its serial console
# (polled every 0.2 s).  During the storm: the appliance's CPU (nbdkit +
# tabula-restored + dnsmasq, from /proc/PID/stat) and its largest resident
# memory, and the guests' CPU (the QEMU processes) as a share of the
# machine's cores: under TCG the guests' CPU is the bottleneck, not the
# appliance, which the figures say next to each other.
#
#   scripts/bench-pxe-storm.sh [BUILD_DIR] [N]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/benchlib.sh"
build=$(cd "${1:-.}" && pwd)
n=${2:-8}
abs_top_builddir=$build
abs_top_srcdir=$top
abs_builddir=$build/tests
export abs_top_builddir abs_top_srcdir abs_builddir
make -C "$build/tests" --quiet plugin-io plugin-import >/dev/null
make -C "$build/restored" --quiet tabula-nbd-persist >/dev/null
TL_TIMEOUT=${TL_TIMEOUT:-600}
. "$top/tests/functions.sh"
. "$top/tests/daemon-functions.sh"
tb_setup
. "$top/tests/lab-functions.sh"

clients=
i=0
while [ $i -le "$n" ]; do
  clients="$clients${clients:+,}$(printf '"pc%02d": { "image": "demo", "policy": "rollback", "keep_sessions": 0, "mac": "52:54:00:77:00:%02x", "address": "10.77.0.%d" }' $i $i $((10 + i)))"
  i=$((i + 1))
done
mkdir -p "$TB_TMP/root/etc"
echo "storm" >"$TB_TMP/root/etc/motd"
tl_lab "$TB_TMP/root" "{ $clients }" >/dev/null
TB_NCPU=$(nproc)
HZ=$(getconf CLK_TCK)

now() { date +%s.%N; }
# ticks PID...: utime + stime of the processes (and their threads), in ticks.
ticks()
{
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat"
  done | awk '{ s += $1 } END { print s + 0 }'
}
rss_kib()
{
  for p in "$@"; do
    awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null
  done | awk '{ s += $1 } END { print s + 0 }'
}
appliance_pids()
{
  echo "$(td_pid) $(tctl --json status | jq -r '.nbdkit.pid, .pxe.pid' | tr '\n' ' ')"
}
qemu_pids()
{
  for f in "$TB_TMP"/qemu-*.pid; do
    [ -s "$f" ] && echo $(cat "$f") # a pidfile may lack its newline
  done | tr '\n' ' '
}

# storm FIRST LAST: PCs pcFIRST..pcLAST on at once; per PC "booted done" seconds
# in $TB_TMP/times; appliance/guest CPU and RSS in $TB_TMP/load.
storm()
{
  ids=
  i=$1
  while [ $i -le "$2" ]; do ids="$ids $(printf 'pc%02d' $i)"; i=$((i + 1)); done
  app=$(appliance_pids)
  a0=$(ticks $app)
  t0=$(now)
  i=$1
  for id in $ids; do
    tl_on "$id" "$(printf '52:54:00:77:00:%02x' $i)"
    now >"$TB_TMP/$id.t0"
    i=$((i + 1))
  done
  qp=
  maxrss=0
  pending=$ids
  : >"$TB_TMP/times"
  k=0
  while [ -n "$pending" ]; do
    left=
    for id in $pending; do
      c=$(tl_console "$id")
      if [ ! -f "$TB_TMP/$id.tb" ] && echo "$c" | grep -q '^tabula-booted'; then now >"$TB_TMP/$id.tb"; fi
      if [ ! -f "$TB_TMP/$id.ta" ] && echo "$c" | grep -q '^tabula-ask'; then
        # (a kernel message may share the line of "tabula-booted")
        [ -f "$TB_TMP/$id.tb" ] || now >"$TB_TMP/$id.tb"
        # pause: the PC stays up (its QEMU's CPU is counted at the end)
        tl_send "$id" "write:/var/marker-$id:written,sync,pause:600"
        touch "$TB_TMP/$id.ta"
      fi
      echo "$c" | grep -q '^tabula-done failed' && tb_fail "$id: $(echo "$c" | grep '^tabula-done')"
      if echo "$c" | grep -q '^tabula-paused'; then # the marker is written and synced
        now >"$TB_TMP/$id.td"
        awk -v a="$(cat "$TB_TMP/$id.t0")" -v b="$(cat "$TB_TMP/$id.tb")" -v d="$(cat "$TB_TMP/$id.td")" \
          -v id="$id" 'BEGIN { printf "%s %.1f %.1f\n", id, b - a, d - a }' >>"$TB_TMP/times"
      else
        left="$left $id"
      fi
    done
    pending=$left
    # QEMU writes its pidfile once it runs: the set is complete after a few polls.
    [ "$(echo $qp | wc -w)" -ge "$(echo $ids | wc -w)" ] || qp=$(qemu_pids)
    r=$(rss_kib $app)
    [ "$r" -le "$maxrss" ] || maxrss=$r
    k=$((k + 1))
    [ $k -lt $((TL_TIMEOUT * 5)) ] || tb_fail "the storm did not end within $TL_TIMEOUT s"
    sleep 0.2
  done
  t1=$(now)
  a1=$(ticks $app)
  g=$(ticks $qp)
  awk -v a=$((a1 - a0)) -v g="$g" -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v cpus="$TB_NCPU" -v rss="$maxrss" \
    'BEGIN { w = t1 - t0; printf "%.1f %.1f %.0f %.1f\n", w, 100 * a / hz / w, rss, 100 * g / hz / w / cpus }' \
    >"$TB_TMP/load"
  for id in $ids; do tl_kill "$id"; done
}

storm 0 0
alone=$(awk '{ print $3 }' "$TB_TMP/times")
alone_mount=$(awk '{ print $2 }' "$TB_TMP/times")
storm 1 "$n"
sort -k3 -g "$TB_TMP/times" >"$TB_TMP/times.sorted"
slowest=$(tail -n 1 "$TB_TMP/times.sorted" | awk '{ print $3 }')
slowest_mount=$(sort -k2 -g "$TB_TMP/times" | tail -n 1 | awk '{ print $2 }')
read -r wall app_cpu app_rss guest_share <"$TB_TMP/load"

echo "PXE boot storm: $n PCs powered on at once (QEMU TCG, 256 MiB each, PXE via iPXE + TFTP, root over NBD), $(nproc) cores"
echo
printf '%-8s %22s %26s\n' pc 'power-on -> root (s)' 'power-on -> marker (s)'
while read -r id b d; do printf '%-8s %22s %26s\n' "$id" "$b" "$d"; done <"$TB_TMP/times.sorted"
echo
printf '%-52s %10s\n' "one PC alone: root mounted / marker written" "$alone_mount / $alone s"
printf '%-52s %10s\n' "slowest of $n: root mounted / marker written" "$slowest_mount / $slowest s"
printf '%-52s %10s\n' "slowest of $n / alone" "$(awk -v a="$slowest" -v b="$alone" 'BEGIN { printf "%.2f", a / b }')"
printf '%-52s %10s\n' "storm wall time" "$wall s"
printf '%-52s %10s\n' "appliance CPU (nbdkit+daemon+dnsmasq), % of one core" "$app_cpu %"
printf '%-52s %10s\n' "appliance resident memory, largest" "$app_rss KiB"
printf '%-52s %10s\n' "guests' CPU (QEMU TCG), % of all $(nproc) cores" "$guest_share %"
echo "(under TCG the guests' CPU is the bottleneck: $n emulated PCs share $(nproc) cores, the appliance uses $app_cpu % of one)"
bench_summary "PXE boot storm: slowest of $n PCs to marker (guests' CPU $guest_share % of $(nproc) cores, TCG-bound)" \
  "$slowest s" "1 PC alone" "$alone s" "<= 1.5 x alone"
bench_summary "PXE boot storm: appliance CPU / resident memory" "$app_cpu %" "-" "$app_rss KiB" "(figure)"
td_stop
