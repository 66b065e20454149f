#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The daemon runs the real dnsmasq, inside network namespaces this test
# creates: the appliance's namespace has tbbr0 (10.20.0.1/24), a PC's
# namespace the other end of a veth pair with pc21's MAC.  Then:
#  - dnsmasq answers on the appliance's side: DHCP (udp 67) and TFTP (udp 69);
#  - busybox udhcpc with a PXE vendor class gets pc21's static address, and
#    dnsmasq's dhcp-script makes it a boot marker (clients/pc21/boot);
#  - a DHCP request of the running system (udhcpc's own vendor class) is not
#    a boot;
#  - a TFTP fetch (curl tftp://) of pc21.ipxe gets the script with pc21's
#    NBD command line, and is a boot marker too;
#  - a PC whose MAC is not configured gets a lease from pxe.unknown_range and
#    is listed by `tabulactl clients --unknown`;
#  - kill -9 of dnsmasq: the daemon restarts it (dnsmasq-exit, dnsmasq-restart).
# Skips without root, ip netns, dnsmasq, busybox or curl.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
[ "$(id -u)" = 0 ] || tb_skip "needs root (network namespaces, DHCP)"
tb_require ip busybox curl
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$DNSMASQ" ] || tb_skip "dnsmasq is not installed (Debian's dnsmasq-base)"
tb_setup

NS_S=tbpxe-s-$$
NS_C=tbpxe-c-$$
ip netns add "$NS_S" 2>/dev/null || tb_skip "cannot create a network namespace"
netns_cleanup()
{
  ip netns del "$NS_S" 2>/dev/null
  ip netns del "$NS_C" 2>/dev/null
}
trap '_st=$?; netns_cleanup; (exit $_st); tb_cleanup' EXIT
ip netns add "$NS_C" || tb_fail "ip netns add $NS_C"
ip link add tbbr0 netns "$NS_S" type veth peer name tbpc0 netns "$NS_C" || tb_fail "veth pair"
ip -n "$NS_S" addr add 10.20.0.1/24 dev tbbr0
ip -n "$NS_S" link set tbbr0 up
ip -n "$NS_S" link set lo up
ip -n "$NS_C" link set tbpc0 address 52:54:00:00:00:21
ip -n "$NS_C" link set tbpc0 up
ip -n "$NS_C" link set lo up

M=$((1024 * 1024))
state=$TB_TMP/state
conf=$TB_TMP/tabula.json
mkdir -p "$TB_TMP/boot"
echo kernel >"$TB_TMP/boot/vmlinuz"
echo initrd >"$TB_TMP/boot/initrd.img"
tb_make_file "$TB_TMP/v1.img" $M 1
td_config "$conf" "$state" '{
    "pc21": { "image": "demo", "mac": "52:54:00:00:00:21", "address": "10.20.0.21" },
    "pc22": { "image": "demo", "mac": "52:54:00:00:00:22", "address": "10.20.0.22" }
  }' "\"pxe\": { \"interface\": \"tbbr0\", \"server\": \"10.20.0.1\", \"network\": \"10.20.0.0/24\",
    \"unknown_range\": \"10.20.0.200,10.20.0.210\", \"kernel\": \"$TB_TMP/boot/vmlinuz\",
    \"initrd\": \"$TB_TMP/boot/initrd.img\", \"dnsmasq\": \"$DNSMASQ\" }"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
# The daemon (and so dnsmasq) in the appliance's namespace.
cat >"$TB_TMP/daemon-in-ns" <<EOF
#!/bin/sh
exec ip netns exec $NS_S $TD_DAEMON "\$@"
EOF
chmod +x "$TB_TMP/daemon-in-ns"
TD_DAEMON=$TB_TMP/daemon-in-ns
td_start "$conf"
td_wait '.pxe.state == "running"' "dnsmasq must run: $(cat "$state/pxe/dnsmasq.log" 2>/dev/null)"

echo "== dnsmasq listens on udp 67 and 69 in the appliance's namespace"
i=0
until ip netns exec "$NS_S" ss -ulnp 2>/dev/null | grep dnsmasq | grep -q ':69 ' &&
  ip netns exec "$NS_S" ss -ulnp | grep dnsmasq | grep -q ':67 '; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "dnsmasq does not listen on 67 and 69: $(ip netns exec "$NS_S" ss -ulnp) $(cat "$state/pxe/dnsmasq.log")"
  sleep 0.1
done

seq_of()
{
  if [ -f "$state/clients/$1/boot" ]; then jq -r .seq "$state/clients/$1/boot"; else echo 0; fi
}
# wait_seq ID N WHAT: until client ID's boot marker reaches N (dnsmasq runs
# its script after answering).
wait_seq()
{
  _i=0
  until [ "$(seq_of "$1")" -ge "$2" ]; do
    _i=$((_i + 1))
    [ $_i -lt 100 ] || tb_fail "$3: $1's boot marker is $(seq_of "$1"), expected $2: $(tail -n 5 "$state/pxe/dnsmasq.log")"
    sleep 0.1
  done
  [ "$(seq_of "$1")" = "$2" ] || tb_fail "$3: $1's boot marker is $(seq_of "$1"), expected exactly $2"
}
dhcp()
{
  # dhcp VENDOR-CLASS: one DHCP exchange from the PC's namespace
  ip netns exec "$NS_C" busybox udhcpc -i tbpc0 -n -q -f -t 5 -T 1 -V "$1" -s /bin/true \
    >"$TB_TMP/udhcpc.out" 2>&1 || tb_fail "udhcpc -V $1: no lease: $(cat "$TB_TMP/udhcpc.out")"
}

