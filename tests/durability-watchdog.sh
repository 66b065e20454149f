#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The watchdog's state read back with a plausibility check at the daemon's
# start (a damaged disk; the atomic writes never tear these files):
#  - a clients/ID/health.json that does not parse, or whose last_good names
#    no version, counts from nothing: a warning and a state-recovered event
#    name the file, and it is rewritten valid;
#  - a watchdog/canary-IMAGE.json that is no canary record (a version not
#    above its previous one) is moved aside to .bad, with a warning naming it;
#  - temporaries of those writes and an unrecorded good/overlay.N (what a cut
#    leaves of a save) are removed; a good/overlay.N that health.json already
#    records is renamed into place;
#  - a session end the watchdog never got to (clients/ID/watchdog.json is
#    behind session.json) is scanned and judged at the start, and only once.
# (tests/powercut-watchdog.sh cuts the power under the same writers.)
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"

T=$TB_TMP
state=$T/state
tb_make_file "$T/v1.img" 4194304 1
tb_import "$state" demo "$T/v1.img"
tb_make_file "$T/v2.img" 4194304 2
tb_import "$state" demo "$T/v2.img"
clients='{
  "pc01": { "image": "demo", "policy": "persist", "watchdog": { "health": { "marker": "/healthy" } } },
  "pc02": { "image": "demo", "policy": "persist", "watchdog": { "health": { "marker": "/healthy" } } },
  "pc03": { "image": "demo", "policy": "persist", "watchdog": { "health": { "marker": "/healthy" } } }
}'
td_config "$T/tabula.json" "$state" "$clients"
td_start "$T/tabula.json"
for id in pc01 pc02 pc03; do
  "$TB_IO" -s "$state/nbd.sock" -e $id write:0:4096:7 flush || tb_fail "a session of $id"
  tb_wait_idle "$state" $id
done
td_stop

c1=$state/clients/pc01
c2=$state/clients/pc02
c3=$state/clients/pc03
printf '{ "strikes": 2, "last_good": { "ima' >"$c1/health.json" # torn
printf '{ "strikes": 1, "last_good": { "image": "demo", "version": 0, "session": 1 } }\n' >"$c2/health.json"
printf '{ "strikes": 1, "last_good": { "image": "demo", "version": 1, "session": 4, "overlay": true } }\n' >"$c3/health.json"
chmod 600 "$c1/health.json" "$c2/health.json" "$c3/health.json"
printf '{"x' >"$c1/health.json.tmp.AbC123"
mkdir -p -m 700 "$c1/good" "$c3/good" "$state/watchdog"
cp "$c1/overlay" "$c1/good/overlay.3" # a save of session 3, never recorded
cp "$c3/overlay" "$c3/good/overlay.4" # recorded in health.json, not yet renamed
printf '{ "image": "demo", "version": 1, "previous": 2, "group": "lab", "state": "running" }\n' \
  >"$state/watchdog/canary-demo.json"
printf '{"x' >"$state/watchdog/canary-demo.json.tmp.XyZ789"
chmod 600 "$state/watchdog/"*

td_start "$T/tabula.json"
log=$T/daemon.log
grep -q "warning: $c1/health.json: not JSON" "$log" || tb_fail "no warning naming pc01's health.json: $(cat "$log")"
grep -q "warning: $c2/health.json: \"last_good\" does not name" "$log" ||
  tb_fail "no warning naming pc02's implausible health.json: $(cat "$log")"
for f in "$c1/health.json" "$c2/health.json"; do
  jq -c "select(.type == \"state-recovered\" and .file == \"$f\")" "$state/events.jsonl" | grep -q . ||
    tb_fail "no state-recovered event for $f"
  jq -e '.strikes == null or .strikes == 0' "$f" >/dev/null 2>&1 || tb_fail "$f was not rewritten: $(cat "$f")"
done
jq -e '.last_good.session == 4' "$c3/health.json" >/dev/null || tb_fail "pc03's valid health.json changed"
[ ! -e "$c1/health.json.tmp.AbC123" ] || tb_fail "the health.json temporary is left"
[ ! -e "$c1/good/overlay.3" ] || tb_fail "an unrecorded save (good/overlay.3) is left"
grep -q "warning: $c1/good/overlay.3: a save .* is removed" "$log" || tb_fail "no warning naming good/overlay.3"
[ -f "$c3/good/overlay" ] && [ ! -e "$c3/good/overlay.4" ] ||
  tb_fail "the recorded save good/overlay.4 is not in place: $(ls "$c3/good")"
grep -q "warning: $c3/good/overlay.4: the save .* is finished" "$log" || tb_fail "no warning naming good/overlay.4"
[ -f "$state/watchdog/canary-demo.json.bad" ] && [ ! -e "$state/watchdog/canary-demo.json" ] ||
  tb_fail "the implausible canary record was not moved aside: $(ls "$state/watchdog")"
grep -q "warning: $state/watchdog/canary-demo.json: not a canary record" "$log" ||
  tb_fail "no warning naming the canary record: $(cat "$log")"
[ ! -e "$state/watchdog/canary-demo.json.tmp.XyZ789" ] || tb_fail "the canary temporary is left"
# A new canary can start (the damaged record is out of the way).
td_config "$T/tabula2.json" "$state" '{ "pc01": { "image": "demo", "group": "lab" },
  "pc02": { "image": "demo" } }' '"groups": { "lab": { "policy": "persist" } }'
td_stop
td_start "$T/tabula2.json"
tctl image promote demo@2 --canary lab >"$T/out" || tb_fail "promote --canary after the recovery: $(cat "$T/out")"
jq -e '.state == "running" and .version == 2' "$state/watchdog/canary-demo.json" >/dev/null ||
  tb_fail "the new canary record: $(cat "$state/watchdog/canary-demo.json")"
td_stop

# A session end the watchdog never got to (the daemon stopped, or a cut came,
# between the end and its scan) is scanned and judged at the next start, once.
td_start "$T/tabula.json"
td_stop
printf '{ "ended": 0 }\n' >"$c2/watchdog.json"
jq 'del(.judged)' "$c2/health.json" >"$T/h.json" && install -m 600 "$T/h.json" "$c2/health.json"
n=$(jq -c 'select(.type == "strike" and .client == "pc02")' "$state/events.jsonl" | wc -l)
td_start "$T/tabula.json"
i=0
until [ "$(jq -r .ended "$c2/watchdog.json")" = 1 ]; do
  i=$((i + 1))
  [ $i -lt 300 ] || tb_fail "pc02's last session end was not scanned at the start: $(cat "$c2/watchdog.json")"
  sleep 0.1
done
grep -q "session.json: session 1 of pc02 ended before the daemon stopped and was not scanned" "$log" ||
  tb_fail "no log line for the resumed scan: $(tail -n 5 "$log")"
[ "$(jq -c 'select(.type == "strike" and .client == "pc02")' "$state/events.jsonl" | wc -l)" = $((n + 1)) ] ||
  tb_fail "the resumed session end was not judged once: $(jq -c 'select(.client == "pc02")' "$state/events.jsonl")"
td_stop
td_start "$T/tabula.json" # judged: not again
td_stop
[ "$(jq -c 'select(.type == "strike" and .client == "pc02")' "$state/events.jsonl" | wc -l)" = $((n + 1)) ] ||
  tb_fail "a session end was judged twice"
tb_check_logs
exit 0
