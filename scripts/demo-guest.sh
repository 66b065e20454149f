#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/demo-guest.sh CONFIG BUILD: the guest part of `demo.sh --guest`.
#
# Boots a small Linux VM (QEMU in software emulation; scripts/mkguest.sh
# makes its kernel and initramfs) from the demo's rollback client pc01 over
# the appliance's unix socket, and shows, step by step:
#   1. the guest writing a file into its disk (its overlay, not the master);
#   2. that file in the read-only view while the guest still runs, and in
#      changes.txt;
#   3. the rollback: the session ends, `tabulactl rollback pc01` is asked for
#      (pc01's policy does it at every session start anyway);
#   4. the next boot: the file is gone, the disk is the master again, and the
#      old session is kept as a restore point in the view.
# Called by demo.sh once the daemon and the view are up; the demo image must
# have been made with --guest (it carries the guest's /tabula/run.sh).
set -euo pipefail

case ${1:-} in
-h | --help)
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 0
  ;;
esac
[ $# -eq 2 ] || {
  echo "usage: demo-guest.sh CONFIG BUILD (try --help; ./scripts/demo.sh --guest runs it)" >&2
  exit 2
}
cfg=${1:?usage: demo-guest.sh CONFIG BUILD}
build=${2:?usage: demo-guest.sh CONFIG BUILD}
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=$(cd "$(dirname "$cfg")" && pwd)
view=$demo/view
state=$(jq -r .state_dir "$cfg")
sock=$(jq -r '.listen.unix // empty' "$cfg")
[ -n "$sock" ] || sock=$state/nbd.sock
client=pc01
file=/home/user/hello-from-guest.txt
work=$demo/guest
ctl() { "$build/tabulactl/tabulactl" -c "$cfg" "$@"; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
  printf '$ %s\n' "$*"
  "$@" 2>&1 | sed 's/^/  /' || true
}
# show_ctl ARGS: the same for tabulactl.
show_ctl() {
  printf '$ tabulactl %s\n' "$*"
  ctl "$@" 2>&1 | sed 's/^/  /' || true
}
die() {
  echo "demo-guest.sh: $*" >&2
  exit 1
}

for cmd in qemu-system-x86_64 jq timeout; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/packages-guest.txt lists its package)"
done
mkdir -p "$work"
"$top/scripts/mkguest.sh" --boot "$work/boot" >/dev/null || die "cannot make the guest's kernel and initramfs"

have_view=no
mountpoint -q "$view" && have_view=yes
vol=
if [ $have_view = yes ]; then
  vol=$(ls "$view/clients/$client/fs" 2>/dev/null | head -n 1)
  [ -e "$view/images/demo/1/fs/$vol/tabula/run.sh" ] ||
    die "the demo image has no guest in it: run ./scripts/demo.sh --reset --guest"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/qemu.pid" ] && kill "$(cat "$work/qemu.pid")" 2>/dev/null
  rm -f "$work/qemu.pid" "$work/console.fifo"
}
trap cleanup EXIT

# wait_idle: the client is not in a session (the plugin ends one just after
# the last connection closes); "new" is a client that never ran.
wait_idle() {
  for _ in $(seq 300); do
    case $(ctl --json client $client 2>/dev/null | jq -r .state) in
    idle | new) return 0 ;;
    esac
    sleep 0.1
  done
  die "$client's session did not end"
}

