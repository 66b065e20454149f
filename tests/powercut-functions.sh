# SPDX-License-Identifier: BSD-3-Clause
# tests/powercut-functions.sh: power cuts under tabula (sourced after functions.sh).
#
# tests/powercut mounts $PC_MNT over $PC_STATE: $PC_STATE/disk is the disk
# (what survives), the mount shows the live state.  A cut kills the simulator
# with SIGKILL, so nothing that was not fsynced reaches the disk, then kills
# the programs that used the mount and detaches it.  pc_mount again is the
# reboot: the live state is rebuilt from the disk.
#
#   pc_init                  $PC_STATE (put the initial state in $PC_STATE/disk) and $PC_MNT
#   pc_mount [--strict]      start the simulator and wait until it serves
#   pc_cut [NBDKIT-NAME...]  the power cut; nbdkit servers named are killed too
#   pc_arm [TEXT [SECONDS]]  the cut comes at the next sync call (SIGUSR2), with
#                            TEXT at the next one of a path containing TEXT; waits
#                            for it SECONDS (default 5); then pc_cut (or pc_daemon_cut)
#   pc_cuts DEFAULT          cuts per case: $TB_POWERCUT_CUTS, else DEFAULT
#   pc_pause                 sleep 0.1 to 0.9 s at random (where the cut falls)
#   pc_fsync PATH...         fsync files or directories (as a careful writer does)
#   pc_snapshot [NAME]       copy the disk to $TB_TMP/NAME (default: pristine)
#   pc_restore [NAME]        put that copy back as the disk (before pc_mount)
#   pc_bg_stop NAME          stop the test's background loop whose pid is in
#                            $TB_TMP/NAME.bgpid and wait for it
#
# With daemon-functions.sh, the daemon on the mount ($TB_TMP/tabula.json):
#   pc_daemon_start          td_start; nbdkit's pid in $TB_TMP/nbdkit.pid
#   pc_daemon_start_loose    the same on a disk that may be cut while it starts:
#                            no failure if it dies, every wait bounded
#   pc_daemon_cut [MNT...]   stop everything that used the mount, then cut
#                            (fuse mounts MNT of the test detached too)

PC_BIN=$abs_builddir/powercut

pc_init()
{
  [ -x "$PC_BIN" ] || tb_fail "$PC_BIN is not built (make check builds it)"
  [ -c /dev/fuse ] || tb_skip "no /dev/fuse"
  PC_STATE=$TB_TMP/pc
  PC_MNT=$TB_TMP/mnt
  mkdir -p "$PC_STATE/disk" "$PC_MNT"
  TB_MOUNTS="$TB_MOUNTS $PC_MNT"
}

pc_snapshot()
{
  rm -rf "$TB_TMP/${1:-pristine}"
  cp -a "$PC_STATE/disk" "$TB_TMP/${1:-pristine}"
}

pc_restore()
{
  rm -rf "$PC_STATE/disk"
  cp -a "$TB_TMP/${1:-pristine}" "$PC_STATE/disk"
}

pc_bg_stop()
{
  kill "$(cat "$TB_TMP/$1.bgpid")" 2>/dev/null || true
  wait "$(cat "$TB_TMP/$1.bgpid")" 2>/dev/null || true
}

pc_cuts()
{
  echo "${TB_POWERCUT_CUTS:-$1}"
}

pc_pause()
{
  sleep "0.$(($(od -An -N2 -tu2 /dev/urandom) % 9 + 1))"
}

pc_mount()
{
  "$PC_BIN" "$@" "$PC_STATE" "$PC_MNT" >>"$TB_TMP/powercut.log" 2>&1 &
  echo $! >"$TB_TMP/powercut.bgpid"
  _i=0
  until grep -q " $PC_MNT fuse.powercut " /proc/mounts; do
    kill -0 "$(cat "$TB_TMP/powercut.bgpid")" 2>/dev/null ||
      tb_fail "the power-cut simulator did not start: $(tail -n 5 "$TB_TMP/powercut.log")"
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "the power-cut simulator did not mount within 30 s"
    sleep 0.1
  done
}

pc_cut()
{
  _pid=$(cat "$TB_TMP/powercut.bgpid")
  kill -9 "$_pid" 2>/dev/null || true
  wait "$_pid" 2>/dev/null || true
  rm -f "$TB_TMP/powercut.bgpid"
  for _n in "$@"; do
    [ -f "$TB_TMP/$_n.bgpid" ] && tb_kill9 "$_n"
  done
  umount -l "$PC_MNT" 2>/dev/null || fusermount3 -uz "$PC_MNT" 2>/dev/null || true
  ! grep -q " $PC_MNT fuse" /proc/mounts ||
    tb_fail "$PC_MNT is still mounted after the cut"
  grep -q 'AddressSanitizer\|runtime error' "$TB_TMP/powercut.log" &&
    tb_fail "the simulator hit a sanitizer error: $(grep -m3 'AddressSanitizer\|runtime error' "$TB_TMP/powercut.log")"
  return 0
}

pc_arm()
{
  _pid=$(cat "$TB_TMP/powercut.bgpid")
  if [ -n "${1:-}" ]; then echo "$1" >"$PC_STATE/arm-path"; else rm -f "$PC_STATE/arm-path"; fi
  kill -USR2 "$_pid" 2>/dev/null || true
  _i=0
  # (a zombie until pc_cut waits for it)
  while [ $_i -lt $((${2:-5} * 10)) ] && _st=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$_pid/status" 2>/dev/null) &&
    [ -n "$_st" ] && [ "$_st" != Z ]; do
    _i=$((_i + 1))
    sleep 0.1
  done
}

pc_fsync()
{
  python3 -c '
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)' "$@"
}

pc_daemon_start()
{
  td_start "$TB_TMP/tabula.json"
  td_nbdkit_pid >"$TB_TMP/nbdkit.pid"
}

pc_daemon_start_loose()
{
  TD_CONF=$TB_TMP/tabula.json
  rm -f "$TB_TMP/nbdkit.pid"
  "$TD_DAEMON" -c "$TD_CONF" >>"$TB_TMP/daemon.log" 2>&1 &
  echo $! >"$TB_TMP/daemon.bgpid"
  _i=0
  until tctl --json status 2>/dev/null | jq -e '.nbdkit.state == "running"' >/dev/null 2>&1; do
    kill -0 "$(cat "$TB_TMP/daemon.bgpid")" 2>/dev/null && grep -q " $PC_MNT fuse" /proc/mounts ||
      return 0
    _i=$((_i + 1))
    [ $_i -lt 100 ] || return 0
    sleep 0.1
  done
  td_nbdkit_pid >"$TB_TMP/nbdkit.pid"
}

pc_daemon_cut()
{
  _nb=$(cat "$TB_TMP/nbdkit.pid" 2>/dev/null || true)
  pc_cut daemon
  [ -z "$_nb" ] || kill -9 "$_nb" 2>/dev/null || true
  for _m in "$@"; do
    fusermount3 -uz "$_m" 2>/dev/null || true
  done
  rm -f "$TB_TMP/daemon.bgpid"
  return 0
}
