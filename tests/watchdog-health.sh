#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Health strikes and the last known good state, with sessions that really
# write into the guest's ext4 (nbdfuse + debugfs -w):
#  - persist client: a session that touches the health marker is healthy and
#    its overlay is kept as the last known good; three sessions in a row that
#    do not touch it are strikes, and the client gets that overlay back (its
#    files of the bad sessions gone, those of the good one there);
#  - rollback client: healthy on version 1, then two strikes on version 2:
#    it is pinned back to version 1 and its next session runs on it.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"

tw_setup '{
  "pc01": { "image": "demo", "policy": "persist",
            "watchdog": { "health": { "marker": "/healthy", "volume": "whole-ext4", "strikes": 3 } } },
  "pc02": { "image": "demo",
            "watchdog": { "health": { "marker": "/healthy", "strikes": 2 } } }
}'
echo "ok" >"$T/marker"

echo "== persist: a healthy session is kept"
tw_session "$state" pc01 "write $T/marker healthy
write $T/marker good.txt"
tw_wait "$state" '.type == "healthy" and .client == "pc01" and .session == 1 and .saved_overlay' \
  "healthy session 1"
[ -f "$state/clients/pc01/good/overlay" ] || tb_fail "no clients/pc01/good/overlay"

echo "== persist: three strikes bring the last known good back"
for i in 2 3 4; do
  tw_session "$state" pc01 "write $T/marker bad-$i.txt"
  tw_wait "$state" ".type == \"strike\" and .client == \"pc01\" and .session == $i and
    .strikes == $((i - 1)) and .of == 3" "strike $((i - 1))"
done
tw_wait "$state" '.type == "last-known-good" and .client == "pc01" and .overlay and .version == 1' \
  "last known good"
[ "$(tw_count "$state" '.type == "strike" and .client == "pc01"')" = 3 ] ||
  tb_fail "strikes: $(jq -c 'select(.type == "strike")' "$state/events.jsonl")"
i=0 # health.json is written just after the event
until jq -e '.strikes == 0 and .last_good.session == 1' "$state/clients/pc01/health.json" \
  >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "health.json: $(cat "$state/clients/pc01/health.json")"
  sleep 0.05
done
tw_read "$state" pc01 "ls -l /" >"$T/ls"
grep -q good.txt "$T/ls" || tb_fail "the good session's file is gone: $(cat "$T/ls")"
grep -q bad- "$T/ls" && tb_fail "files of the bad sessions are still there: $(cat "$T/ls")"
[ -d "$state/clients/pc01/sessions" ] && ls "$state/clients/pc01/sessions" | grep -q . ||
  tb_fail "the overlay replaced by the last known good was not kept as a retained session"

echo "== rollback client: back to the last version it ran healthily"
tw_session "$state" pc02 "write $T/marker healthy"
tw_wait "$state" '.type == "healthy" and .client == "pc02" and .version == 1' "pc02 healthy on 1"
cp "$T/master.img" "$T/master2.img"
debugfs -w -R "write $T/marker new-in-v2.txt" "$T/master2.img" >/dev/null 2>&1
tb_import "$state" demo "$T/master2.img"
for i in 1 2; do
  tw_session "$state" pc02 "write $T/marker nothing-$i.txt"
  tw_wait "$state" ".type == \"strike\" and .client == \"pc02\" and .strikes == $i and
    .version == 2" "pc02 strike $i on version 2"
done
tw_wait "$state" '.type == "last-known-good" and .client == "pc02" and .version == 1' \
  "pc02 last known good"
tctl --json client pc02 | jq -e '.next_version == 1' >/dev/null ||
  tb_fail "pc02 is not pinned to version 1: $(tctl --json client pc02)"
tw_read "$state" pc02 "ls -l /" | grep -q new-in-v2 && tb_fail "pc02 still runs version 2"
tw_boot "$state" pc02
tb_wait_idle "$state" pc02
jq -e '.version == 1' "$state/clients/pc02/session.json" >/dev/null ||
  tb_fail "pc02's session: $(cat "$state/clients/pc02/session.json")"

td_stop
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T/daemon.log" && tb_fail "sanitizer report in the daemon"
exit 0
