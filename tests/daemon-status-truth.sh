#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# What tabulactl and the metrics say is what is true now (issue 18, section 3):
#   - a reimage is pending until it is applied, not forever;
#   - "(pinned)" is shown with the next version it decides, not the base;
#   - a session left active by a frontend that died is "interrupted";
#   - human output shows local times (--json keeps UTC);
#   - a broken or missing configuration is exit 1 with what is wrong, not
#     "daemon not reachable" (3); under --json errors are JSON on stdout;
#   - image publish finds the state with --state like every command;
#   - after the daemon stops the metrics say tabula_up 0, with a timestamp;
#   - tabulactl client shows the I/O limits.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

M=$((4 * 1048576))
state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $M 1 $M
tb_make_file "$TB_TMP/o1.img" $M 2 $M
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc01": { "image": "demo" },
    "pc02": { "image": "demo", "policy": "persist", "limits": { "write": "20M", "read_iops": 100 } },
    "pc03": { "image": "demo", "reconnect_grace": "60s" }
  }' "\"metrics\": { \"file\": \"$TB_TMP/tabula.prom\", \"interval\": \"1s\" }"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import demo"
tctl image import other "$TB_TMP/o1.img" >/dev/null || tb_fail "import other"
td_start "$conf"
sock=$state/nbd.sock
io() { "$TB_IO" -s "$sock" "$@"; }

echo "== a reimage is pending until applied"
tctl reimage pc01 other >/dev/null || tb_fail "reimage"
tctl --json client pc01 | jq -e '.pending | index("image other")' >/dev/null ||
  tb_fail "reimage not pending: $(tctl --json client pc01)"
io -e pc01 read:0:4096:2 rewrite:0:4096 || tb_fail "pc01 does not boot other"
tb_wait_idle "$state" pc01
tctl --json client pc01 | jq -e '.image == "other" and (.pending | length == 0)' >/dev/null ||
  tb_fail "the applied reimage is still pending: $(tctl --json client pc01 | jq -c '{image, pending}')"
tctl client pc01 | grep -q '^pending: *-$' || tb_fail "tabulactl client: $(tctl client pc01)"

echo "== (pinned) goes with the next version"
io -e pc02 rewrite:0:4096 || tb_fail "pc02"
tb_wait_idle "$state" pc02
tb_make_file "$TB_TMP/v2.img" $M 3 $M
tctl image import demo "$TB_TMP/v2.img" >/dev/null || tb_fail "import demo@2"
tctl pin pc02 2 >/dev/null || tb_fail "pin"
line=$(tctl clients | grep '^pc02 ')
echo "$line" | grep -Eq ' demo@1 +demo@2 \(pinned\) ' ||
  tb_fail "clients: base demo@1 and next demo@2 (pinned) expected: $line"
tctl client pc02 | grep -q '^base: *demo@1$' || tb_fail "client: $(tctl client pc02)"
tctl client pc02 | grep -q '^limits: *read unlimited, write 20.* MiB/s, read 100 IOPS, write IOPS unlimited$' ||
  tb_fail "client limits: $(tctl client pc02 | grep limits)"

echo "== a session its frontend left behind is interrupted"
mkfifo "$TB_TMP/h.fifo"
"$TB_IO" -s "$sock" -e pc03 rewrite:0:4096 hold <"$TB_TMP/h.fifo" >"$TB_TMP/h.out" 2>&1 &
iopid=$!
sleep 2147483647 >"$TB_TMP/h.fifo" &
holdpid=$!
i=0
until grep -q holding "$TB_TMP/h.out" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "hold"
  sleep 0.1
done
old=$(td_nbdkit_pid)
kill -9 "$old"
kill $holdpid
wait $iopid 2>/dev/null || true
td_wait ".nbdkit.state == \"running\" and .nbdkit.pid != $old" "nbdkit restarted"
tctl --json client pc03 | jq -e '.last_session.state == "interrupted"' >/dev/null ||
  tb_fail "last session: $(tctl --json client pc03 | jq -c .last_session)"
