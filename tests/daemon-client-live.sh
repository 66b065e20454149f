#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# `tabulactl client ID` (human and --json) and `tabulactl clients` show the
# boot session the frontend reports in clients/ID/live.json: its state, its
# connections (peer, since) and the boot marker that opened it.  A frontend
# whose pid is gone shows the state it left plus "(frontend gone)"; a client
# without live.json shows "ended" and "-".  The live.json files here are
# fabricated, as the plugin would write them.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
conf=$TB_TMP/tabula.json
tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
td_config "$conf" "$state" '{
    "pc01": { "image": "demo" }, "pc02": { "image": "demo" }, "pc03": { "image": "demo" }
  }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"

now=$(($(date +%s) * 1000))
# A pid that is certainly gone: a child that exited and was reaped.
sh -c 'exit 0' &
dead=$!
wait $dead
mkdir -p "$state/clients/pc01" "$state/clients/pc02"
cat >"$state/clients/pc01/live.json" <<EOF
{"state": "running", "session": 7, "pid": $$, "updated": $now,
 "connections": [{"frontend": "nbd", "peer": "10.20.0.21", "since": $((now - 5000))},
                 {"frontend": "nbd", "peer": "10.20.0.21", "since": $((now - 1000))}],
 "boot": {"via": "dhcp", "token": null, "marker_seq": 4, "detail": "dhcp PXE mac 52:54:00:00:00:21 address 10.20.0.21"},
 "grace_until": null}
EOF
cat >"$state/clients/pc02/live.json" <<EOF
{"state": "reconnecting", "session": 3, "pid": $dead, "updated": $now, "connections": [],
 "boot": {"via": "token", "token": "0f1e2d3c-aaaa-bbbb-cccc-000011112222", "marker_seq": 0, "detail": null},
 "grace_until": $((now + 60000))}
EOF

echo "== tabulactl client: state, connections, the boot that opened the session"
tctl client pc01 >"$TB_TMP/pc01" || tb_fail "client pc01"
grep -q '^boot session: running, session 7$' "$TB_TMP/pc01" || tb_fail "pc01's boot session: $(cat "$TB_TMP/pc01")"
[ "$(grep -c '^  connection: nbd 10.20.0.21 since ' "$TB_TMP/pc01")" = 2 ] || tb_fail "pc01's two connections: $(cat "$TB_TMP/pc01")"
grep -q '^  opened by:  dhcp (boot marker 4): dhcp PXE mac 52:54:00:00:00:21' "$TB_TMP/pc01" ||
  tb_fail "pc01's boot: $(cat "$TB_TMP/pc01")"
tctl client pc02 >"$TB_TMP/pc02" || tb_fail "client pc02"
grep -q '^boot session: reconnecting (frontend gone), session 3, waits for its boot until ' "$TB_TMP/pc02" ||
  tb_fail "pc02: its frontend is gone: $(cat "$TB_TMP/pc02")"
grep -q '^  opened by:  token (boot id 0f1e2d3c-aaaa-bbbb-cccc-000011112222)$' "$TB_TMP/pc02" ||
  tb_fail "pc02's boot: $(cat "$TB_TMP/pc02")"
tctl client pc03 >"$TB_TMP/pc03" || tb_fail "client pc03"
grep -q '^boot session: ended$' "$TB_TMP/pc03" || tb_fail "pc03 has no live.json: $(cat "$TB_TMP/pc03")"
grep -q '^  connection' "$TB_TMP/pc03" && tb_fail "pc03 has no connections"

echo "== --json"
tctl --json client pc01 | jq -e '.live.state == "running" and .live.session == 7 and
  .live.frontend_gone == false and (.live.connections | length) == 2 and
  .live.connections[0].peer == "10.20.0.21" and .live.boot.via == "dhcp" and .live.boot.marker_seq == 4' \
  >/dev/null || tb_fail "client pc01 --json: $(tctl --json client pc01 | jq .live)"
tctl --json client pc02 | jq -e '.live.state == "reconnecting" and .live.frontend_gone == true and
  .live.grace_until > 0' >/dev/null || tb_fail "client pc02 --json: $(tctl --json client pc02 | jq .live)"
tctl --json client pc03 | jq -e '.live.state == "ended" and .live.session == null and .live.connections == []' \
  >/dev/null || tb_fail "client pc03 --json: $(tctl --json client pc03 | jq .live)"

echo "== tabulactl clients"
tctl clients >"$TB_TMP/clients" || tb_fail "clients"
grep -Eq '^pc01 .* running +10\.20\.0\.21,10\.20\.0\.21 +dhcp #4$' "$TB_TMP/clients" || tb_fail "clients, pc01: $(cat "$TB_TMP/clients")"
grep -Eq '^pc02 .* reconnecting \(frontend gone\) +- +token$' "$TB_TMP/clients" || tb_fail "clients, pc02: $(cat "$TB_TMP/clients")"
grep -Eq '^pc03 .* ended +- +-$' "$TB_TMP/clients" || tb_fail "clients, pc03: $(cat "$TB_TMP/clients")"
tctl --json clients | jq -e '[.clients[].live.state] == ["running", "reconnecting", "ended"]' >/dev/null ||
  tb_fail "clients --json: $(tctl --json clients | jq -c '[.clients[].live]')"
td_stop
echo PASS
