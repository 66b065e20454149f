# SPDX-License-Identifier: BSD-3-Clause
# tests/lab-functions.sh: a virtual lab of diskless PCs, for tests/lab-*.sh,
# scripts/lab.sh and scripts/bench-pxe-storm.sh (sourced after functions.sh
# and daemon-functions.sh, once tb_setup made $TB_TMP).
#
# Everything runs inside a network namespace made here: a bridge tbbr0
# (10.77.0.1/24) with the appliance on it -- tabula-restored, its nbdkit
# listening on 10.77.0.1:10809 and its dnsmasq (the "pxe" section) -- and
# one tap device per PC.  A PC is QEMU (TCG) with a virtio NIC on its tap:
# its iPXE ROM (Debian's ipxe-qemu) PXE-boots, gets the client's iPXE script
# from dnsmasq, loads the cloud kernel and the initramfs of
# `scripts/mkguest.sh --pxe`, and the initramfs mounts the root over NBD with
# the guest kernel's client (nbd-client + tabula-nbd-persist).  The kernel
# command line says tabula.do=ask: at each boot the guest prints
# "tabula-ask" and runs the actions the host types on its serial console,
# which is the PC's QEMU stdin (a fifo) and stdout ($TB_TMP/pc-TAG.log).
#
#   tl_lab DIR CLIENTS [EXTRA [LISTEN]]  master from DIR (+ the guest's rootfs) imported as
#                          "demo" (DIR a file: that master image as it is), the namespace,
#                          the daemon with CLIENTS (the "clients" JSON; each PC has "mac"
#                          and "address" in 10.77.0.0/24), EXTRA top-level keys and
#                          LISTEN more "listen" keys (e.g. "\"iscsi\": \"10.77.0.1:3260\"")
#   tl_on TAG MAC          power a PC on (its tap tbTAG, console pc-TAG.log)
#   tl_boot TAG ACTIONS    wait for the PC's next "tabula-ask", give it ACTIONS, wait until
#                          it is done; its "tabula-file" lines in $TB_TMP/TAG.files, its
#                          "tabula-cat" lines in $TB_TMP/TAG.cat
#   tl_ask TAG ACTIONS     the same without waiting for the end (ACTIONS with a pause)
#   tl_wait TAG REGEX WHAT wait until the console has one more line matching REGEX
#                          (counted per TAG and REGEX) than when tl_wait last saw it
#   tl_resume TAG          a line on the console: a paused guest goes on
#   tl_off TAG             wait for QEMU to exit (the guest powered off)
#   tl_kill TAG            pull the plug
#   tl_ns CMD...           run CMD in the lab's namespace
#   tl_sessions ID         the client's session-start events
#   tl_cleanup             (the EXIT trap) QEMU killed, the namespace deleted, then tb_cleanup
#
# Every wait is bounded (TL_TIMEOUT, default 240 s: a PXE boot under TCG takes
# 10-30 s, more with several PCs on 2 cores) and fails at once when the PC
# panics, powers off or its guest reports a failure; a failing test prints
# the end of every console (tb_cleanup shows $TB_TMP/*.log).