# boot TAG ACTIONS: start the guest in the background, its console in
# $work/TAG.console; the guest's tabula-* lines are echoed as "guest| ...".
boot() {
  local tag=$1 actions=$2
  rm -f "$work/console.fifo" "$work/$tag.console"
  mkfifo "$work/console.fifo"
  : >"$work/$tag.console"
  cat <<EOF
$ qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -nic none \\
    -kernel $work/boot/vmlinuz -initrd $work/boot/initramfs.cpio.gz \\
    -append 'console=ttyS0 root=/dev/vda panic=-1 quiet tabula.do=$actions' \\
    -drive 'file=nbd+unix:///$client?socket=$sock,format=raw,if=virtio'
EOF
  timeout -k 5 300 qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -nic none \
    -pidfile "$work/qemu.pid" \
    -kernel "$work/boot/vmlinuz" -initrd "$work/boot/initramfs.cpio.gz" \
    -append "console=ttyS0 root=/dev/vda panic=-1 quiet tabula.do=$actions" \
    -drive "file=nbd+unix:///$client?socket=$sock,format=raw,if=virtio" \
    <"$work/console.fifo" >"$work/$tag.console" 2>&1 &
  qemu=$!
  sleep 2147483647 >"$work/console.fifo" &
  holder=$!
  pids+=("$qemu" "$holder")
  tail -n +1 -f "$work/$tag.console" --pid="$qemu" |
    sed -u -n -e 's/\r$//' -e 's/^tabula-booted \(.*\)/guest| booted in \1 s (guest uptime)/p' \
      -e 's/^tabula-cat \(.*\)/guest| cat \1/p' -e 's/^tabula-file [0-9a-f]* \(.*\)/guest| file \1/p' \
      -e 's/^tabula-paused/guest| (waiting for the host: it looks at the view now)/p' \
      -e 's/^tabula-\(done\|error\|poweroff\)\(.*\)/guest| \1\2/p' &
  follower=$!
  pids+=("$follower")
}

# wait_console TAG REGEX: until the guest's console matches, or it powered off.
wait_console() {
  for _ in $(seq 3000); do
    tr -d '\r' <"$work/$1.console" | grep -q "$2" && return 0
    kill -0 "$qemu" 2>/dev/null || break
    sleep 0.1
  done
  tr -d '\r' <"$work/$1.console" | grep -q "$2" || die "the guest did not print $2 (console: $work/$1.console)"
}

# finish TAG: let a paused guest go on and wait for it to power off.
finish() {
  # Opening the fifo blocks until QEMU reads it: bounded, in case it is gone.
  timeout 10 sh -c 'echo go >"$1"' sh "$work/console.fifo" 2>/dev/null || true
  kill "$holder" 2>/dev/null || true
  local st=0
  wait "$qemu" || st=$?
  wait "$follower" 2>/dev/null || true # tail follows QEMU's pid: its last lines
  [ $st -eq 0 ] || die "qemu exited with $st (console: $work/$1.console)"
  tr -d '\r' <"$work/$1.console" | grep -q '^tabula-done ok' || die "the guest failed (console: $work/$1.console)"
}

wait_idle
say "1. boot $client (policy rollback) and write a file in the guest"
boot first "write:$file:Hello_from_the_guest,cat:$file,list:/home/user,pause:300"
wait_console first '^tabula-paused'

say "2. the guest is still running: its file in the view (read-only, live)"
if [ $have_view = yes ]; then
  for _ in $(seq 50); do
    [ -f "$view/clients/$client/fs/$vol$file" ] && break
    sleep 0.1
  done
  show ls -l "$view/clients/$client/fs/$vol/home/user/"
  show cat "$view/clients/$client/fs/$vol$file"
  show cat "$view/clients/$client/changes.txt"
  show ls "$view/images/demo/1/fs/$vol/home/user/"
  echo "  (the master, images/demo/1, does not have it)"
else
  echo "  (the view is not mounted at $view; nothing to show)"
fi
show_ctl client $client

say "3. the guest powers off; the session ends; rollback"
finish first
wait_idle
show_ctl rollback $client
echo "  ($client's policy is rollback: every session starts clean; for a persist client"
echo "   this command is how an administrator discards its overlay.)"

say "4. boot $client again: the disk is the master again"
boot second "list:/home/user,cat:$file"
finish second
wait_idle
if tr -d '\r' <"$work/second.console" | grep -q "^tabula-file [0-9a-f]* $file\$"; then
  die "the file is still there after the rollback"
fi
echo "  the guest no longer sees $file."
if [ $have_view = yes ]; then
  show ls "$view/clients/$client/fs/$vol/home/user/"
  n=$(ctl --json sessions $client | jq -r '[.sessions[].session] | max // empty')
  if [ -n "$n" ]; then
    echo "  the session that wrote it is kept as a restore point:"
    for s in $(ctl --json sessions $client | jq -r '.sessions[].session' | sort -rn); do
      if [ -f "$view/clients/$client/sessions/$s/fs/$vol$file" ]; then
        show cat "$view/clients/$client/sessions/$s/fs/$vol$file"
        echo "  (tabulactl restore $client --session $s would bring it back)"
        break
      fi
    done
  fi
fi
echo
echo "guest demo done: the console logs are in $work/."