echo "== a PXE DHCP request gets pc21's address and is a boot"
dhcp PXEClient:Arch:00000:UNDI:002001
grep -q "10.20.0.21" "$TB_TMP/udhcpc.out" || tb_fail "pc21's static lease: $(cat "$TB_TMP/udhcpc.out")"
wait_seq pc21 1 "the PXE request"
tb_event "$state" '.type == "boot-seen" and .client == "pc21" and .via == "dhcp"' "boot-seen"

echo "== the running system's DHCP is not a boot"
sleep 1 # another second: dnsmasq reports the renewal (script-on-renewal)
dhcp "udhcp 1.35.0"
# dnsmasq runs its scripts in order: once the next PXE request is marked,
# the renewal before it was seen (and it must not have marked a boot).
dhcp PXEClient:Arch:00000:UNDI:002001
wait_seq pc21 2 "a renewal, then a PXE request"

echo "== TFTP: pc21 fetches its iPXE script"
ip netns exec "$NS_C" ip addr add 10.20.0.21/24 dev tbpc0
ip netns exec "$NS_C" curl -sS --max-time 10 -o "$TB_TMP/pc21.ipxe" tftp://10.20.0.1/pc21.ipxe ||
  tb_fail "tftp fetch of pc21.ipxe: $(tail -n 5 "$state/pxe/dnsmasq.log")"
grep -q "tabula.nbd=10.20.0.1:10809:pc21" "$TB_TMP/pc21.ipxe" || tb_fail "pc21.ipxe: $(cat "$TB_TMP/pc21.ipxe")"
wait_seq pc21 3 "the TFTP fetch of the script"
jq -e '.via == "tftp"' "$state/clients/pc21/boot" >/dev/null || tb_fail "via tftp: $(cat "$state/clients/pc21/boot")"
ip netns exec "$NS_C" curl -sS --max-time 10 -o "$TB_TMP/linux" tftp://10.20.0.1/boot/pc21/linux ||
  tb_fail "tftp fetch of pc21's kernel (a symlink out of the TFTP root)"
[ "$(cat "$TB_TMP/linux")" = kernel ] || tb_fail "pc21's kernel over TFTP"
ip netns exec "$NS_C" ip addr del 10.20.0.21/24 dev tbpc0

echo "== an unknown PC gets a lease from unknown_range and is listed"
ip -n "$NS_C" link set tbpc0 address 52:54:00:99:00:01
dhcp PXEClient:Arch:00000:UNDI:002001
grep -q "10.20.0.2[01][0-9]" "$TB_TMP/udhcpc.out" || tb_fail "a lease from unknown_range: $(cat "$TB_TMP/udhcpc.out")"
i=0
until tctl clients --unknown 2>/dev/null | grep -q '^52:54:00:99:00:01 .* yes '; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "clients --unknown: $(tctl clients --unknown)"
  sleep 0.1
done
[ "$(seq_of pc22)" = 0 ] || tb_fail "nobody else booted"

echo "== kill -9 of dnsmasq: restarted"
pid=$(tctl --json status | jq -r .pxe.pid)
kill -9 "$pid"
td_wait ".pxe.state == \"running\" and .pxe.pid != $pid" "dnsmasq must be restarted"
tb_event "$state" '.type == "dnsmasq-exit" and (.status | test("signal 9"))' "dnsmasq-exit"
tb_event "$state" '.type == "dnsmasq-restart"' "dnsmasq-restart"

echo "== dnsmasq cannot start (no such interface): a clear error, NBD serves on"
jq '.pxe.interface = "tbnope0"' "$conf" >"$conf.new" && mv "$conf.new" "$conf"
tctl reload >/dev/null || tb_fail "reload"
td_wait '.pxe.error | test("pxe.interface does not exist")' "the error names pxe.interface"
tb_event "$state" '.type == "dnsmasq-exit" and (.message | test("unknown interface tbnope0"))' "dnsmasq-exit names the interface"
"$TB_IO" -s "$state/nbd.sock" -e pc21 write:0:4096:5 read:0:4096:5 || tb_fail "pc21 must be served over NBD"

echo "== port 67 taken by another server: a clear error; free again: dnsmasq runs"
ip netns exec "$NS_S" python3 -c 'import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 67))
print("bound", flush=True)
time.sleep(120)' >"$TB_TMP/port67.out" 2>&1 &
echo $! >"$TB_TMP/port67.bgpid"
i=0
until grep -q bound "$TB_TMP/port67.out"; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "cannot take port 67: $(cat "$TB_TMP/port67.out")"
  sleep 0.1
done
jq '.pxe.interface = "tbbr0"' "$conf" >"$conf.new" && mv "$conf.new" "$conf"
tctl reload >/dev/null || tb_fail "reload"
td_wait '.pxe.error | test("Address already in use.*another DHCP or TFTP server")' "the error says port 67 is taken"
kill "$(cat "$TB_TMP/port67.bgpid")"
wait "$(cat "$TB_TMP/port67.bgpid")" 2>/dev/null || true
rm -f "$TB_TMP/port67.bgpid"
i=0
until ip netns exec "$NS_S" ss -ulnp | grep dnsmasq | grep -q ':67 '; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "dnsmasq must be restarted once port 67 is free: $(tctl --json status | jq .pxe)"
  sleep 0.1
done
td_stop
ip netns exec "$NS_S" ss -ulnp | grep -q dnsmasq && tb_fail "dnsmasq must stop with the daemon"
tb_check_logs
echo PASS
