#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# PXE through dnsmasq, without a network (pxe.dnsmasq "none": the daemon
# writes everything and runs no dnsmasq):
#  - `tabulactl pxe` prints the dnsmasq configuration of a 3-client lab: no DNS,
#    a static lease per MAC (hosts file), the iPXE chain and a script per
#    client that boots its kernel and initrd with the NBD command line (and
#    a client's further disks: tabula.disks=games,data);
#  - dnsmasq's events through STATE/pxe/event.sh (tabulactl pxe-event): a PXE
#    or iPXE DHCP request is a boot marker (clients/ID/boot seq grows), a
#    renewal by the running system is not, the TFTP fetch of the client's
#    script by its address is, of another file or by another address is not;
#  - an unknown MAC is recorded (first/last seen, count, one pxe-unknown event
#    per 10 minutes), listed by `tabulactl clients --unknown`, and registered
#    with `tabulactl register MAC ID --write`;
#  - pxe.dnsmasq pointing at a missing program: the daemon says so by name and
#    every client is served over NBD as before.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

M=$((1024 * 1024))
state=$TB_TMP/state
conf=$TB_TMP/tabula.json
mkdir -p "$TB_TMP/boot"
echo kernel >"$TB_TMP/boot/vmlinuz"
echo initrd >"$TB_TMP/boot/initrd.img"
echo lab-kernel >"$TB_TMP/boot/vmlinuz-lab"
tb_make_file "$TB_TMP/v1.img" $M 1

pxe_config()
{
  td_config "$conf" "$state" '{
    "pc21": { "group": "lab", "mac": "52:54:00:00:00:21", "address": "10.20.0.21" },
    "pc22": { "group": "lab", "mac": "52:54:00:00:00:22", "address": "10.20.0.22",
              "boot": { "cmdline": "console=ttyS0 single" } },
    "pc23": { "image": "demo", "mac": "52:54:00:00:00:23", "address": "10.20.0.23",
              "disks": { "games": { "image": "demo", "policy": "persist" }, "data": { "image": "demo" } } },
    "vm01": { "image": "demo" }
  }' "\"groups\": { \"lab\": { \"image\": \"demo\", \"boot\": { \"kernel\": \"$TB_TMP/boot/vmlinuz-lab\" } } },
  \"pxe\": { \"interface\": \"tbbr0\", \"server\": \"10.20.0.1\", \"network\": \"10.20.0.0/24\",
    \"unknown_range\": \"10.20.0.200,10.20.0.250\", \"kernel\": \"$TB_TMP/boot/vmlinuz\",
    \"initrd\": \"$TB_TMP/boot/initrd.img\", \"cmdline\": \"quiet\", \"dnsmasq\": \"$1\" }"
}
pxe_config none
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"

echo "== tabulactl pxe: the dnsmasq configuration"
tctl pxe >"$TB_TMP/dnsmasq.conf" || tb_fail "tabulactl pxe failed"
cmp -s "$TB_TMP/dnsmasq.conf" "$state/pxe/dnsmasq.conf" ||
  tb_fail "tabulactl pxe must print STATE/pxe/dnsmasq.conf"
for line in "port=0" "interface=tbbr0" "bind-interfaces" "enable-tftp" \
  "dhcp-hostsfile=$state/pxe/hosts" "tftp-root=$state/pxe/tftp" \
  "dhcp-range=set:tabula,10.20.0.0,static,255.255.255.0,12h" \
  "dhcp-range=set:unknown,10.20.0.200,10.20.0.250,255.255.255.0,10m" \
  "dhcp-userclass=set:ipxe,iPXE" "dhcp-match=set:efi64,option:client-arch,7" \
  "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.20.0.1" \
  "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,10.20.0.1" \
  "dhcp-boot=tag:ipxe,tag:!known,unknown.ipxe,,10.20.0.1" \
  "dhcp-mac=set:tb-pc22,52:54:00:00:00:22" "dhcp-boot=tag:ipxe,tag:tb-pc22,pc22.ipxe,,10.20.0.1" \
  "dhcp-script=$state/pxe/event.sh"; do
  grep -qxF -- "$line" "$TB_TMP/dnsmasq.conf" || tb_fail "tabulactl pxe lacks \"$line\": $(cat "$TB_TMP/dnsmasq.conf")"
done
grep -q "vm01" "$TB_TMP/dnsmasq.conf" && tb_fail "vm01 has no mac: it must not be in dnsmasq.conf"
tctl pxe --hosts | grep -v '^#' >"$TB_TMP/hosts"
printf '%s\n' 52:54:00:00:00:21,10.20.0.21,pc21 52:54:00:00:00:22,10.20.0.22,pc22 \
  52:54:00:00:00:23,10.20.0.23,pc23 | cmp -s - "$TB_TMP/hosts" ||
  tb_fail "the static leases: $(cat "$TB_TMP/hosts")"

