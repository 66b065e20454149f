#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# README's Deployment, run as written under a real systemd (issue 18 §1).
#
# QEMU (TCG) boots a Debian guest whose PID 1 is systemd
# (scripts/mkguest-debian.sh: debootstrap minbase with systemd and only the
# packages of scripts/packages-runtime.txt, cached in $TB_GUEST_CACHE,
# default /var/cache/tabula-tests; its first build takes 2-3 minutes).  On
# the host, tabula is built as README's first line says (its configure
# arguments, in a build directory of its own) and installed with
# `make install DESTDIR=`; in the guest that tree is copied to / (the
# `sudo make install`), then README's commands run as they are written (its
# ```sh block, without the build line and `sudo`), with conf/tabula.json
# edited as README's "Who may connect" says.  Then, under systemd:
#  - the unit is the installed one, enabled, active; systemd-analyze verify
#    accepts it; RuntimeDirectory= made /run/tabula (0755, gone after stop);
#  - READY came once nbdkit serves (`systemctl enable --now` returned, and
#    `tabulactl status` right after it exits 0); StatusText says "serving";
#  - the journal has the daemon's lines with priorities (the warning about
#    vm01, whose image has no version yet, at priority 4) and no program-
#    name prefix, and nbdkit's error refusing vm01 at priority 3;
#  - a client is served: after `tabulactl image import debian`, vm01 over
#    nbd.sock as a member of libvirt-qemu (unix_mode 0660, unix_group), its
#    content the master's; a user outside the group is refused; an operator
#    in tabula-ops runs `tabulactl --socket ... status`;
#  - the metrics file is 0644 with tabula_up 1, and tabula_up 0 after stop;
#  - systemctl restart (a new MainPID, served again), reload (which fails
#    on a file that does not parse, the daemon serving on), stop, start.
# The guest's console is $TB_TMP/guest.log; its own log and journal come
# back on the payload disk (guest-side.log, journal.log).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
command -v debootstrap >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
tb_require debootstrap qemu-img debugfs sfdisk jq flock curl
[ "$(id -u)" -eq 0 ] || tb_skip "needs root (debootstrap, the guest's disk images)"
. "$abs_top_srcdir/tests/guest-functions.sh"
cache=${TB_GUEST_CACHE:-/var/cache/tabula-tests}
# A boot of systemd under TCG on a loaded machine, the test's own commands
# and a clean poweroff.
timeout=${TB_DEPLOY_TIMEOUT:-900}
readme=$abs_top_srcdir/README.md

# The userland, in the background while tabula builds.
"$abs_top_srcdir/scripts/mkguest-debian.sh" "$cache" >"$TB_TMP/rootfs.log" 2>&1 &
rootfs_pid=$!