[ "$(id -u)" = 0 ] || tb_skip "needs root (network namespaces, tap devices)"
tb_require qemu-system-x86_64 timeout mke2fs cpio gzip ip nbdinfo
TL_DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$TL_DNSMASQ" ] || tb_skip "dnsmasq is not installed (Debian's dnsmasq-base)"
[ -x /sbin/nbd-client ] || tb_skip "nbd-client is not installed (Debian's nbd-client)"
ls /usr/lib/ipxe/qemu/efi-virtio.rom >/dev/null 2>&1 ||
  tb_skip "QEMU's iPXE ROMs are missing (Debian's ipxe-qemu)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || tb_skip "no kernel in /boot (apt-get install linux-image-cloud-amd64)"
[ -r "$(ls /boot/vmlinuz-* | sort -V | tail -n 1)" ] || tb_skip "the kernels in /boot are not readable (run as root)"
[ -x /bin/busybox ] || tb_skip "/bin/busybox is missing (apt-get install busybox-static)"
[ -c /dev/net/tun ] || tb_skip "no /dev/net/tun (tap devices)"
TL_TIMEOUT=${TL_TIMEOUT:-240}
TL_MKGUEST=$abs_top_srcdir/scripts/mkguest.sh
TL_PERSIST=$abs_top_builddir/restored/tabula-nbd-persist
[ -x "$TL_PERSIST" ] || tb_fail "$TL_PERSIST is not built"
TL_NS=tblab-$$
TL_SERVER=10.77.0.1
TL_PORT=10809

# The PXE kernel and initramfs, built once per build tree.
TL_BOOT=$abs_top_builddir/tests/lab-boot
"$TL_MKGUEST" --pxe "$TL_BOOT" --persist "$TL_PERSIST" >/dev/null ||
  tb_fail "scripts/mkguest.sh --pxe failed"

tl_cleanup()
{
  _st=$?
  set +e
  for _p in "$TB_TMP"/qemu-*.pid; do
    [ -f "$_p" ] && kill -9 "$(cat "$_p")" 2>/dev/null
  done
  ip netns pids "$TL_NS" 2>/dev/null | while read -r _p; do kill -9 "$_p" 2>/dev/null; done
  ip netns del "$TL_NS" 2>/dev/null
  (exit $_st)
  tb_cleanup
}
trap tl_cleanup EXIT

tl_ns()
{
  ip netns exec "$TL_NS" "$@"
}

tl_netns()
{
  ip netns add "$TL_NS" 2>/dev/null || tb_skip "cannot create a network namespace"
  tl_ns ip link set lo up
  tl_ns ip link add tbbr0 type bridge || tb_fail "cannot create a bridge in $TL_NS"
  tl_ns ip link set tbbr0 type bridge forward_delay 0 stp_state 0
  tl_ns ip addr add "$TL_SERVER/24" dev tbbr0
  tl_ns ip link set tbbr0 up
}

# tl_master IMG DIR: DIR + the guest's rootfs -> 64 MiB ext4 with 4 KiB
# blocks (nbd-client's -b 4096), every inode table written now (no lazy init
# writing behind the tests' backs).
tl_master()
{
  "$TL_MKGUEST" --rootfs "$2" >/dev/null || tb_fail "mkguest.sh --rootfs $2"
  truncate -s 64M "$1"
  mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -L tabula-lab -d "$2" "$1" ||
    tb_fail "mke2fs -d $2"
}

# The guest sends ID@boot/BOOT_ID once the plugin knows boot ids; before
# that, the plain ID (tabula.bootid=0).  A spare client "probe" tells which.
tl_bootid_opt()
{
  if nbdinfo --size "nbd+unix:///probe@boot/0123?socket=$state/nbd.sock" >/dev/null 2>&1; then
    echo ""
  else
    echo " tabula.bootid=0"
  fi
}

tl_lab()
{
  tl_netns
  if [ -f "$1" ]; then
    cp "$1" "$TB_TMP/master.img"
  else
    tl_master "$TB_TMP/master.img" "$1"
  fi
  state=$TB_TMP/state
  _clients=$(echo "$2" | jq -c '. + { "probe": { "image": "demo" } }')
  # Real PCs reconnect after a glitch: a session waits for them (the unit
  # tests' default is 0 s, a session per connection).
  TB_RECONNECT_GRACE=${TB_RECONNECT_GRACE:-60s} td_config "$TB_TMP/tabula.json" "$state" "$_clients" "\"listen\": { \"tcp\": \"$TL_SERVER:$TL_PORT\"${4:+, $4} },
  \"pxe\": { \"interface\": \"tbbr0\", \"server\": \"$TL_SERVER\", \"network\": \"10.77.0.0/24\",
    \"unknown_range\": \"10.77.0.200,10.77.0.220\", \"kernel\": \"$TL_BOOT/vmlinuz\",
    \"initrd\": \"$TL_BOOT/initramfs.cpio.gz\", \"dnsmasq\": \"$TL_DNSMASQ\",
    \"cmdline\": \"console=ttyS0 quiet panic=-1 tabula.do=ask\" }${3:+,
  $3}"
  TD_CONF=$TB_TMP/tabula.json
  tctl image import demo "$TB_TMP/master.img" >/dev/null || tb_fail "import"
  cat >"$TB_TMP/daemon-in-ns" <<EOF
#!/bin/sh
exec ip netns exec $TL_NS $TD_DAEMON "\$@"
EOF
  chmod +x "$TB_TMP/daemon-in-ns"
  TL_DAEMON=$TD_DAEMON
  TD_DAEMON=$TB_TMP/daemon-in-ns
  td_start "$TB_TMP/tabula.json"
  td_wait '.pxe.state == "running"' "dnsmasq must run: $(cat "$state/pxe/dnsmasq.log" 2>/dev/null)"
  sock=$state/nbd.sock
  _opt=$(tl_bootid_opt)
  if [ -n "$_opt" ]; then
    echo "(the plugin does not take ID@boot/TOKEN yet: the PCs send their plain id)"
    jq --arg o "$_opt" '.pxe.cmdline += $o' "$TD_CONF" >"$TD_CONF.new" && mv "$TD_CONF.new" "$TD_CONF"
    tctl reload >/dev/null || tb_fail "reload with$_opt"
    _i=0
    until grep -q "tabula.bootid=0" "$state/pxe/tftp/"*.ipxe 2>/dev/null; do
      _i=$((_i + 1))
      [ $_i -lt 100 ] || tb_fail "the iPXE scripts did not get$_opt"
      sleep 0.1
    done
  fi
}

