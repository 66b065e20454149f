#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A webhook whose journal position cannot be saved (the state disk fails or
# fills; here STATE/webhooks is made read-only under the daemon) delivers
# nothing more than the event whose save failed:
#  - while the position cannot be saved, at most one more event arrives and
#    the log says why the others wait;
#  - the daemon killed (kill -9) in that state and started again with the
#    directory writable: every event arrives, and only that one twice (at
#    least once, one duplicate per crash; without the hold every event
#    delivered since the failure came again);
#  - writable again without a restart: the waiting events arrive, once each.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup
tb_require python3 jq

state=$TB_TMP/state
journal=$state/events.jsonl
got=$TB_TMP/got.txt
td_receiver "$got"
port=$TD_RECEIVER_PORT
: >"$got"

emit()
{
  for _n in $(seq "$1" "$2"); do
    printf '{"time":"2026-12-01T00:00:00.000Z","ts":0,"type":"test","n":%d}\n' "$_n" >>"$journal"
  done
}

# Wait until events 1..N have all arrived.
wait_got()
{
  _i=0
  until [ "$(sort -un "$got" | wc -l)" -ge "$1" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$2: $(sort -un "$got" | wc -l) of $1 events arrived; $(tctl --json status | jq -c .webhooks)"
    sleep 0.1
  done
  [ "$(sort -un "$got" | tr '\n' ' ')" = "$(seq 1 "$1" | tr '\n' ' ')" ] ||
    tb_fail "$2: received $(tr '\n' ' ' <"$got")"
}

readonly_positions()
{
  mount --bind "$state/webhooks" "$state/webhooks" &&
    mount -o remount,bind,ro "$state/webhooks" ||
    tb_skip "cannot make a read-only bind mount here"
  TB_MOUNTS="$TB_MOUNTS $state/webhooks"
}

writable_positions()
{
  umount "$state/webhooks" || tb_fail "cannot undo the read-only bind mount"
}

tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{ "pc01": { "image": "demo" } }' \
  "\"webhooks\": [ { \"url\": \"http://127.0.0.1:$port/hook\", \"timeout\": \"10s\" } ]"
TD_CONF=$conf
tctl image import demo "$TB_TMP/v1.img" >/dev/null
td_start "$conf"
emit 1 5
wait_got 5 "before the failure"
ls "$state"/webhooks/*.pos >/dev/null 2>&1 || tb_fail "no position file in $state/webhooks"

echo "== the position cannot be saved: at most one more event is delivered"
readonly_positions
emit 6 15
i=0
until grep -q "cannot save its journal position" "$TB_TMP/daemon.log"; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "the daemon did not say it cannot save the position: $(tail -n 5 "$TB_TMP/daemon.log")"
  sleep 0.1
done
grep "cannot save its journal position" "$TB_TMP/daemon.log" | grep -q "wait" ||
  tb_fail "the message must say the events wait: $(grep 'cannot save' "$TB_TMP/daemon.log")"
sleep 3
n=$(sort -un "$got" | wc -l)
[ "$n" -le 6 ] || tb_fail "$n events delivered while the position could not be saved (at most 6)"

echo "== kill -9, writable again, a restart: every event, at most one twice"
td_kill9
writable_positions
td_start "$conf"
wait_got 15 "after the restart"
sleep 1.5
dups=$(($(wc -l <"$got") - $(sort -un "$got" | wc -l)))
[ "$dups" -le 1 ] ||
  tb_fail "$dups events delivered twice after one crash: $(sort -n "$got" | uniq -d | tr '\n' ' ')"

echo "== writable again without a restart: the waiting events, once each"
readonly_positions
emit 16 20
sleep 2.5
writable_positions
wait_got 20 "once the position saves again"
sleep 1.5
dups2=$(($(wc -l <"$got") - $(sort -un "$got" | wc -l)))
[ "$dups2" -eq "$dups" ] ||
  tb_fail "events delivered twice without a crash: $(sort -n "$got" | uniq -d | tr '\n' ' ')"
grep -q "its journal position is saved again" "$TB_TMP/daemon.log" ||
  tb_fail "the log must say the position is saved again: $(tail -n 5 "$TB_TMP/daemon.log")"
td_stop