# README's Deployment section, its first ```sh and ```json blocks.
section()
{
  awk -v fence="$1" '/^## Deployment/ { d = 1; next } d && /^## / { exit }
    d && !b && $0 == "```" fence { b = 1; next } b && /^```$/ { exit } b' "$readme"
}
section sh >"$TB_TMP/readme.sh"
section json >"$TB_TMP/readme.json"
build_line=$(head -n 1 "$TB_TMP/readme.sh")
configure_args=$(echo "$build_line" | sed -n 's|.*\./configure\( [^&]*\)\{0,1\} &&.*|\1|p')
case $build_line in
*./configure*make*"make install"*) ;;
*) tb_fail "README's Deployment block does not start with the build (configure, make, make install): $build_line" ;;
esac
jq -e . "$TB_TMP/readme.json" >/dev/null || tb_fail "README's \"Who may connect\" JSON does not parse"

echo "== the build, as README says: configure$configure_args && make -j2 && make install DESTDIR"
[ ! -f "$abs_top_srcdir/config.status" ] ||
  tb_skip "the source tree is configured in place ($abs_top_srcdir/config.status): a second build directory needs a clean one (make distclean there)"
mkdir -p "$TB_TMP/build"
payload=$TB_TMP/payload
(cd "$TB_TMP/build" && eval "\"$abs_top_srcdir/configure\" --quiet $configure_args" &&
  make -j2 --quiet && make install DESTDIR="$payload/destdir") >"$TB_TMP/build.log" 2>&1 ||
  tb_fail "the build as README says: $(tail -n 15 "$TB_TMP/build.log")"

rootfs_status=0
wait $rootfs_pid || rootfs_status=$?
[ $rootfs_status -ne 3 ] || tb_skip "$(tail -n 1 "$TB_TMP/rootfs.log")"
[ $rootfs_status -eq 0 ] || tb_fail "scripts/mkguest-debian.sh: $(tail -n 15 "$TB_TMP/rootfs.log")"
base=$(tail -n 1 "$TB_TMP/rootfs.log")
echo "guest userland: $base"

echo "== the payload: the installed tree, README's steps and configuration, two masters"
mkdir -p "$payload/src/conf" "$payload/masters" "$TB_TMP/debian-files"
# The administrator's edit: the shipped file with README's JSON merged in.
jq -s '.[0] * .[1]' "$abs_top_srcdir/conf/tabula.json" "$TB_TMP/readme.json" \
  >"$payload/src/conf/tabula.json" || tb_fail "cannot merge README's JSON into conf/tabula.json"
# Everything after the build line, as root: without sudo.
tail -n +2 "$TB_TMP/readme.sh" | sed 's/\bsudo //g' >"$payload/steps.sh"
# win11: an MBR with three partitions (group lab preserves partition:3).
truncate -s 64M "$payload/masters/win11.raw"
printf 'label: dos\n2048,20480,7\n22528,20480,83\n43008,,83\n' |
  sfdisk -q "$payload/masters/win11.raw" >/dev/null || tb_fail "sfdisk"
echo "served by tabula under systemd" >"$TB_TMP/debian-files/hello.txt"
truncate -s 32M "$payload/masters/debian.raw"
mke2fs -q -F -t ext4 -d "$TB_TMP/debian-files" "$payload/masters/debian.raw" || tb_fail "mke2fs"
debian_sha=$(sha256sum <"$payload/masters/debian.raw" | cut -d' ' -f1)
debian_size=$(stat -c %s "$payload/masters/debian.raw")

cat >"$payload/run.sh" <<EOF
#!/bin/sh
# tests/deploy-systemd.sh, the guest's side: root, under systemd, after boot.
P=/mnt/tabula
DEBIAN_SHA=$debian_sha
DEBIAN_SIZE=$debian_size
EOF
cat >>"$payload/run.sh" <<'EOF'
LOG=$P/guest-side.log
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
: >"$LOG"
ok() { echo "tabula-ok $*"; }
fail()
{
  echo "tabula-fail $*"
  journalctl -u tabula-restored --no-pager -n 15 -o cat | sed 's/^/tabula-journal /'
  journalctl -b --no-pager >"$P/journal.log" 2>&1
  echo "tabula-done failed"
  exit 1
}
# run CMD...: its output in $LOG (and $OUT), a failure names it.
run()
{
  echo "+ $*" >>"$LOG"
  if OUT=$("$@" 2>&1); then
    echo "$OUT" >>"$LOG"
    return 0
  else
    st=$?
    echo "$OUT" >>"$LOG"
    fail "$* exited with $st: $(echo "$OUT" | tail -n 4 | tr '\n' ' ')"
  fi
}
expect() # expect WHAT GOT WANTED
{
  [ "$2" = "$3" ] || fail "$1: got \"$2\", expected \"$3\""
  ok "$1: $2"
}
served() # served USER: vm01 over nbd.sock as USER, its content the master's
{
  run runuser -u "$1" -- nbdinfo --size "nbd+unix:///vm01?socket=/run/tabula/nbd.sock"
  expect "vm01's size as $1 sees it" "$OUT" "$DEBIAN_SIZE"
  rm -f /tmp/vm01.img
  run runuser -u "$1" -- nbdcopy "nbd+unix:///vm01?socket=/run/tabula/nbd.sock" /tmp/vm01.img
  expect "vm01's content" "$(sha256sum </tmp/vm01.img | cut -d' ' -f1)" "$DEBIAN_SHA"
}
echo "tabula-guest pid1=$(cat /proc/1/comm) $(systemctl --version | head -n 1)"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"

# `sudo make install`: the tree make install DESTDIR= staged on the host.
run cp -a "$P/destdir/." /
ok "make install: $(cd "$P/destdir" && find . -type f | wc -l) files"
# What README's configuration names must exist: libvirt's QEMU group (its
# package makes it), the operators' group (README: groupadd tabula-ops &&
# usermod -aG tabula-ops alice), node_exporter's textfile directory.
run useradd --system --user-group --no-create-home libvirt-qemu
run groupadd tabula-ops
run useradd --create-home alice
run usermod -aG tabula-ops alice
run mkdir -p /var/lib/node_exporter/textfile
run mkdir -p /srv/masters
run cp "$P/masters/win11.raw" "$P/masters/debian.raw" /srv/masters/

# README's commands, as written (without sudo), from a checkout's top.
cd "$P/src" || fail "no $P/src"
echo "+ README's Deployment block" >>"$LOG"
sh -ex "$P/steps.sh" >>"$LOG" 2>&1 || fail "README's Deployment block exited with $?: $(tail -n 6 "$LOG" | tr '\n' ' ')"
ok "README's Deployment block ran ($(grep -c . "$P/steps.sh") commands)"
cd /

unit=/usr/local/lib/systemd/system/tabula-restored.service
expect "the unit systemd loaded" "$(systemctl show -p FragmentPath --value tabula-restored)" "$unit"
expect "enabled" "$(systemctl is-enabled tabula-restored)" enabled
expect "active" "$(systemctl is-active tabula-restored)" active
run systemd-analyze verify --man=no "$unit"
[ -z "$OUT" ] || fail "systemd-analyze verify $unit: $OUT"
ok "systemd-analyze verify $unit"
expect "ExecStart" "$(systemctl show -p ExecStart --value tabula-restored | sed -n 's/.*argv\[\]=\([^;]*\) ;.*/\1/p')" \
  "/usr/local/sbin/tabula-restored -c /etc/tabula/tabula.json"
status=$(systemctl show -p StatusText --value tabula-restored)
case $status in
serving*) ok "StatusText: $status" ;;
*) fail "StatusText: \"$status\" (expected serving ...)" ;;
esac
expect "/run/tabula (RuntimeDirectory)" "$(stat -c '%a %U' /run/tabula)" "755 root"
expect "nbd.sock" "$(stat -c '%a %G' /run/tabula/nbd.sock)" "660 libvirt-qemu"
expect "control.sock's group" "$(stat -c '%G' /run/tabula/control.sock)" tabula-ops
prom=/var/lib/node_exporter/textfile/tabula.prom
expect "the metrics file's mode" "$(stat -c %a "$prom")" 644
expect "tabula_up" "$(sed -n 's/^tabula_up //p' "$prom")" 1

# The journal: the daemon's lines with priorities, no program-name prefix.
warn=$(journalctl -u tabula-restored -p warning..warning -o cat | grep 'client vm01' | head -n 1)
[ -n "$warn" ] || fail "no priority-4 line about vm01 (its image has no version) in the journal: $(journalctl -u tabula-restored -o cat | tail -n 5 | tr '\n' ' ')"
ok "journal, priority 4: $warn"
info=$(journalctl -u tabula-restored -p info..info -o cat _COMM=tabula-restored | head -n 1)
[ -n "$info" ] || fail "no priority-6 line of tabula-restored in the journal"
ok "journal, priority 6: $info"
# nbdkit's own errors (it refuses vm01) at priority 3, not as info lines.
err=$(journalctl -u tabula-restored -p err..err -o cat _COMM=nbdkit | grep 'vm01' | head -n 1)
[ -n "$err" ] || fail "no priority-3 line of nbdkit about vm01 in the journal: $(journalctl -u tabula-restored -o verbose _COMM=nbdkit | grep -E 'PRIORITY|MESSAGE' | tail -n 4 | tr '\n' ' ')"
ok "journal, priority 3 (nbdkit): $err"
if journalctl -u tabula-restored -o cat _COMM=tabula-restored | grep -E '^(tabula-restored:|<[0-7]>)'; then
  fail "journal lines carry a program name or a visible <N> prefix"
fi
ok "journal: no program-name prefix, no visible <N>"

echo "== a client served"
run tabulactl image import debian /srv/masters/debian.raw --note initial
served libvirt-qemu
if runuser -u nobody -- nbdinfo --size "nbd+unix:///vm01?socket=/run/tabula/nbd.sock" >>"$LOG" 2>&1; then
  fail "nobody (not in libvirt-qemu) connected to nbd.sock"
fi
ok "nobody (not in libvirt-qemu) is refused on nbd.sock"
run runuser -u alice -- tabulactl --socket /run/tabula/control.sock status
ok "alice (tabula-ops) runs tabulactl status"

echo "== systemctl restart, reload, stop, start"
pid=$(systemctl show -p MainPID --value tabula-restored)
run systemctl restart tabula-restored
pid2=$(systemctl show -p MainPID --value tabula-restored)
[ "$pid2" != "$pid" ] && [ "$pid2" != 0 ] || fail "restart: MainPID $pid -> $pid2"
expect "active after restart" "$(systemctl is-active tabula-restored)" active
run tabulactl status
served libvirt-qemu
run systemctl reload tabula-restored
expect "MainPID after reload" "$(systemctl show -p MainPID --value tabula-restored)" "$pid2"
run tabulactl status
# A broken file: systemctl reload fails (ExecReload is tabulactl reload),
# the daemon keeps serving the running configuration.
run cp /etc/tabula/tabula.json /etc/tabula/tabula.json.good
echo '{ "state_dir": ' >/etc/tabula/tabula.json
if systemctl reload tabula-restored >>"$LOG" 2>&1; then
  fail "systemctl reload accepted a configuration that does not parse"
fi
expect "active after a refused reload" "$(systemctl is-active tabula-restored)" active
run mv /etc/tabula/tabula.json.good /etc/tabula/tabula.json
served libvirt-qemu
ok "systemctl reload of a broken file fails, the daemon goes on serving"
run systemctl stop tabula-restored
[ ! -e /run/tabula ] || fail "/run/tabula is still there after stop: $(ls -la /run/tabula)"
ok "stop: /run/tabula removed"
expect "tabula_up after stop" "$(sed -n 's/^tabula_up //p' "$prom")" 0
run systemctl start tabula-restored
run tabulactl status
served libvirt-qemu
journalctl -b --no-pager >"$P/journal.log" 2>&1
echo "tabula-done ok"
EOF

echo "== the guest: systemd on $base"
truncate -s 512M "$TB_TMP/payload.img"
mke2fs -q -F -t ext4 -d "$payload" "$TB_TMP/payload.img" || tb_fail "mke2fs of the payload"
qemu-img create -q -f qcow2 -b "$base" -F raw "$TB_TMP/root.qcow2" || tb_fail "qemu-img create"
st=0
timeout -k 10 "$timeout" qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic -no-reboot -nic none \
  -pidfile "$TB_TMP/guest.bgpid" \
  -kernel "$TG_BOOT/vmlinuz" -initrd "$TG_BOOT/initramfs.cpio.gz" \
  -append "console=ttyS0 root=/dev/vda panic=-1 quiet tabula.init=/sbin/init" \
  -drive "file=$TB_TMP/root.qcow2,format=qcow2,if=virtio,cache=unsafe" \
  -drive "file=$TB_TMP/payload.img,format=raw,if=virtio,cache=unsafe" \
  </dev/null >"$TB_TMP/guest.log" 2>&1 || st=$?
rm -f "$TB_TMP/guest.bgpid"
tr -d '\r' <"$TB_TMP/guest.log" >"$TB_TMP/console.txt"
for f in guest-side.log journal.log; do
  debugfs -R "dump /$f $TB_TMP/$f" "$TB_TMP/payload.img" >/dev/null 2>&1 || true
done
grep -a '^tabula-\(guest\|ok\|fail\|journal\)' "$TB_TMP/console.txt" || true
[ $st -ne 124 ] && [ $st -ne 137 ] || tb_fail "the guest did not power off within $timeout s"
[ $st -eq 0 ] || tb_fail "qemu exited with $st: $(tail -n 5 "$TB_TMP/console.txt")"
grep -q '^tabula-done ok' "$TB_TMP/console.txt" ||
  tb_fail "the deployment in the guest failed: $(grep -a '^tabula-fail' "$TB_TMP/console.txt" || tail -n 20 "$TB_TMP/console.txt")"
echo "ok: README's Deployment under systemd $(sed -n 's/^tabula-guest .*systemd \([0-9]*\).*/\1/p' "$TB_TMP/console.txt")"