# tl_on TAG MAC: a PC on its own tap, powered on.
tl_on()
{
  _tap=tb$1
  tl_ns ip tuntap add "$_tap" mode tap 2>/dev/null || tl_ns ip link show "$_tap" >/dev/null ||
    tb_fail "cannot create the tap $_tap"
  tl_ns ip link set "$_tap" master tbbr0
  tl_ns ip link set "$_tap" up
  rm -f "$TB_TMP/$1.fifo" "$TB_TMP/pc-$1.log"
  mkfifo "$TB_TMP/$1.fifo"
  : >"$TB_TMP/pc-$1.log"
  (
    tl_ns timeout -k 5 "$TL_TIMEOUT" qemu-system-x86_64 -accel tcg -m 256 -nographic -boot n \
      -pidfile "$TB_TMP/qemu-$1.pid" \
      -netdev "tap,id=n0,ifname=$_tap,script=no,downscript=no" \
      -device "virtio-net-pci,netdev=n0,mac=$2" \
      <"$TB_TMP/$1.fifo" >>"$TB_TMP/pc-$1.log" 2>&1
    echo $? >"$TB_TMP/$1.status"
  ) &
  echo $! >"$TB_TMP/$1.waitpid"
  # A writer that stays open, so QEMU never sees the end of its input.
  sleep 2147483647 >"$TB_TMP/$1.fifo" &
  echo $! >"$TB_TMP/$1.holdpid"
  rm -f "$TB_TMP/$1.status" "$TB_TMP/$1.seen."*
  date +%s >"$TB_TMP/$1.on"
}

# tl_console TAG: the console without carriage returns.
tl_console()
{
  tr -d '\r' <"$TB_TMP/pc-$1.log"
}

# tl_wait TAG REGEX WHAT
tl_wait()
{
  _key=$(echo "$2" | cksum | cut -d' ' -f1)
  _seen=$(cat "$TB_TMP/$1.seen.$_key" 2>/dev/null || echo 0)
  _i=0
  while :; do
    _n=$(tl_console "$1" | grep -c -E -- "$2" || true)
    [ "$_n" -le "$_seen" ] || break
    if tl_console "$1" | grep -q -E 'Kernel panic|^tabula-done failed'; then
      tb_fail "$3: PC $1 failed: $(tl_console "$1" | grep -E 'Kernel panic|^tabula-(done|error)' | tail -n 3)"
    fi
    if [ -f "$TB_TMP/$1.status" ]; then
      tb_fail "$3: PC $1 is off (status $(cat "$TB_TMP/$1.status")): $(tl_console "$1" | grep -a '^tabula-' | tail -n 3)"
    fi
    _i=$((_i + 1))
    [ $_i -lt $((TL_TIMEOUT * 5)) ] ||
      tb_fail "$3: PC $1 did not print /$2/ within $TL_TIMEOUT s: $(tl_console "$1" | tail -n 5)"
    sleep 0.2
  done
  echo $((_seen + 1)) >"$TB_TMP/$1.seen.$_key"
}

