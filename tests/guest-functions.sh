# SPDX-License-Identifier: BSD-3-Clause
# tests/guest-functions.sh: helpers for the real-guest tests (sourced after
# functions.sh).  QEMU (TCG, never KVM) boots Debian's cloud kernel with the
# initramfs scripts/mkguest.sh builds; the guest's root is an ext4 master
# image served by tabula over NBD, and /tabula/run.sh on it does what the
# kernel command line says (tabula.do=..., see scripts/mkguest.sh --help).
# Every boot is bounded by `timeout`, so a hung guest fails the test.
#
#   tg_master IMG DIR          DIR (files of the test) + the guest's rootfs -> 64 MiB ext4 IMG;
#                              DIR's manifest in $TB_TMP/master.files
#   tg_manifest DIR            "SHA256 /PATH" for every regular file under DIR, sorted
#   tg_appliance DIR CLIENTS   master $TB_TMP/master.img from DIR, imported as "demo" into
#                              $state ($TB_TMP/state), the daemon started with CLIENTS
#                              (the "clients" JSON); sets state, sock and TD_CONF
#   tg_boot TAG SOCK ID ACTIONS        boot, run ACTIONS, power off; the guest's "tabula-file"
#                                      lines in $TB_TMP/TAG.files, its console in guest-TAG.log
#   tg_boot_paused TAG SOCK ID ACTIONS boot in the background until the guest's "pause" action
#   tg_resume TAG                      let it continue, wait for it to power off
#   tg_continue TAG N                  let it continue to its Nth pause
#   tg_same_files A B WHAT             two manifests must be equal

tb_require qemu-system-x86_64 timeout mke2fs cpio gzip
TG_MKGUEST=$abs_top_srcdir/scripts/mkguest.sh
ls /boot/vmlinuz-* >/dev/null 2>&1 || tb_skip "no kernel in /boot (apt-get install linux-image-cloud-amd64)"
[ -r "$(ls /boot/vmlinuz-* | sort -V | tail -n 1)" ] || tb_skip "the kernels in /boot are not readable (run as root)"
[ -x /bin/busybox ] || tb_skip "/bin/busybox is missing (apt-get install busybox-static)"
# A boot of the cloud kernel under TCG takes a few seconds; the bound is for
# a slow or loaded machine.
TG_TIMEOUT=${TG_TIMEOUT:-150}

# The kernel and initramfs, built once per build tree (mkguest.sh rebuilds
# them only when the kernel or the script changed).
TG_BOOT=$abs_top_builddir/tests/guest-boot
"$TG_MKGUEST" --boot "$TG_BOOT" >/dev/null || tb_fail "scripts/mkguest.sh --boot failed"

tg_manifest()
{
  (cd "$1" && find . -type f | LC_ALL=C sort | while read -r f; do
    echo "$(sha256sum "$f" | cut -d' ' -f1) ${f#.}"
  done)
}

tg_master()
{
  "$TG_MKGUEST" --rootfs "$2" >/dev/null || tb_fail "mkguest.sh --rootfs $2"
  tg_manifest "$2" >"$TB_TMP/master.files"
  truncate -s 64M "$1"
  mke2fs -q -F -t ext4 -L tabula-guest -d "$2" "$1" || tb_fail "mke2fs -d $2"
}

tg_appliance()
{
  tg_master "$TB_TMP/master.img" "$1"
  state=$TB_TMP/state
  td_config "$TB_TMP/tabula.json" "$state" "$2"
  TD_CONF=$TB_TMP/tabula.json
  tctl image import demo "$TB_TMP/master.img" >/dev/null || tb_fail "import"
  td_start "$TB_TMP/tabula.json"
  sock=$state/nbd.sock
}

# tg_qemu TAG SOCK ID ACTIONS: the QEMU command (stdin and stdout are the caller's).
# The disk is ID's NBD export on SOCK, or with TG_ISCSI_PORT set, ID's iSCSI
# target on 127.0.0.1:TG_ISCSI_PORT, LUN 0 (QEMU's libiscsi driver; SOCK unused).
tg_qemu()
{
  if [ -n "${TG_ISCSI_PORT:-}" ]; then
    set -- "$1" "$2" "$3" "$4" -iscsi "initiator-name=iqn.2024-01.lan.tabula.test:qemu-$3" \
      -drive "file=iscsi://127.0.0.1:$TG_ISCSI_PORT/$TB_ISCSI_PREFIX:$3/0,format=raw,if=virtio,cache=none"
  else
    set -- "$1" "$2" "$3" "$4" -drive "file=nbd+unix:///$3?socket=$2,format=raw,if=virtio,cache=none"
  fi
  _tag=$1 _actions=$4
  shift 4
  timeout -k 5 "$TG_TIMEOUT" qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -nic none \
    -pidfile "$TB_TMP/guest-$_tag.bgpid" \
    -kernel "$TG_BOOT/vmlinuz" -initrd "$TG_BOOT/initramfs.cpio.gz" \
    -append "console=ttyS0 root=/dev/vda panic=-1 quiet tabula.do=$_actions" "$@"
}

