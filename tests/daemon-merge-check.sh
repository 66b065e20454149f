#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A version a merge makes is checked against the clients that follow the
# image's newest version (issue 18 §2: preserve and protect rules checked
# when a version is made, not at the next boot of every PC), by the daemon,
# whoever asked for the merge (tabulactl, a merge window, a maintenance
# finish): vm01 wipes its disk's partition table and is merged into demo;
# pc02 preserves partition 2, which demo@2 lacks: the daemon logs a warning
# naming the rule, the version and the way back, and records a
# client-unservable event; pc03, pinned to demo@1, is not concerned.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require sfdisk jq

M=1048576
state=$TB_TMP/state
truncate -s $((8 * M)) "$TB_TMP/v1.raw"
printf 'label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=8192, type=83\n' |
  sfdisk -q "$TB_TMP/v1.raw"
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "vm01": { "image": "demo", "policy": "persist" },
    "pc02": { "image": "demo", "policy": "rollback", "preserve": ["partition:2"] },
    "pc03": { "image": "demo", "version": 1, "preserve": ["partition:2"] }
  }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.raw" >/dev/null || tb_fail "import"
td_start "$conf"
sock=$state/nbd.sock

echo "== vm01 wipes its partition table, and is merged"
"$TB_IO" -s "$sock" -e vm01 zero:0:4096 || tb_fail "vm01's write"
tb_wait_idle "$state" vm01
tctl --json merge vm01 --into demo >"$TB_TMP/merge.json" 2>"$TB_TMP/merge.err" ||
  tb_fail "merge: $(cat "$TB_TMP/merge.json" "$TB_TMP/merge.err")"
jq -e '.image == "demo" and .version == 2' "$TB_TMP/merge.json" >/dev/null ||
  tb_fail "merge result: $(cat "$TB_TMP/merge.json")"

echo "== the daemon checked demo@2 for pc02, not for pc03"
i=0
until [ "$(tb_count_events client-unservable pc02 "$state")" -ge 1 ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "no client-unservable event for pc02 after the merge: $(tail -n 5 "$state/events.jsonl")"
  sleep 0.1
done
jq -se 'map(select(.type == "client-unservable" and .client == "pc02")) | length == 1 and
    (.[0] | .after == "merge" and .image == "demo" and .version == 2 and
      (.error | test("clients\\.pc02\\.preserve\\[0\\]")))' "$state/events.jsonl" >/dev/null ||
  tb_fail "the event must name the rule and the version: $(grep client-unservable "$state/events.jsonl")"
grep -q "after the merge of vm01 into demo@2, client pc02 is refused: .*to go back: tabulactl image promote demo@1" \
  "$TB_TMP/daemon.log" || tb_fail "no warning naming the way back in the daemon's log: $(tail -n 5 "$TB_TMP/daemon.log")"
[ "$(tb_count_events client-unservable pc03 "$state")" = 0 ] ||
  tb_fail "pc03 is pinned to demo@1: the new version does not concern it"
[ "$(tb_count_events client-unservable vm01 "$state")" = 0 ] ||
  tb_fail "vm01 has no preserve rule"
td_stop
echo "PASS: $0"
