#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/demo.sh: the appliance on an embedded default, for a first look.
#
# Installs what is missing, builds, creates a demo master image (ext4 with a few
# files), imports it, starts tabula-restored (which runs nbdkit with the tabula
# plugin) with its state under ./demo, mounts the read-only view, and prints how
# to use it.  Ctrl-C stops everything and unmounts.
#
#   ./scripts/demo.sh            run the appliance
#   ./scripts/demo.sh --guest    also boot a small Linux VM from it (QEMU, TCG):
#                                the guest writes a file, the view shows it, a
#                                rollback, and the next boot is clean again
#   ./scripts/demo.sh --lab N    a virtual lab instead: N diskless PCs PXE-boot
#                                from an appliance in a network namespace
#                                (scripts/lab.sh; root, QEMU under TCG)
#   ./scripts/demo.sh --reset    forget the demo state first
#   ./scripts/demo.sh --port N   NBD over TCP on 127.0.0.1:N (default 10809)
#
# A checkout that was also configured in the source tree (./configure run
# there, as in README's Deployment) cannot build in build-demo: the demo then
# builds and runs in the source tree itself.
set -euo pipefail
. "$(dirname "$0")/setup.sh"

guest=no
lab=
prev=
port=
for arg in "$@"; do
  if [ "$prev" = --lab ]; then
    lab=$arg
    prev=
    continue
  fi
  if [ "$prev" = --port ]; then
    port=$arg
    prev=
    continue
  fi
  case $arg in
  --guest) guest=yes ;;
  --lab) prev=--lab ;;
  --port) prev=--port ;;
  --port=*) port=${arg#--port=} ;;
  --reset) rm -rf "$TB_TOP/demo" ;;
  -h | --help)
    sed -n '2,/^set /{/^set /!p}' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "demo.sh: unknown option $arg (try --help)" >&2
    exit 2
    ;;
  esac
done

if [ "$prev" = --lab ] || { [ -n "$lab" ] && ! [ "$lab" -ge 1 ] 2>/dev/null; }; then
  echo "demo.sh: --lab needs a number of PCs (try --help)" >&2
  exit 2
fi
if [ "$prev" = --port ] || { [ -n "$port" ] && ! { [ "$port" -ge 1 ] && [ "$port" -le 65535 ]; } 2>/dev/null; }; then
  echo "demo.sh: --port needs a TCP port from 1 to 65535 (try --help)" >&2
  exit 2
fi
tb_install_packages
tb_install_guest_packages
build=$TB_TOP/build-demo
if [ -f "$TB_TOP/config.status" ]; then
  # configured in-tree: a second build directory is refused by configure
  # ("source directory already configured"), so the in-tree build serves.
  build=$TB_TOP
  echo "this checkout is configured in its source tree: building there (make distclean in"
  echo "$TB_TOP lets the demo build in build-demo instead) ..."
  make -C "$build" -j2 --quiet
else
  echo "building in $build ..."
  tb_build "$build" --enable-werror
fi
[ -z "$lab" ] || exec "$TB_TOP/scripts/lab.sh" "$lab" --build "$build"

demo=$TB_TOP/demo
state=$demo/state
cfg=$demo/tabula.json
view=$demo/view
mkdir -p "$demo" "$view"
ctl() { "$build/tabulactl/tabulactl" -c "$cfg" "$@"; }

if [ ! -f "$cfg" ]; then
  sed -e "s|@DEMO@|$demo|g" -e "s|@PLUGIN@|$build/nbdkit-plugin/.libs/nbdkit-tabula-plugin.so|g" \
    -e "s|@PORT@|${port:-10809}|g" "$TB_TOP/conf/demo.json.in" >"$cfg"
elif [ -n "$port" ]; then # the demo's configuration from an earlier run, on another port
  sed -i -e "s|\"tcp\": \"127\.0\.0\.1:[0-9]*\"|\"tcp\": \"127.0.0.1:$port\"|" "$cfg"
fi
port=$(sed -n 's|.*"tcp": "127\.0\.0\.1:\([0-9]*\)".*|\1|p' "$cfg")
port=${port:-10809}