# tg_check TAG STATUS: the guest ran every action and powered off.
tg_check()
{
  _log=$TB_TMP/guest-$1.log
  rm -f "$TB_TMP/guest-$1.bgpid"
  [ "$2" -ne 124 ] && [ "$2" -ne 137 ] || tb_fail "guest $1 did not power off within $TG_TIMEOUT s"
  [ "$2" -eq 0 ] || tb_fail "qemu for guest $1 exited with $2: $(tail -n 5 "$_log")"
  tr -d '\r' <"$_log" >"$TB_TMP/$1.console"
  grep -q '^tabula-done ok' "$TB_TMP/$1.console" ||
    tb_fail "guest $1 failed: $(grep -a 'tabula-' "$TB_TMP/$1.console" | grep -v tabula-file | tail -n 5)"
  sed -n 's/^tabula-file //p' "$TB_TMP/$1.console" >"$TB_TMP/$1.files"
  echo "guest $1: $(sed -n 's/^tabula-\(booted\|poweroff\) /\1 /p' "$TB_TMP/$1.console" | tr '\n' ' ')(guest uptime, s)"
}

tg_boot()
{
  _st=0
  tg_qemu "$@" </dev/null >"$TB_TMP/guest-$1.log" 2>&1 || _st=$?
  tg_check "$1" $_st
}

tg_boot_paused()
{
  _tag=$1
  rm -f "$TB_TMP/$_tag.fifo" "$TB_TMP/$_tag.status"
  mkfifo "$TB_TMP/$_tag.fifo"
  (
    _st=0
    tg_qemu "$@" <"$TB_TMP/$_tag.fifo" >"$TB_TMP/guest-$_tag.log" 2>&1 || _st=$?
    echo $_st >"$TB_TMP/$_tag.status"
  ) &
  echo $! >"$TB_TMP/$_tag.waitpid"
  # A writer that stays open, so QEMU sees no end of its input until tg_resume.
  sleep 2147483647 >"$TB_TMP/$_tag.fifo" &
  echo $! >"$TB_TMP/$_tag.holdpid"
  _i=0
  until grep -q '^tabula-paused' "$TB_TMP/guest-$_tag.log" 2>/dev/null; do
    if [ -f "$TB_TMP/$_tag.status" ]; then
      kill "$(cat "$TB_TMP/$_tag.holdpid")" 2>/dev/null
      tg_check "$_tag" "$(cat "$TB_TMP/$_tag.status")"
      tb_fail "guest $_tag powered off without pausing"
    fi
    _i=$((_i + 1))
    [ $_i -lt $((TG_TIMEOUT * 10)) ] || tb_fail "guest $_tag did not reach its pause"
    sleep 0.1
  done
}

tg_resume()
{
  # Opening the fifo blocks until QEMU reads it: bounded, in case it is gone.
  timeout 10 sh -c 'echo go >"$1"' sh "$TB_TMP/$1.fifo" 2>/dev/null || true
  kill "$(cat "$TB_TMP/$1.holdpid")" 2>/dev/null || true
  wait "$(cat "$TB_TMP/$1.waitpid")" 2>/dev/null || true
  tg_check "$1" "$(cat "$TB_TMP/$1.status" 2>/dev/null || echo 1)"
}

# tg_same_files EXPECTED ACTUAL WHAT
tg_same_files()
{
  diff -u "$1" "$2" >"$TB_TMP/files.diff" || tb_fail "$3: $(cat "$TB_TMP/files.diff")"
}

# tg_continue TAG N: let the paused guest go on to its Nth pause.
tg_continue()
{
  timeout 10 sh -c 'echo go >"$1"' sh "$TB_TMP/$1.fifo" || tb_fail "guest $1 is gone"
  _i=0
  until [ "$(grep -c '^tabula-paused' "$TB_TMP/guest-$1.log" 2>/dev/null)" -ge "$2" ]; do
    [ ! -f "$TB_TMP/$1.status" ] || tb_fail "guest $1 stopped: $(tail -n 5 "$TB_TMP/guest-$1.log")"
    _i=$((_i + 1))
    [ $_i -lt $((TG_TIMEOUT * 10)) ] || tb_fail "guest $1 did not reach pause $2"
    sleep 0.1
  done
}
