#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Who may reach what.
#  - A client's export is served only to peers in its "allow" list, over TCP
#    (IPv4 and IPv6 loopback) and the unix socket; a refusal is logged with the
#    peer and recorded as a "refused" event; so is a locked-down client
#    ("locked down") and one another process serves ("busy").
#  - The empty export name finds the client whose "address" is the peer's.
#  - Admin exports (ID@live, ID@overlay, ID@session/N, IMAGE@N) and the export
#    list exist only for admin peers: never over TCP without admin networks,
#    never for a unix peer whose uid is not an admin uid.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq setpriv

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" 1048576 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{
    "unixonly": { "image": "demo", "allow": ["unix"] },
    "lo4": { "image": "demo", "policy": "persist", "allow": ["127.0.0.1/32"], "address": "127.0.0.1" },
    "lan": { "image": "demo", "allow": ["10.0.0.0/8", "unix"] },
    "dflt": { "image": "demo" }
  }'
port=$(tb_free_port)
tb_start_tcp tcp "$TB_TMP/tabula.json" 127.0.0.1 "$port"
T="-t 127.0.0.1:$port"

# refused SERVER-ARGS EXPORT LOG-REGEX WHAT
refused()
{
  st=0
  "$TB_IO" $1 -e "$2" read:0:1:1 >"$TB_TMP/client.out" 2>&1 || st=$?
  [ $st -eq 2 ] || tb_fail "$4: export '$2' was served (exit $st)"
  [ -z "$3" ] || tb_assert_log "$5" "$3" "$4"
  echo "ok: refused: $4"
}

echo "== TCP 127.0.0.1"
refused "$T" unixonly 'client "unixonly" refused to peer 127\.0\.0\.1: not in its "allow" list' \
  "unixonly over TCP" tcp
refused "$T" lan 'client "lan" refused to peer 127\.0\.0\.1' "lan (10/8) from 127.0.0.1" tcp
"$TB_IO" $T -e lo4 write:0:4096:2 read:0:4096:2 || tb_fail "lo4 must be served to 127.0.0.1"
"$TB_IO" $T -e dflt read:0:4096:1 || tb_fail "the default allow list must include loopback"
"$TB_IO" $T -e "" read:0:4096:2 || tb_fail "the empty name must find lo4 by its address"
refused "$T" lo4@live 'unknown client "lo4@live"' "admin export over TCP" tcp
refused "$T" demo@1 'unknown client "demo@1"' "image export over TCP" tcp
if "$TB_IO" $T --list >"$TB_TMP/list.out" 2>&1; then
  tb_fail "the export list was given over TCP: $(cat "$TB_TMP/list.out")"
fi
tb_assert_log tcp 'listing exports is only for admin peers' "listing exports over TCP"
tb_event "$state" '.type == "refused" and .client == "unixonly" and .peer == "127.0.0.1"' \
  "refusal of unixonly"
# A locked-down client and a busy one (another process holds its lock): the
# refused event says which (lib/live.h's reason, not the message text).
tb_wait_idle "$state" dflt
printf '{"lockdown": "test"}' >"$state/clients/dflt/mailbox.json"
refused "$T" dflt 'client dflt is locked down \(test\)' "locked-down dflt from 127.0.0.1" tcp
tb_event "$state" '.type == "refused" and .client == "dflt" and .reason == "locked down"' \
  "refusal of locked-down dflt"
rm "$state/clients/dflt/mailbox.json"
flock -o "$state/clients/dflt/lock" sleep 60 &
echo $! >"$TB_TMP/busy.bgpid"
i=0
while flock -n "$state/clients/dflt/lock" true; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "flock did not take dflt's lock"
  sleep 0.1
done
refused "$T" dflt 'client dflt is busy' "busy dflt from 127.0.0.1" tcp
tb_event "$state" '.type == "refused" and .client == "dflt" and .reason == "busy"' \
  "refusal of busy dflt"
kill "$(cat "$TB_TMP/busy.bgpid")"
tb_stop tcp

if python3 -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' 2>/dev/null; then
  echo "== TCP ::1"
  port=$(tb_free_port)
  tb_start_tcp tcp6 "$TB_TMP/tabula.json" ::1 "$port"
  refused "-t ::1:$port" lo4 'client "lo4" refused to peer ::1' "lo4 (127.0.0.1/32) from ::1" tcp6
  refused "-t ::1:$port" "" 'no client is configured for address ::1' "empty name from ::1" tcp6
  "$TB_IO" -t "::1:$port" -e dflt read:0:4096:1 || tb_fail "default allow list must include ::1"
  tb_stop tcp6
fi

echo "== unix socket, root (an admin uid) and nobody (not one)"
tb_start s "$TB_TMP/tabula.json"
chmod 755 "$TB_TMP" # so that uid 65534 may connect to the socket
chmod 666 "$TB_TMP/s.sock"
refused "-s $TB_TMP/s.sock" lo4 'client "lo4" refused to peer unix socket' "lo4 over unix" s
tb_io s -e unixonly read:0:4096:1 || tb_fail "unixonly over the unix socket"
tb_io s -e lo4@live read:0:4096:2 || tb_fail "root must read admin export lo4@live"
tb_io s -e demo@1 read:0:4096:1 || tb_fail "root must read image export demo@1"
tb_io s --list >"$TB_TMP/list.out" 2>&1 ||
  tb_fail "root must be able to list exports: $(cat "$TB_TMP/list.out")"
for e in unixonly lo4 lo4@live lo4@overlay demo@1; do
  grep -qx "$e" "$TB_TMP/list.out" || tb_fail "export list lacks $e: $(cat "$TB_TMP/list.out")"
done
nobody()
{
  setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
}
nobody "$TB_IO" -s "$TB_TMP/s.sock" -e unixonly read:0:4096:1 ||
  tb_fail "a non-admin unix peer must still reach a client that allows unix"
st=0
nobody "$TB_IO" -s "$TB_TMP/s.sock" -e lo4@live read:0:1:2 >/dev/null 2>&1 || st=$?
[ $st -eq 2 ] || tb_fail "uid 65534 read admin export lo4@live (exit $st)"
st=0
nobody "$TB_IO" -s "$TB_TMP/s.sock" -e demo@1 read:0:1:1 >/dev/null 2>&1 || st=$?
[ $st -eq 2 ] || tb_fail "uid 65534 read image export demo@1 (exit $st)"
if nobody "$TB_IO" -s "$TB_TMP/s.sock" --list >/dev/null 2>&1; then
  tb_fail "uid 65534 was given the export list"
fi
echo "ok: admin exports and the list refused to uid 65534"
tb_stop s
tb_check_logs