if [ ! -f "$state/images/demo/1.json" ]; then
  echo "creating the demo master image (ext4, 512 MiB, sparse) ..."
  files=$demo/master-files
  rm -rf "$files" && mkdir -p "$files/etc" "$files/home/user" "$files/sbin"
  echo "Welcome to a tabula client. Every reboot starts clean." >"$files/etc/motd"
  echo "demo-master" >"$files/etc/hostname"
  printf 'This disk is served by tabula.\nWrite here: it lands in your overlay, not the master.\n' \
    >"$files/home/user/README.txt"
  if [ -x "$TB_TOP/scripts/mkguest.sh" ] && [ "$guest" = yes ]; then
    # The guest's boot script lives on the root filesystem (see scripts/mkguest.sh).
    "$TB_TOP/scripts/mkguest.sh" --rootfs "$files" >/dev/null
  fi
  truncate -s 512M "$demo/master.img"
  mke2fs -q -F -t ext4 -L tabula-demo -d "$files" "$demo/master.img"
  ctl image import demo "$demo/master.img" --note "demo master"
fi

pids=()
cleanup()
{
  set +e
  echo
  echo "stopping ..."
  mountpoint -q "$view" && fusermount3 -u "$view"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  echo "stopped; the state stays in $state (./scripts/demo.sh --reset to forget it)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$build/restored/tabula-restored" -c "$cfg" >"$demo/restored.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ -S "$demo/nbd.sock" ] && [ -S "$demo/control.sock" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$demo/restored.log" >&2; exit 1; }
  sleep 0.1
done

if [ -x "$build/fuse/tabula-fuse" ]; then
  "$build/fuse/tabula-fuse" -c "$cfg" "$view" >"$demo/fuse.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do mountpoint -q "$view" && break; sleep 0.1; done
fi

cat <<GUIDE

tabula demo is running.   state: $state   log: $demo/restored.log

  NBD on unix socket $demo/nbd.sock and on 127.0.0.1:$port
  clients: pc01 (rollback: every session starts clean), vm01 (persist)

Look at a client's disk over NBD:
  nbdinfo 'nbd+unix:///pc01?socket=$demo/nbd.sock'
  qemu-img info 'nbd+unix:///vm01?socket=$demo/nbd.sock'
  nbdcopy 'nbd+unix:///demo@1?socket=$demo/nbd.sock' /tmp/master-copy.img
  nbdinfo --map 'nbd+unix:///vm01@overlay?socket=$demo/nbd.sock'   (what vm01 changed)

Boot a VM from it (QEMU, no KVM needed):
  qemu-system-x86_64 -accel tcg -m 512 -nographic \\
    -drive file=nbd:127.0.0.1:$port:exportname=vm01,format=raw,if=virtio ...
  ./scripts/demo.sh --guest does it with a small Linux guest.
A PC boots it over PXE with a Linux kernel whose initramfs has nbdroot
(root=/dev/nbd0 nbdroot=APPLIANCE:$port/pc01); see README.md, "Deployment".

The read-only view (tabula-fuse):
  ls $view/clients/vm01/fs/        cat $view/clients/vm01/changes.txt

Manage it:
  $build/tabulactl/tabulactl -c $cfg status
  $build/tabulactl/tabulactl -c $cfg clients
  $build/tabulactl/tabulactl -c $cfg rollback vm01
  $build/tabulactl/tabulactl -c $cfg merge vm01 --into demo --note "my change"
  $build/tabulactl/tabulactl -c $cfg events --follow

Ctrl-C stops everything.
GUIDE

if [ "$guest" = yes ]; then
  if [ -x "$TB_TOP/scripts/demo-guest.sh" ]; then
    "$TB_TOP/scripts/demo-guest.sh" "$cfg" "$build" || echo "the guest demo failed (see above)"
  else
    echo "demo.sh --guest: scripts/demo-guest.sh is missing from this checkout" >&2
  fi
fi
wait "${pids[0]}"