echo "== the TFTP tree: a script per client, its kernel and initrd"
tftp=$state/pxe/tftp
grep -qxF "kernel boot/pc22/linux initrd=initrd ip=dhcp root=/dev/nbd0 tabula.nbd=10.20.0.1:10809:pc22 console=ttyS0 single" \
  "$tftp/pc22.ipxe" || tb_fail "pc22.ipxe: $(cat "$tftp/pc22.ipxe")"
# pc23's further disks, in configuration order: /dev/nbd1, /dev/nbd2 in its initramfs.
grep -qxF "kernel boot/pc23/linux initrd=initrd ip=dhcp root=/dev/nbd0 tabula.nbd=10.20.0.1:10809:pc23 tabula.disks=games,data quiet" \
  "$tftp/pc23.ipxe" || tb_fail "pc23.ipxe: $(cat "$tftp/pc23.ipxe")"
grep -qxF "initrd --name initrd boot/pc21/initrd" "$tftp/pc21.ipxe" || tb_fail "pc21.ipxe: $(cat "$tftp/pc21.ipxe")"
[ "$(cat "$tftp/boot/pc21/linux")" = lab-kernel ] || tb_fail "pc21 boots the group's kernel"
[ "$(cat "$tftp/boot/pc23/linux")" = kernel ] || tb_fail "pc23 boots pxe.kernel"
[ "$(cat "$tftp/boot/pc23/initrd")" = initrd ] || tb_fail "pc23 boots pxe.initrd"
grep -q "is not registered" "$tftp/unknown.ipxe" || tb_fail "unknown.ipxe must say how to register"
[ -e "$tftp/vm01.ipxe" ] && tb_fail "vm01 has no mac: no script"
if [ -r /usr/lib/ipxe/undionly.kpxe ]; then
  cmp -s "$tftp/undionly.kpxe" /usr/lib/ipxe/undionly.kpxe || tb_fail "undionly.kpxe is Debian's"
fi

seq_of()
{
  if [ -f "$state/clients/$1/boot" ]; then jq -r .seq "$state/clients/$1/boot"; else echo 0; fi
}
ev()
{
  # ev VENDOR USERCLASS ARGS...: the event script as dnsmasq runs it
  _v=$1
  _u=$2
  shift 2
  (
    unset DNSMASQ_VENDOR_CLASS DNSMASQ_USER_CLASS0
    [ -z "$_v" ] || export DNSMASQ_VENDOR_CLASS="$_v"
    [ -z "$_u" ] || export DNSMASQ_USER_CLASS0="$_u"
    DNSMASQ_TAGS="tabula tbbr0" exec "$state/pxe/event.sh" "$@"
  ) || tb_fail "event.sh $*: exit $?"
}

echo "== a PXE DHCP request is a boot, a renewal is not"
[ "$(seq_of pc21)" = 0 ] || tb_fail "no boot seen yet"
ev PXEClient:Arch:00000:UNDI:002001 "" add 52:54:00:00:00:21 10.20.0.21
[ "$(seq_of pc21)" = 1 ] || tb_fail "the PXE ROM's request must mark a boot: $(seq_of pc21)"
jq -e '.via == "dhcp"' "$state/clients/pc21/boot" >/dev/null || tb_fail "via dhcp: $(cat "$state/clients/pc21/boot")"
ev "udhcp 1.35.0" "" old 52:54:00:00:00:21 10.20.0.21 pc21
ev "" "" old 52:54:00:00:00:21 10.20.0.21
ev "" "" del 52:54:00:00:00:21 10.20.0.21
[ "$(seq_of pc21)" = 1 ] || tb_fail "renewals and releases are not boots: seq $(seq_of pc21)"
ev PXEClient:Arch:00000:UNDI:002001 iPXE old 52:54:00:00:00:21 10.20.0.21
[ "$(seq_of pc21)" = 2 ] || tb_fail "iPXE's request (user class iPXE) is a boot"
ev "" iPXE old 52:54:00:00:00:21 10.20.0.21
[ "$(seq_of pc21)" = 3 ] || tb_fail "user class iPXE alone is a boot"
tb_event "$state" '.type == "boot-seen" and .client == "pc21" and .via == "dhcp" and .seq == 3' "boot-seen event"
[ "$(seq_of pc22)" = 0 ] || tb_fail "pc21's boots are not pc22's"

echo "== TFTP: the client's own script, by its address, is a boot"
ev "" "" tftp 812 10.20.0.22 "$tftp/boot/pc22/linux"
[ "$(seq_of pc22)" = 0 ] || tb_fail "the kernel's fetch is not a (second) boot"
ev "" "" tftp 300 10.20.0.21 "$tftp/pc22.ipxe"
[ "$(seq_of pc22)" = 0 ] || tb_fail "pc21 fetching pc22's script is not pc22's boot"
[ "$(seq_of pc21)" = 3 ] || tb_fail "nor pc21's"
ev "" "" tftp 300 10.20.0.22 "$tftp/pc22.ipxe"
[ "$(seq_of pc22)" = 1 ] || tb_fail "pc22 fetching its script is a boot: seq $(seq_of pc22)"
jq -e '.via == "tftp"' "$state/clients/pc22/boot" >/dev/null || tb_fail "via tftp"

