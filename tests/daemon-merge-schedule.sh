#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Scheduled merges ("merge": {"into", "when"} of a client): the daemon merges
# the client's overlay into the image when the schedule comes due.
#  - nothing written yet: the turn is skipped (no empty version);
#  - due during a session: one merge-deferred event, and the merge runs as
#    soon as the session ends; the new version holds the session's writes and
#    a rollback client boots it;
#  - the next turns find nothing new (the merged client starts over on the
#    new version): skipped, no version 3;
#  - a bad "merge" section is refused with its path.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $((4 * 1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "vm01": { "image": "demo", "policy": "persist",
              "merge": { "into": "demo", "when": "every 2s", "note": "nightly" } },
    "pc01": { "image": "demo", "policy": "rollback" }
  }'
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null || tb_fail "import"
td_start "$conf"
sock=$state/nbd.sock
count() { tb_count_events "$1" vm01 "$state"; }
until_count() # TYPE N WHAT
{
  i=0
  until [ "$(count "$1")" -ge "$2" ]; do
    i=$((i + 1)); [ $i -lt 150 ] || tb_fail "$3: no $1 event: $(tail -n 4 "$state/events.jsonl")"
    sleep 0.1
  done
}

echo "== nothing written yet: skipped"
until_count merge-skipped 1 "first turn"
[ "$(count merge-start)" = 0 ] || tb_fail "an empty overlay was merged"

echo "== due during a session: deferred, merged when it ends"
ln -s "$sock" "$TB_TMP/d.sock" # tb_hold's NAME.sock
tb_hold d s1 -e vm01 write:65536:65536:7
until_count merge-deferred 1 "turn during the session"
tctl --json client vm01 | jq -e '.merge.into == "demo" and .merge.when == "every 2s" and
  .merge_waiting == true and (.next_merge | type) == "string"' >/dev/null ||
  tb_fail "tabulactl client vm01 --json: $(tctl --json client vm01)"
tctl client vm01 | grep -q "^merge: *into demo, every 2s" || tb_fail "tabulactl client vm01: $(tctl client vm01)"
tctl client vm01 | grep -q "waiting for the session to end" || tb_fail "tabulactl client vm01 must say the merge waits"
sleep 2.5 # another turn: still one deferral
[ "$(count merge-deferred)" = 1 ] || tb_fail "merge-deferred $(count merge-deferred) times"
[ "$(count merge-start)" = 0 ] || tb_fail "merged during the session"
tb_release s1
until_count merge 1 "merge after the session"
tb_event "$state" '.type == "merge" and .client == "vm01" and .image == "demo" and
  .version == 2 and .client_moved == true' "scheduled merge"
tctl --json image list | jq -e '.. | objects | select(.note? == "nightly")' >/dev/null ||
  tb_fail "version 2 does not carry the note: $(tctl --json image list)"
"$TB_IO" -s "$sock" -e pc01 read:65536:65536:7 || tb_fail "pc01 does not boot the merged data"

echo "== later turns: nothing new, skipped"
skipped=$(count merge-skipped)
until_count merge-skipped $((skipped + 2)) "turns after the merge"
[ "$(count merge-start)" = 1 ] || tb_fail "merged again with nothing new"
[ ! -e "$state/images/demo/3.json" ] || tb_fail "an empty version 3 was made"

echo "== a bad merge section"
cp "$conf" "$TB_TMP/good.json"
jq '.clients.vm01.merge = { "into": "nope", "when": "every 2s" }' "$TB_TMP/good.json" >"$conf"
td_expect_fail "merge into an unknown image" 'clients\.vm01\.merge\.into: image "nope" is not listed' tctl reload
jq '.clients.vm01.merge = { "into": "demo", "when": "sometimes" }' "$TB_TMP/good.json" >"$conf"
td_expect_fail "merge with a bad schedule" 'clients\.vm01\.merge\.when' tctl reload
jq '.clients.vm01.merge = { "when": "daily 03:00" }' "$TB_TMP/good.json" >"$conf"
td_expect_fail "merge without into" 'clients\.vm01\.merge: needs "into"' tctl reload
cp "$TB_TMP/good.json" "$conf"
td_stop
tb_check_logs
exit 0
