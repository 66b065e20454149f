#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# What is happening now: a running session's figures (dirty bytes, bytes read
# and written, last I/O, its connection's peer) reach tabulactl client/clients
# while it runs (live.json, refreshed every few seconds), not only when it ends;
# its quota is shown with its use.  After the session ends the figures come
# from its record.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require jq

M=$((1024 * 1024))
state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((16 * M)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "quota": "8M" }
  }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"
sock=$state/nbd.sock

echo "== a running session with 5 MiB dirty"
mkfifo "$TB_TMP/h.fifo"
"$TB_IO" -s "$sock" -e pc01 write:0:$((5 * M)):7 read:0:$M:7 hold <"$TB_TMP/h.fifo" \
  >"$TB_TMP/h.out" 2>&1 &
echo $! >"$TB_TMP/h.iopid"
sleep 2147483647 >"$TB_TMP/h.fifo" &
echo $! >"$TB_TMP/h.holdpid"
i=0
until tctl --json client pc01 >"$TB_TMP/c.json" 2>/dev/null &&
  jq -e ".dirty_bytes == $((5 * M))" "$TB_TMP/c.json" >/dev/null; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "the running session's dirty bytes never showed: $(cat "$TB_TMP/c.json")"
  sleep 0.1
done
jq -e ".live.state == \"running\" and .live.figures.bytes_written == $((5 * M)) and
  .live.figures.bytes_read == $M and .live.figures.last_io > 0 and .quota_bytes == $((8 * M)) and
  (.live.connections | length == 1) and (.live.connections[0].peer | test(\"unix\"))" \
  "$TB_TMP/c.json" >/dev/null || tb_fail "live figures: $(cat "$TB_TMP/c.json")"
tctl clients >"$TB_TMP/clients.out" || tb_fail "clients"
grep -E '^pc01 .*5\.0 MiB' "$TB_TMP/clients.out" >/dev/null ||
  tb_fail "tabulactl clients must show 5.0 MiB dirty for the running pc01: $(cat "$TB_TMP/clients.out")"
tctl client pc01 >"$TB_TMP/client.out" || tb_fail "client"
grep -q "5.0 MiB" "$TB_TMP/client.out" || tb_fail "tabulactl client pc01: $(cat "$TB_TMP/client.out")"
grep -q "8.0 MiB" "$TB_TMP/client.out" || tb_fail "tabulactl client pc01 must show its quota: $(cat "$TB_TMP/client.out")"
tb_release h

echo "== after the session: the record's figures"
tb_wait_idle "$state" pc01
tctl --json client pc01 | jq -e ".dirty_bytes == $((5 * M)) and .live.state == \"ended\"" >/dev/null ||
  tb_fail "after the session: $(tctl --json client pc01)"
td_stop
tb_check_logs