# tl_send TAG LINE: one line on the PC's console (bounded: QEMU may be gone).
tl_send()
{
  timeout 10 sh -c 'echo "$2" >"$1"' sh "$TB_TMP/$1.fifo" "$2" 2>/dev/null ||
    tb_fail "cannot type on PC $1's console"
}

tl_ask()
{
  tl_wait "$1" '^tabula-ask' "PC $1 must boot and ask for its actions"
  tl_send "$1" "$2"
}

# tl_done TAG: wait for the end of the running actions; the boot's files and cats.
tl_done()
{
  tl_wait "$1" '^tabula-done' "PC $1 must run its actions"
  # The last boot's lines: from its "tabula-nbd" or "tabula-iscsi" (the
  # disk's attach) to its "tabula-done" (the PC may be booting again already).
  tl_console "$1" | awk '/^tabula-(nbd|iscsi) / { n = 0 } { l[++n] = $0 }
    /^tabula-done/ { m = n; for (i = 1; i <= n; i++) out[i] = l[i] }
    END { for (i = 1; i <= m; i++) print out[i] }' >"$TB_TMP/$1.last"
  sed -n 's/^tabula-file //p' "$TB_TMP/$1.last" >"$TB_TMP/$1.files"
  sed -n 's/^tabula-cat //p' "$TB_TMP/$1.last" >"$TB_TMP/$1.cat"
}

tl_boot()
{
  tl_ask "$1" "$2"
  tl_done "$1"
}

tl_resume()
{
  tl_send "$1" go
}

tl_off()
{
  _i=0
  until [ -f "$TB_TMP/$1.status" ]; do
    _i=$((_i + 1))
    [ $_i -lt $((TL_TIMEOUT * 5)) ] || tb_fail "PC $1 did not power off within $TL_TIMEOUT s"
    sleep 0.2
  done
  kill "$(cat "$TB_TMP/$1.holdpid")" 2>/dev/null || true
  wait "$(cat "$TB_TMP/$1.waitpid")" 2>/dev/null || true
  [ "$(cat "$TB_TMP/$1.status")" = 0 ] ||
    tb_fail "PC $1's QEMU exited with $(cat "$TB_TMP/$1.status"): $(tl_console "$1" | tail -n 5)"
  rm -f "$TB_TMP/qemu-$1.pid"
}

tl_kill()
{
  [ -f "$TB_TMP/qemu-$1.pid" ] && kill -9 "$(cat "$TB_TMP/qemu-$1.pid")" 2>/dev/null
  kill "$(cat "$TB_TMP/$1.holdpid")" 2>/dev/null || true
  wait "$(cat "$TB_TMP/$1.waitpid")" 2>/dev/null || true
  rm -f "$TB_TMP/qemu-$1.pid"
}

# tl_has TAG PATH TEXT: the last boot's cat of PATH printed TEXT.
tl_has()
{
  grep -qx -- "$2: $3" "$TB_TMP/$1.cat" ||
    tb_fail "PC $1: $2 should read '$3': $(cat "$TB_TMP/$1.cat")"
}

# tl_lacks TAG PATH: the last boot's cat of PATH found no file.
tl_lacks()
{
  grep -qx -- "$2: (no such file)" "$TB_TMP/$1.cat" ||
    tb_fail "PC $1: $2 should not exist: $(cat "$TB_TMP/$1.cat")"
}

tl_sessions()
{
  tb_count_events session-start "$1" "$state"
}

# tl_rollbacks ID: the client's rollbacks done (not the ones asked for, which
# carry "applies").
tl_rollbacks()
{
  if [ -f "$state/events.jsonl" ]; then
    jq -c "select(.type == \"rollback\" and .client == \"$1\" and .applies == null)" "$state/events.jsonl" | wc -l
  else
    echo 0
  fi
}
