#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Webhooks read the journal as their queue (issue 14, item 6):
#  - a receiver that stalls (its handler sleeps) while 250 events are written
#    and the journal is rotated by rename and by copytruncate (as logrotate
#    does), then resumes: every event arrives, once, in order;
#  - the receiver gone, the daemon restarted, 50 more events and two more
#    rotations (one while the daemon is down): all 300 arrive exactly once;
#  - a reload while a delivery is stalled: still once each;
#  - behind by more generations than are kept: the events of the generation
#    rotated out are lost and a webhook-gap event says how many.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require python3 jq

state=$TB_TMP/state
journal=$state/events.jsonl
port=$(tb_free_port)
got=$TB_TMP/got.jsonl
tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1

# The receiver: while $TB_TMP/stall exists, every request waits (up to 120 s)
# before it is recorded and answered.  Records "test" events (n) and gaps.
start_receiver()
{
  python3 - "$port" "$TB_TMP/stall" "$got" >>"$TB_TMP/receiver.log" 2>&1 <<'PY' &
import http.server, json, os, sys, time
port, stall, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        t = time.time()
        while os.path.exists(stall) and time.time() - t < 120:
            time.sleep(0.05)
        ev = json.loads(body)
        if ev.get("type") in ("test", "webhook-gap"):
            with open(out, "a") as f:
                f.write(json.dumps(ev) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
print("listening", flush=True)
srv.serve_forever()
PY
  echo $! >"$TB_TMP/receiver.bgpid"
  _i=0
  until [ "$(grep -c listening "$TB_TMP/receiver.log" 2>/dev/null)" -ge "$1" ]; do
    _i=$((_i + 1)); [ $_i -lt 100 ] || tb_fail "receiver: $(cat "$TB_TMP/receiver.log")"
    sleep 0.1
  done
}

stop_receiver()
{
  kill "$(cat "$TB_TMP/receiver.bgpid")"
  wait "$(cat "$TB_TMP/receiver.bgpid")" 2>/dev/null || true
  rm -f "$TB_TMP/receiver.bgpid"
}

# Events FROM..TO of type "test", appended as any writer of the journal does.
emit()
{
  _n=$1
  while [ "$_n" -le "$2" ]; do
    printf '{"time":"2026-12-01T00:00:00.000Z","ts":0,"type":"test","n":%d,"pad":"%s"}\n' \
      "$_n" "$3" >>"$journal"
    _n=$((_n + 1))
  done
}

# logrotate with "rotate 5": .4 -> .5 ... .1 -> .2 (the oldest falls off),
# then "rename" (events.jsonl -> .1) or "copytruncate" (copy, then truncate).
rotate()
{
  rm -f "$journal.5"
  for _k in 4 3 2 1; do
    [ ! -e "$journal.$_k" ] || mv "$journal.$_k" "$journal.$((_k + 1))"
  done
  if [ "$1" = rename ]; then
    mv "$journal" "$journal.1"
  else
    cp "$journal" "$journal.1" && truncate -s 0 "$journal"
  fi
}

# Wait until COUNT test events were received.
wait_got()
{
  _i=0
  until [ "$(cat "$got" 2>/dev/null | grep -c '"type": "test"')" -ge "$1" ]; do
    _i=$((_i + 1))
    [ $_i -lt 600 ] || tb_fail "$2: $(grep -c '"type": "test"' "$got" 2>/dev/null) of $1 events arrived; $(tctl --json status | jq -c .webhooks)"
    sleep 0.1
  done
}

# The test events received, in order, must be exactly FROM..TO (no gap, no
# duplicate); the optional third argument lists numbers left out.
check_got()
{
  jq -s --argjson a "$1" --argjson b "$2" --argjson skip "${3:-[]}" '
    [.[] | select(.type == "test") | .n] == ([range($a; $b + 1)] - $skip)' "$got" | grep -q true ||
    tb_fail "$4: received $(jq -s -c '[.[] | select(.type == "test") | .n]' "$got")"
}

conf=$TB_TMP/tabula.json
start_receiver 1
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }' "\"events\": { \"keep\": 5 },
  \"webhooks\": [ { \"url\": \"http://127.0.0.1:$port/hook\", \"timeout\": \"60s\", \"retries\": 2 } ]"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
pad=$(printf '%0200d' 0)

echo "== a stalled receiver, 250 events, a rename and a copytruncate, then it resumes"
touch "$TB_TMP/stall"
emit 1 100 "$pad"
sleep 0.5
rotate rename
emit 101 200 "$pad"
sleep 0.5
rotate copytruncate
emit 201 250 "$pad"
sleep 0.5
rm -f "$TB_TMP/stall"
wait_got 250 "after the stall"
check_got 1 250 '[]' "after the stall, every event once and in order"

echo "== the receiver gone, a restart of the daemon, rotations: 300 events exactly once"
stop_receiver
emit 251 275 "$pad"
sleep 0.5
td_stop
emit 276 290 "$pad"
rotate rename
td_start "$conf"
emit 291 295 "$pad"
sleep 0.5
rotate copytruncate
emit 296 300 "$pad"
start_receiver 2
wait_got 300 "after the restart"
sleep 1
check_got 1 300 '[]' "across the restart, every event once and in order"
tctl --json status | jq -e '.webhooks.dropped == 0' >/dev/null ||
  tb_fail "nothing may be counted as dropped: $(tctl --json status | jq -c .webhooks)"
grep -q '"type": "webhook-gap"' "$got" && tb_fail "no gap expected: $(grep webhook-gap "$got")"

echo "== a reload while a delivery is stalled: the new thread starts where the old one stops"
touch "$TB_TMP/stall"
emit 301 305 "$pad"
sleep 0.5
tctl reload >/dev/null || tb_fail "reload"
emit 306 310 "$pad"
sleep 0.5
rm -f "$TB_TMP/stall"
wait_got 310 "after the reload"
sleep 1
check_got 1 310 '[]' "across a reload, every event once and in order"

echo "== behind by more generations than are kept: a webhook-gap event with the count"
touch "$TB_TMP/stall"
emit 311 320 "$pad"
for r in 1 2 3 4 5 6 7; do
  sleep 0.5 # the tailer (every 0.2 s) sees each generation
  rotate rename
  emit $((310 + r * 10 + 1)) $((310 + r * 10 + 10)) "$pad"
done
sleep 1.5 # the last rotated generation settles
rm -f "$TB_TMP/stall"
# 311..320 (the generation being read), 321..330 rotated out, 331..390 kept.
wait_got 380 "after the gap"
i=0
until grep -q '"type": "webhook-gap"' "$got"; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "no webhook-gap event: $(tail -n 5 "$TB_TMP/daemon.log")"
  sleep 0.1
done
sleep 1
check_got 1 390 "[$(seq -s, 321 330)]" "after the gap"
jq -se '[.[] | select(.type == "webhook-gap")] | length == 1 and .[0].lost == 10' "$got" >/dev/null ||
  tb_fail "the gap event must count the 10 lost events: $(grep webhook-gap "$got")"
tctl --json status | jq -e '.webhooks.dropped == 10' >/dev/null ||
  tb_fail "dropped: $(tctl --json status | jq -c .webhooks)"

td_stop
grep -Eq 'AddressSanitizer|runtime error' "$TB_TMP/daemon.log" && tb_fail "sanitizer: $(cat "$TB_TMP/daemon.log")"
echo PASS
