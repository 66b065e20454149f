#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Webhooks, schedules, groups and metrics.
#  - every event is POSTed to a local listener with an HMAC-SHA256 signature
#    the test verifies; a second URL answers 500 and a third never answers:
#    the daemon keeps answering at once and the good listener still gets all;
#  - a refresh schedule ("every 2s", from a group) posts refreshes;
#  - the Prometheus textfile has per-client figures.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((4 * 1024 * 1024)) 1
good=$(tb_free_port)
bad=$(tb_free_port)
hole=$(tb_free_port)
secret=s3cr3t-key

# Listener: GOOD verifies signatures and appends the bodies; BAD answers 500;
# HOLE accepts connections and never answers.
python3 - "$good" "$bad" "$hole" "$secret" "$TB_TMP/hooks.jsonl" >"$TB_TMP/listener.log" 2>&1 <<'PY' &
import hashlib, hmac, http.server, json, socket, sys, threading, time
good, bad, hole, secret, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode(), sys.argv[5]
class Good(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = self.headers.get("X-Tabula-Signature", "")
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        ev = json.loads(body)
        rec = {"ok": hmac.compare_digest(sig, want), "type": ev.get("type"),
               "header": self.headers.get("X-Tabula-Event"), "client": ev.get("client")}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
class Bad(Good):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(500); self.end_headers()
for port, cls in ((good, Good), (bad, Bad)):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), cls)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
h = socket.socket(); h.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
h.bind(("127.0.0.1", hole)); h.listen(100)
held = []
def accept():
    while True:
        held.append(h.accept()[0])
threading.Thread(target=accept, daemon=True).start()
print("listening", flush=True)
time.sleep(600)
PY
echo $! >"$TB_TMP/listener.bgpid"
i=0; until grep -q listening "$TB_TMP/listener.log" 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || tb_fail "listener"; sleep 0.1; done

conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc01": { "image": "demo", "group": "lab" },
    "pc02": { "image": "demo", "group": "lab", "refresh": null }
  }' "\"groups\": { \"lab\": { \"image\": \"demo\", \"policy\": \"persist\", \"refresh\": \"every 2s\" } },
  \"webhooks\": [
    { \"url\": \"http://127.0.0.1:$good/hook\", \"secret\": \"$secret\", \"timeout\": \"10s\", \"retries\": 2 },
    { \"url\": \"http://127.0.0.1:$bad/hook\", \"secret\": \"$secret\", \"timeout\": \"10s\", \"retries\": 5 },
    { \"url\": \"http://127.0.0.1:$hole/hook\", \"timeout\": \"60s\", \"retries\": 5 }
  ],
  \"metrics\": { \"file\": \"$TB_TMP/tabula.prom\", \"interval\": \"1s\" }"
# "refresh": null is not valid JSON for the parser if it does not accept null: drop it.
jq 'del(.clients.pc02.refresh)' "$conf" >"$conf.tmp" && mv "$conf.tmp" "$conf"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"

echo "== sessions produce events; webhooks deliver them signed"
"$TB_IO" -s "$state/nbd.sock" -e pc01 write:0:4096:5 || tb_fail "pc01"
tb_wait_idle "$state" pc01
i=0
until grep -q '"type": "session-end"' "$TB_TMP/hooks.jsonl" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "no session-end webhook: $(cat "$TB_TMP/hooks.jsonl" 2>&1)"
  sleep 0.1
done
jq -se 'length >= 3 and all(.ok) and all(.type == .header)' "$TB_TMP/hooks.jsonl" >/dev/null ||
  tb_fail "webhook signatures or headers: $(cat "$TB_TMP/hooks.jsonl")"
grep -q '"type": "session-start", "header": "session-start", "client": "pc01"' "$TB_TMP/hooks.jsonl" ||
  tb_fail "session-start webhook: $(cat "$TB_TMP/hooks.jsonl")"

echo "== a listener answering 500 and one that never answers do not slow the daemon"
for i in 1 2 3 4 5 6 7 8 9 10; do
  timeout 2 "$TD_CTL" -c "$conf" status >/dev/null || tb_fail "status $i did not answer within 2 s"
done
tctl rollback pc02 >/dev/null
i=0
until grep -q '"type": "rollback"' "$TB_TMP/hooks.jsonl"; do
  i=$((i + 1)); [ $i -lt 50 ] || tb_fail "the good listener must not wait behind the bad ones"
  sleep 0.1
done
td_wait '.webhooks.urls[1].retried >= 1 and (.webhooks.urls[1].last_error | test("HTTP status 500"))' \
  "the 500 answers must be retried and reported"
tctl --json status | jq -e '.webhooks.urls[2].sent == 0 and .webhooks.urls[0].failed == 0' >/dev/null ||
  tb_fail "webhook counters: $(tctl --json status | jq -c .webhooks)"

echo "== schedules from a group"
td_wait true "daemon"
i=0
until [ "$(tb_count_events refresh-scheduled pc01 "$state")" -ge 2 ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "pc01 (group lab, every 2s) must get scheduled refreshes"
  sleep 0.1
done
[ "$(tb_count_events refresh-scheduled pc02 "$state")" -ge 1 ] || tb_fail "pc02 inherits the schedule"
tctl --json client pc01 | jq -e '.refresh == "every 2s" and (.pending | index("refresh"))' >/dev/null ||
  tb_fail "pc01 refresh pending: $(tctl --json client pc01)"
"$TB_IO" -s "$state/nbd.sock" -e pc01 read:0:4096:1 || tb_fail "pc01 (persist) must start clean after a scheduled refresh"
tb_wait_idle "$state" pc01

echo "== metrics"
sleep 1.2
grep -q '^tabula_up 1$' "$TB_TMP/tabula.prom" || tb_fail "metrics: $(cat "$TB_TMP/tabula.prom")"
grep -q '^tabula_nbdkit_up 1$' "$TB_TMP/tabula.prom" || tb_fail "tabula_nbdkit_up"
grep -Eq '^tabula_client_sessions_total\{client="pc01"\} [1-9]' "$TB_TMP/tabula.prom" || tb_fail "sessions_total: $(cat "$TB_TMP/tabula.prom")"
grep -Eq '^tabula_client_written_bytes_total\{client="pc01"\} 4096$' "$TB_TMP/tabula.prom" || tb_fail "written bytes: $(grep written "$TB_TMP/tabula.prom")"
grep -Eq '^tabula_webhook_sent_total [1-9]' "$TB_TMP/tabula.prom" || tb_fail "webhook counter"
grep -q '^# TYPE tabula_client_dirty_bytes gauge$' "$TB_TMP/tabula.prom" || tb_fail "TYPE lines"

echo "== stopping is bounded even with a webhook hanging"
start=$(date +%s)
td_stop
[ $(($(date +%s) - start)) -lt 20 ] || tb_fail "stopping took too long"
grep -Eq 'AddressSanitizer|runtime error' "$TB_TMP/daemon.log" && tb_fail "sanitizer: $(cat "$TB_TMP/daemon.log")"
echo PASS