echo "== an unknown MAC is recorded, listed, and registered"
ev PXEClient:Arch:00007:UNDI:003016 "" add 52:54:00:AA:00:01 10.20.0.200
ev PXEClient:Arch:00007:UNDI:003016 iPXE old 52:54:00:aa:00:01 10.20.0.200
jq -e '."52:54:00:aa:00:01" | .count == 2 and .address == "10.20.0.200" and .pxe == true' \
  "$state/pxe/unknown.json" >/dev/null || tb_fail "unknown.json: $(cat "$state/pxe/unknown.json")"
n=$(jq -c 'select(.type == "pxe-unknown")' "$state/events.jsonl" | wc -l)
[ "$n" = 1 ] || tb_fail "pxe-unknown is rate-limited per MAC: $n events"
tb_event "$state" '.type == "pxe-unknown" and .mac == "52:54:00:aa:00:01" and (.vendor_class | startswith("PXEClient"))' "pxe-unknown"
tctl clients --unknown >"$TB_TMP/unknown" || tb_fail "clients --unknown"
grep -q '^52:54:00:aa:00:01 *10.20.0.200 *yes *PXEClient:Arch:00007' "$TB_TMP/unknown" ||
  tb_fail "clients --unknown: $(cat "$TB_TMP/unknown")"
tctl --json clients --unknown | jq -e '.unknown[0].count == 2' >/dev/null || tb_fail "clients --unknown --json"
td_expect_fail "a bad MAC" "not a MAC" tctl pxe-event add 52:54:00:aa:00 10.20.0.200
td_expect_fail "a bad address" "not an IPv4 address" tctl pxe-event add 52:54:00:aa:00:01 10.20.0.x

tctl register 52:54:00:aa:00:01 pc24 --group lab >"$TB_TMP/reg" || tb_fail "register"
grep -qF '"pc24": {"group": "lab", "mac": "52:54:00:aa:00:01", "address": "10.20.0.2"}' "$TB_TMP/reg" ||
  tb_fail "register must print the entry with the first free address: $(cat "$TB_TMP/reg")"
td_expect_fail "a registered MAC" 'already client "pc23"' tctl register 52:54:00:00:00:23 pc99
td_expect_fail "an address outside" "outside pxe.network" tctl register 52:54:00:aa:00:09 pc99 --group lab --address 10.30.0.9
tctl register 52:54:00:aa:00:01 pc24 --group lab --write >"$TB_TMP/reg" || tb_fail "register --write: $(cat "$TB_TMP/reg")"
jq -e '(.clients | keys_unsorted) == ["pc21", "pc22", "pc23", "vm01", "pc24"] and .pxe.interface == "tbbr0"' "$conf" >/dev/null ||
  tb_fail "register --write keeps the file's order and adds pc24 last: $(cat "$conf")"
tctl pxe --hosts | grep -qxF 52:54:00:aa:00:01,10.20.0.2,pc24 || tb_fail "pc24's lease after the reload"
[ -f "$tftp/pc24.ipxe" ] || tb_fail "pc24's script after the reload"
jq -e 'has("52:54:00:aa:00:01") | not' "$state/pxe/unknown.json" >/dev/null || tb_fail "a registered MAC leaves the unknown list"

echo "== a client removed: its script and links go"
pxe_config none
tctl reload >/dev/null || tb_fail "reload"
[ -e "$tftp/pc24.ipxe" ] || [ -e "$tftp/boot/pc24" ] && tb_fail "pc24's files must go with it"
[ -f "$tftp/pc23.ipxe" ] || tb_fail "pc23 stays"
td_stop

echo "== pxe.dnsmasq missing: a clear error, NBD serves on"
pxe_config /nonexistent/dnsmasq
td_start "$conf"
td_wait '.pxe.error | test("pxe.dnsmasq \"/nonexistent/dnsmasq\": no such program")' "the error names pxe.dnsmasq"
tctl status >"$TB_TMP/status"
grep -q '^pxe: *dnsmasq restarting' "$TB_TMP/status" && grep -q 'no such program' "$TB_TMP/status" ||
  tb_fail "status shows it: $(cat "$TB_TMP/status")"
tb_event "$state" '.type == "pxe-error" and (.message | test("/nonexistent/dnsmasq"))' "pxe-error event"
"$TB_IO" -s "$state/nbd.sock" -e pc21 write:0:4096:5 read:0:4096:5 || tb_fail "pc21 must be served over NBD"
"$TB_IO" -s "$state/nbd.sock" -e vm01 read:0:4096:1 || tb_fail "vm01 must be served over NBD"
grep -q "no such program" "$TB_TMP/daemon.log" || tb_fail "the daemon's log names the problem"
td_stop
tb_check_logs
echo PASS