tctl client pc03 | grep -q '^last session: [0-9]* interrupted' ||
  tb_fail "tabulactl client: $(tctl client pc03 | grep 'last session')"

echo "== local times for people, UTC in --json"
TZ=EST5 tctl image list | grep -Eq ' [0-9-]{10} [0-9:]{8} EST ' ||
  tb_fail "image list times: $(TZ=EST5 tctl image list)"
TZ=EST5 tctl image list | grep -q 'T[0-9:]*\.[0-9]*Z' && tb_fail "image list shows UTC: $(tctl image list)"
tctl --json image list | grep -Eq '"created": "[0-9-]+T[0-9:.]+Z"' ||
  tb_fail "--json image list: $(tctl --json image list | head -20)"
TZ=EST5 tctl events --client pc03 | grep -Eq '^[0-9-]{10} [0-9:]{8}\.[0-9]{3} EST ' ||
  tb_fail "events: $(TZ=EST5 tctl events --client pc03 | head -3)"

echo "== a broken or missing configuration says what is wrong (exit 1)"
echo '{"state_dir": "/x", ' >"$TB_TMP/broken.json"
st=0
"$TD_CTL" -c "$TB_TMP/broken.json" status >/dev/null 2>"$TB_TMP/err" || st=$?
[ $st -eq 1 ] || tb_fail "broken configuration: exit $st (1 expected): $(cat "$TB_TMP/err")"
grep -q "broken.json: line 2.*not valid JSON" "$TB_TMP/err" || tb_fail "broken: $(cat "$TB_TMP/err")"
st=0
"$TD_CTL" -c "$TB_TMP/missing.json" clients >/dev/null 2>"$TB_TMP/err" || st=$?
[ $st -eq 1 ] || tb_fail "missing configuration: exit $st (1 expected): $(cat "$TB_TMP/err")"
grep -q "missing.json: No such file" "$TB_TMP/err" || tb_fail "missing: $(cat "$TB_TMP/err")"
st=0
"$TD_CTL" --json -c "$TB_TMP/broken.json" clients >"$TB_TMP/out" 2>/dev/null || st=$?
jq -e '.ok == false and .exit_status == 1 and (.error | test("not valid JSON"))' "$TB_TMP/out" \
  >/dev/null || tb_fail "--json error: $(cat "$TB_TMP/out")"
st=0
tctl --json client nosuch >"$TB_TMP/out" 2>/dev/null || st=$?
jq -e '.ok == false and .exit_status == 1 and (.error | test("nosuch"))' "$TB_TMP/out" \
  >/dev/null || tb_fail "--json error from the daemon: $(cat "$TB_TMP/out")"
# The daemon not running is still 3.
st=0
"$TD_CTL" --socket "$TB_TMP/nobody.sock" status >/dev/null 2>&1 || st=$?
[ $st -eq 3 ] || tb_fail "no daemon: exit $st (3 expected)"

echo "== --state is the state directory for image publish too"
st=0
env -u TABULA_CONFIG "$TD_CTL" --state "$state" image publish other "$TB_TMP/www" >"$TB_TMP/out" 2>&1 ||
  tb_fail "publish with --state: $(cat "$TB_TMP/out")"
[ -f "$TB_TMP/www/other/index.json" ] || tb_fail "nothing published: $(cat "$TB_TMP/out")"

echo "== the metrics after the daemon stops"
i=0
until grep -q '^tabula_up 1$' "$TB_TMP/tabula.prom" 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "no metrics file"
  sleep 0.1
done
grep -Eq '^tabula_metrics_timestamp_seconds [0-9]+\.[0-9]+$' "$TB_TMP/tabula.prom" ||
  tb_fail "no timestamp: $(cat "$TB_TMP/tabula.prom")"
td_stop
grep -q '^tabula_up 0$' "$TB_TMP/tabula.prom" || tb_fail "after stop: $(head -8 "$TB_TMP/tabula.prom")"
grep -q '^tabula_nbdkit_up 0$' "$TB_TMP/tabula.prom" || tb_fail "after stop: nbdkit up"
tb_check_logs
echo ok
