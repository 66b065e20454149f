#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Canary versions: `tabulactl image promote demo@N --canary lab` serves N to
# group "lab" only, the other clients stay on the previous version.  A lab
# session on N without the health marker is a strike: with withdraw_after 1
# the canary is withdrawn and lab returns to the previous version.  A later
# version whose lab sessions are healthy is promoted after promote_after (2)
# of them, and then every client runs it.  Every step is an event.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"

T=$TB_TMP
state=$T/state
echo "ok" >"$T/marker"
tw_master "$T/v1.img"
tb_import "$state" demo "$T/v1.img"
td_config "$T/tabula.json" "$state" '{
  "c1": { "image": "demo", "group": "lab" },
  "c2": { "image": "demo", "group": "lab" },
  "o1": { "image": "demo" }
}' '"groups": { "lab": { "policy": "rollback" } },
  "watchdog": { "health": { "marker": "/healthy" },
                "canary": { "promote_after": 2, "withdraw_after": 1 } }'
td_start "$T/tabula.json"

# version_of ID: the version ID's next session runs (one session that changes
# nothing: its first write, of the bytes already there, makes it a session).
version_of()
{
  "$TB_IO" -s "$state/nbd.sock" -e "$1" rewrite:0:4096 || tb_fail "session of $1"
  tb_wait_idle "$state" "$1"
  jq -r .version "$state/clients/$1/session.json"
}

echo "== a failing canary is withdrawn"
cp "$T/v1.img" "$T/v2.img"
debugfs -w -R "write $T/marker v2.txt" "$T/v2.img" >/dev/null 2>&1
tb_import "$state" demo "$T/v2.img"
tctl image promote demo@2 --canary lab >"$T/out" || tb_fail "promote --canary: $(cat "$T/out")"
grep -q 'group lab' "$T/out" || tb_fail "promote says: $(cat "$T/out")"
tw_wait "$state" '.type == "canary-start" and .version == 2 and .previous == 1 and .group == "lab"' \
  "canary-start"
[ "$(version_of o1)" = 1 ] || tb_fail "o1 (not in lab) got the canary version"
tw_session "$state" c1 "write $T/marker no-marker.txt"
tw_wait "$state" '.type == "canary-strike" and .client == "c1" and .version == 2' "canary strike"
tw_wait "$state" '.type == "canary-withdrawn" and .version == 2 and .previous == 1' "withdrawn"
[ "$(version_of c1)" = 1 ] || tb_fail "c1 is still on the withdrawn version"
[ "$(version_of c2)" = 1 ] || tb_fail "c2 is still on the withdrawn version"
[ "$(version_of o1)" = 1 ] || tb_fail "o1 left version 1"

echo "== a passing canary is promoted"
cp "$T/v1.img" "$T/v3.img"
debugfs -w -R "write $T/marker v3.txt" "$T/v3.img" >/dev/null 2>&1
tb_import "$state" demo "$T/v3.img"
tctl image promote demo@3 --canary lab >"$T/out" || tb_fail "promote --canary: $(cat "$T/out")"
tw_wait "$state" '.type == "canary-start" and .version == 3 and .previous == 1' "canary-start 3"
td_expect_fail "a second canary of the same image" 'is running' tctl image promote demo@3 --canary lab
[ "$(version_of o1)" = 1 ] || tb_fail "o1 got version 3 before the promotion"
tw_session "$state" c1 "write $T/marker healthy"
tw_wait "$state" '.type == "canary-healthy" and .client == "c1" and .version == 3 and .count == 1' \
  "canary healthy 1"
[ "$(tw_count "$state" '.type == "canary-promoted"')" = 0 ] || tb_fail "promoted after one session"
tw_session "$state" c2 "write $T/marker healthy"
tw_wait "$state" '.type == "canary-promoted" and .version == 3 and .by == "healthy sessions"' \
  "canary promoted"
[ "$(version_of o1)" = 3 ] || tb_fail "o1 is not on the promoted version"
[ "$(version_of c1)" = 3 ] || tb_fail "c1 is not on the promoted version"

echo "== promote without a canary"
tctl image promote demo@1 >"$T/out" || tb_fail "promote demo@1: $(cat "$T/out")"
tw_wait "$state" '.type == "image-promoted" and .version == 1' "image-promoted"
[ "$(version_of o1)" = 1 ] || tb_fail "o1 did not follow the promotion of version 1"
td_expect_fail "a version that does not exist" 'no version 9' tctl image promote demo@9

td_stop
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T/daemon.log" && tb_fail "sanitizer report in the daemon"
exit 0
