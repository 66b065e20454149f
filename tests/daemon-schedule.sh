#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Refresh and pull schedules survive restarts of the daemon (each one's place
# is kept in clients/ID/schedule.json and schedules/pull-I.json):
#  - a restart does not move a due time (nothing fires again, nothing is
#    postponed);
#  - a turn that came due while the daemon was down fires once, at start,
#    and the schedule goes on from there ("every 2s", in real time, and an
#    "every 1h" whose due time the test moves into the past);
#  - a changed schedule counts from its last refresh.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((4 * 1024 * 1024)) 1
closed=$(tb_free_port)
conf=$TB_TMP/tabula.json
write_conf()
{
  td_config "$conf" "$state" "{
    \"pc01\": { \"image\": \"demo\", \"policy\": \"persist\", \"refresh\": \"every 2s\" },
    \"pc02\": { \"image\": \"demo\", \"policy\": \"persist\", \"refresh\": \"$1\" },
    \"pc03\": { \"image\": \"demo\", \"policy\": \"persist\", \"refresh\": \"every 1h\" }
  }" "\"pull\": { \"from\": \"http://127.0.0.1:$closed/repo\", \"images\": [\"demo\"], \"when\": \"every 1h\" }"
}
write_conf "every 1h"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"

mark() { jq -r ".$2" "$state/$1"; }
# since_start TYPE CLIENT: events of TYPE for CLIENT since the last daemon-start.
since_start()
{
  jq -s -c "(map(select(.type == \"daemon-start\")) | last | .ts) as \$t |
    map(select(.ts >= \$t and .type == \"$1\" and .client == $2))" "$state/events.jsonl"
}
starts() { jq -s -r 'map(select(.type == "daemon-start")) | last | .time' "$state/events.jsonl"; }

echo "== first start: every schedule gets its mark"
td_start "$conf"
for c in pc01 pc02 pc03; do
  [ -f "$state/clients/$c/schedule.json" ] || tb_fail "$c: no schedule.json"
done
i=0
until [ -f "$state/schedules/pull-0.json" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "no mark for the pull source"; sleep 0.1
done
tb_json "$state/clients/pc01/schedule.json" '.schedule == "every 2s"' "pc01's mark"
next2=$(mark clients/pc02/schedule.json next_ms)
next3=$(mark clients/pc03/schedule.json next_ms)
nextp=$(mark schedules/pull-0.json next_ms)
tctl --json client pc02 | jq -e --arg n "$(mark clients/pc02/schedule.json next)" \
  '.next_refresh == $n' >/dev/null || tb_fail "tabulactl client must show the due time: $(tctl --json client pc02)"

echo "== every 2s: fires, and its last refresh is kept"
i=0
until [ "$(tb_count_events refresh-scheduled pc01 "$state")" -ge 1 ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "pc01 (every 2s) got no refresh"; sleep 0.1
done
td_stop
last1=$(mark clients/pc01/schedule.json last_ms)
[ "$last1" -gt 0 ] || tb_fail "pc01's last refresh must be recorded: $(cat "$state/clients/pc01/schedule.json")"

echo "== down for two turns of pc01; pc03 came due while down"
jq ".next_ms = $(($(date +%s%3N) - 60000))" "$state/clients/pc03/schedule.json" >"$TB_TMP/m" &&
  mv "$TB_TMP/m" "$state/clients/pc03/schedule.json"
jq ".next_ms = $(($(date +%s%3N) - 60000))" "$state/schedules/pull-0.json" >"$TB_TMP/m" &&
  mv "$TB_TMP/m" "$state/schedules/pull-0.json"
sleep 4.5
td_start "$conf"
start=$(starts)
i=0
until [ "$(since_start refresh-scheduled '"pc01"' | jq length)" -ge 2 ] &&
  [ "$(since_start refresh-scheduled '"pc03"' | jq length)" -ge 1 ] &&
  [ "$(since_start pull-scheduled null | jq length)" -ge 1 ]; do
  i=$((i + 1))
  [ $i -lt 150 ] || tb_fail "missed turns must fire at start: $(since_start refresh-scheduled '"pc01"')"
  sleep 0.1
done
late=$(since_start refresh-scheduled '"pc01"' | jq --arg s "$start" '[.[] | select(.due < $s)] | length')
[ "$late" = 1 ] || tb_fail "pc01's missed turns must fire once at start, not $late times: $(since_start refresh-scheduled '"pc01"')"
since_start refresh-scheduled '"pc01"' | jq -e '(.[1].ts - .[0].ts) >= 1900' >/dev/null ||
  tb_fail "after the late turn pc01 goes on every 2s: $(since_start refresh-scheduled '"pc01"')"
sleep 1
[ "$(since_start refresh-scheduled '"pc03"' | jq length)" = 1 ] || tb_fail "pc03 must fire once"
[ "$(since_start pull-scheduled null | jq length)" = 1 ] || tb_fail "the pull must run once"
now=$(date +%s%3N)
n3=$(mark clients/pc03/schedule.json next_ms)
[ "$n3" -gt $((now + 3500000)) ] || tb_fail "pc03 goes on in an hour: $(cat "$state/clients/pc03/schedule.json")"
np=$(mark schedules/pull-0.json next_ms)
[ "$np" -gt $((now + 3500000)) ] || tb_fail "the pull goes on in an hour: $(cat "$state/schedules/pull-0.json")"

echo "== a restart moves no due time"
[ "$(mark clients/pc02/schedule.json next_ms)" = "$next2" ] || tb_fail "pc02's due time moved"
[ "$(since_start refresh-scheduled '"pc02"' | jq length)" = 0 ] || tb_fail "pc02 must not fire at start"
td_stop
td_start "$conf"
[ "$(mark clients/pc02/schedule.json next_ms)" = "$next2" ] || tb_fail "pc02's due time moved"
[ "$(mark clients/pc03/schedule.json next_ms)" = "$n3" ] || tb_fail "pc03's due time moved"
[ "$(mark schedules/pull-0.json next_ms)" = "$np" ] || tb_fail "the pull's due time moved"
sleep 0.5
[ "$(since_start refresh-scheduled '"pc03"' | jq length)" = 0 ] || tb_fail "pc03 must not fire again"
[ "$(since_start pull-scheduled null | jq length)" = 0 ] || tb_fail "the pull must not run again"
[ "$next3" != "$n3" ] || tb_fail "pc03's mark must have moved on"
[ "$nextp" != "$np" ] || tb_fail "the pull's mark must have moved on"

echo "== a changed schedule counts from the last refresh (reload)"
last2=$(($(date +%s%3N) - 3600000))
td_stop
jq ".last_ms = $last2" "$state/clients/pc02/schedule.json" >"$TB_TMP/m" &&
  mv "$TB_TMP/m" "$state/clients/pc02/schedule.json"
td_start "$conf"
write_conf "every 30m"
tctl reload >/dev/null || tb_fail "reload"
due=$((last2 + 1800000))
due="$(date -u -d @$((due / 1000)) +%Y-%m-%dT%H:%M:%S).$(printf %03d $((due % 1000)))Z"
i=0
until [ "$(since_start refresh-scheduled '"pc02"' | jq length)" = 1 ]; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "pc02 was due under its new schedule"; sleep 0.1
done
since_start refresh-scheduled '"pc02"' | jq -e --arg d "$due" '.[0].due == $d' >/dev/null ||
  tb_fail "a new schedule counts from the last refresh ($due): $(since_start refresh-scheduled '"pc02"')"
tb_json "$state/clients/pc02/schedule.json" ".schedule == \"every 30m\" and .last_ms > $last2" \
  "the refresh under the new schedule is recorded"

echo "== what an administrator sees"
tctl client pc02 >"$TB_TMP/out" || tb_fail "tabulactl client pc02"
grep -q "^refresh: *every 30m" "$TB_TMP/out" && grep -Eq "^  next: +20[0-9-]+ [0-9:]+ .*\(in " "$TB_TMP/out" &&
  grep -Eq "^  last: +20[0-9-]+ [0-9:]+ .*\(.* ago\)" "$TB_TMP/out" ||
  tb_fail "tabulactl client must show the schedule with its next and last refresh: $(cat "$TB_TMP/out")"
tctl status | grep -Eq "^refresh: +next pc0[1-3] at " || tb_fail "status must show the next refresh: $(tctl status)"
tctl lockdown pc03 "test reason" >/dev/null || tb_fail "lockdown"
tctl status | grep -q "1 locked down" || tb_fail "status must count locked down clients: $(tctl status)"
tctl client pc03 | grep -q "locked down: its export is refused until tabulactl unlock pc03" ||
  tb_fail "client must say it is locked down: $(tctl client pc03)"
tctl unlock pc03 >/dev/null || tb_fail "unlock"

echo "== a mark that is not JSON: the schedule counts from now"
td_stop
echo "garbage" >"$state/clients/pc03/schedule.json"
td_start "$conf"
tb_json "$state/clients/pc03/schedule.json" '.schedule == "every 1h"' "a broken mark is replaced"
sleep 0.5
[ "$(since_start refresh-scheduled '"pc03"' | jq length)" = 0 ] || tb_fail "a broken mark must not fire"
td_stop
echo "OK"
