#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# scripts/lab.sh N [--build DIR]: a virtual lab of N diskless PCs.
#
# In a network namespace of its own: the appliance (tabula-restored with its
# nbdkit on 10.77.0.1:10809 and its dnsmasq) and N PCs, QEMU under TCG with a
# virtio NIC on a bridge, MACs 52:54:00:77:00:01..N.  Each PC PXE-boots
# through its iPXE ROM, loads Debian's cloud kernel and the initramfs of
# scripts/mkguest.sh --pxe, and mounts its root over NBD with the guest
# kernel's client.  Shown: each PC's boot (DHCP, the NBD export with its boot
# id), the file each one writes, seen from the host in the read-only view
# (tabula-fuse) while the PCs run, then the reboot: each PC's next boot is
# a new session and the file is gone (policy rollback), the old session kept
# as a restore point.  Everything is torn down at the end (or on Ctrl-C).
#
# DIR is a build tree (default: build-demo, which ./scripts/demo.sh makes;
# ./scripts/demo.sh --lab N builds it and runs this).  Needs root and the
# packages of scripts/packages.txt and scripts/packages-guest.txt.  A PC
# takes 20-40 s to boot under TCG, longer when N PCs share 2 cores.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
n=
build=$top/build-demo
while [ $# -gt 0 ]; do
  case $1 in
  --build) build=$(cd "$2" && pwd); shift 2 ;;
  -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  *[!0-9]* | '') echo "lab.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  *) n=$1; shift ;;
  esac
done
[ -n "$n" ] && [ "$n" -ge 1 ] && [ "$n" -le 50 ] || { echo "usage: lab.sh N [--build DIR] (1 <= N <= 50)" >&2; exit 2; }
[ -x "$build/restored/tabula-restored" ] ||
  { echo "lab.sh: $build is not built (./scripts/demo.sh --lab $n builds it)" >&2; exit 1; }
make -C "$build/tests" --quiet plugin-io plugin-import >/dev/null
make -C "$build/restored" --quiet tabula-nbd-persist >/dev/null

abs_top_builddir=$build
abs_top_srcdir=$top
abs_builddir=$build/tests
export abs_top_builddir abs_top_srcdir abs_builddir
. "$top/tests/functions.sh"
. "$top/tests/daemon-functions.sh"
tb_setup
. "$top/tests/lab-functions.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ids=
clients=
i=1
while [ $i -le "$n" ]; do
  id=$(printf 'pc%02d' $i)
  ids="$ids $id"
  clients="$clients${clients:+,}\"$id\": { \"image\": \"demo\", \"policy\": \"rollback\", \"keep_sessions\": 2,
    \"mac\": \"$(printf '52:54:00:77:00:%02x' $i)\", \"address\": \"10.77.0.$((10 + i))\" }"
  i=$((i + 1))
done
mkdir -p "$TB_TMP/root/etc" "$TB_TMP/root/home/student"
echo "Welcome to a tabula lab PC. Every reboot starts clean." >"$TB_TMP/root/etc/motd"
say "the appliance: tabula-restored, nbdkit on 10.77.0.1:10809, dnsmasq (DHCP, TFTP, iPXE) in namespace $TL_NS"
tl_lab "$TB_TMP/root" "{ $clients }"
tctl clients | sed 's/^/  /'

# show_boot ID: the PC's boot, from its console.
show_boot()
{
  tl_console "$1" | sed -n -e 's/^.*\(tabula: booting .*\)$/  \1/p' -e "s/^.*tabula-net [^ ]* \([^ ]*\) .*/  DHCP: address \1/p" \
    -e 's/^tabula-nbd \(.*\)/  NBD: nbd-client \1 (kernel client, export name with the boot id)/p' \
    -e 's/^tabula-booted \(.*\)/  root mounted over NBD, kernel uptime \1 s/p' | tail -n 4
}

say "$n PCs power on at once (QEMU, TCG; PXE through iPXE)"
i=1
for id in $ids; do
  tl_on "$id" "$(printf '52:54:00:77:00:%02x' $i)"
  i=$((i + 1))
done
for id in $ids; do
  tl_ask "$id" "cat:/etc/motd,write:/home/student/work-of-$id.txt:homework-of-$id,list:/home/student,pause:600,reboot"
done
for id in $ids; do
  tl_wait "$id" '^tabula-paused' "$id must write its file"
  echo "$id (up $(($(date +%s) - $(cat "$TB_TMP/$id.on"))) s after power-on):"
  show_boot "$id"
  tl_console "$id" | sed -n 's/^tabula-file [0-9a-f]* \(.*\)/  the guest wrote \1/p' | tail -n 1
done

say "the read-only view (tabula-fuse) while the PCs run"
view=$TB_TMP/view
mkdir -p "$view"
"$build/fuse/tabula-fuse" -c "$TD_CONF" "$view" >"$TB_TMP/fuse.log" 2>&1 &
echo $! >"$TB_TMP/fuse.bgpid"
TB_MOUNTS=$view
for _ in $(seq 100); do mountpoint -q "$view" && break; sleep 0.1; done
for id in $ids; do
  vol=$(ls "$view/clients/$id/fs" 2>/dev/null | head -n 1)
  for _ in $(seq 50); do [ -f "$view/clients/$id/fs/$vol/home/student/work-of-$id.txt" ] && break; sleep 0.2; done
  echo "\$ ls $view/clients/$id/fs/$vol/home/student"
  ls "$view/clients/$id/fs/$vol/home/student" 2>&1 | sed 's/^/  /'
  echo "\$ cat $view/clients/$id/changes.txt"
  sed 's/^/  /' "$view/clients/$id/changes.txt" 2>&1 | head -n 5
done

say "the PCs reboot: every new boot is a new session, rolled back to the master"
for id in $ids; do tl_resume "$id"; done
for id in $ids; do tl_done "$id"; done
for id in $ids; do tl_ask "$id" "list:/home/student,cat:/etc/motd"; done
for id in $ids; do
  tl_done "$id"
  echo "$id, second boot:"
  show_boot "$id"
  if [ -s "$TB_TMP/$id.files" ]; then
    echo "  /home/student still has: $(cat "$TB_TMP/$id.files")"
  else
    echo "  /home/student is empty again: the master"
  fi
  echo "  sessions: $(tl_sessions "$id"), rollbacks: $(tl_rollbacks "$id"); retained sessions (restore points): $(tctl --json sessions "$id" | jq -c '[.sessions[].session]')"
done
fusermount3 -u "$view" 2>/dev/null || umount "$view"
TB_MOUNTS=
for id in $ids; do tl_kill "$id"; done
td_stop
say "lab done; everything is torn down"
