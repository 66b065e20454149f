#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under webhook delivery (tests/powercut.c below the state
# directory).  A writer appends "test" events (numbered, never reused) to
# events.jsonl the way every writer of the journal does (no fsync), the
# daemon POSTs each one to a receiver on loopback, and the power is cut at a
# random moment (0.1 to 0.9 s in; every other cut at the first sync call
# after it, pc_arm); TB_POWERCUT_CUTS rounds (default 12, in
# the default mode and then in --strict: 24 cuts).  The journal is not
# fsynced per event (README, Durability): a cut loses its newest lines, and
# that is all it may lose.  After each cut, before the daemon starts, the
# saved position (STATE/webhooks/HASH.pos) parses and is not past the end of
# the journal the cut left; then the daemon starts, tabulactl status is sane,
# and once the receiver has caught up:
#   - every test event the journal holds was delivered (none lost);
#   - every event delivered is in the journal (the worker makes a line
#     durable before it delivers it: without that a receiver got events the
#     journal then lost, and the position ran past the journal's end);
#   - duplicates are at most one per cut (at least once: the event whose
#     answer came and whose position save the cut took).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
tb_setup
tb_require python3 jq
pc_init
cuts=$(pc_cuts 12)

got=$TB_TMP/got.txt
td_receiver "$got"
port=$TD_RECEIVER_PORT

tb_make_file "$TB_TMP/v1.img" $((1024 * 1024)) 1
prep=$PC_STATE/disk/state
st=$PC_MNT/state
hooks="\"webhooks\": [ { \"url\": \"http://127.0.0.1:$port/hook\", \"timeout\": \"10s\" } ]"
td_config "$TB_TMP/prep.json" "$prep" '{ "pc01": { "image": "demo" } }' "$hooks"
td_config "$TB_TMP/tabula.json" "$st" '{ "pc01": { "image": "demo" } }' "$hooks"
chmod 600 "$TB_TMP/prep.json" "$TB_TMP/tabula.json"
tb_import "$prep" demo "$TB_TMP/v1.img"
td_start "$TB_TMP/prep.json"
td_stop
pc_snapshot
echo 0 >"$TB_TMP/n"

# The writer: test events, numbered on from $TB_TMP/n (outside the mount).
emit()
{
  (
    n=$(cat "$TB_TMP/n")
    while :; do
      n=$((n + 1))
      echo $n >"$TB_TMP/n.new" # counted first: a kill skips a number, never reuses one
      mv "$TB_TMP/n.new" "$TB_TMP/n"
      printf '{"time":"2026-12-01T00:00:00.000Z","ts":0,"type":"test","n":%d}\n' $n >>"$st/events.jsonl"
      [ $((n % 5)) != 0 ] || sleep 0.02
    done
  ) &
  echo $! >"$TB_TMP/emit.bgpid"
}

# The test events the journal holds (every generation), one number a line.
in_journal()
{
  cat "$st"/events.jsonl* 2>/dev/null | tr -d '\000' | grep '"type":"test"' |
    sed -n 's/.*"n":\([0-9]*\).*/\1/p' | sort
}

check_position()
{
  for p in "$st"/webhooks/*.pos; do
    [ -f "$p" ] || continue
    off=$(jq -e -r '.offset' "$p" 2>/dev/null) || tb_fail "$WHAT: $p does not parse: $(cat "$p")"
    size=$(stat -c %s "$st/events.jsonl" 2>/dev/null || echo 0)
    [ "$off" -le "$size" ] ||
      tb_fail "$WHAT: the saved position ($off) is past the end of the journal the cut left ($size bytes)"
  done
}

check()
{
  tctl --json status >"$TB_TMP/status.json" 2>"$TB_TMP/status.err" || tb_fail "$WHAT: tabulactl status: $(cat "$TB_TMP/status.err")"
  jq -e '.nbdkit.state == "running"' "$TB_TMP/status.json" >/dev/null ||
    tb_fail "$WHAT: status is not sane: $(cat "$TB_TMP/status.json")"
  in_journal >"$TB_TMP/journal.txt"
  sort "$got" 2>/dev/null | uniq >"$TB_TMP/delivered.txt"
  phantom=$(comm -13 "$TB_TMP/journal.txt" "$TB_TMP/delivered.txt" | head -n 5 | tr '\n' ' ')
  [ -z "$phantom" ] ||
    tb_fail "$WHAT: events delivered that the journal does not hold (lost by the cut after their delivery): $phantom"
  _i=0
  while lost=$(comm -23 "$TB_TMP/journal.txt" "$TB_TMP/delivered.txt" | head -n 5 | tr '\n' ' ') &&
    [ -n "$lost" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$WHAT: events in the journal never delivered: $lost ($(jq -c .webhooks "$TB_TMP/status.json"))"
    sleep 0.1
    sort "$got" | uniq >"$TB_TMP/delivered.txt"
  done
  dups=$(($(wc -l <"$got") - $(wc -l <"$TB_TMP/delivered.txt")))
  [ "$dups" -le "$ncuts" ] ||
    tb_fail "$WHAT: $dups events delivered twice after $ncuts cuts: $(sort -n "$got" | uniq -d | head -n 10 | tr '\n' ' ')"
}

for flag in "" --strict; do
  ncuts=0
  rm -f "$got"
  : >"$got"
  pc_restore
  pc_mount $flag
  pc_daemon_start
  i=1
  while [ $i -le "$cuts" ]; do
    WHAT="cut $i${flag:+ ($flag)}"
    emit
    pc_pause
    if [ $((i % 2)) = 0 ]; then
      pc_arm # inside a write: the worker's fdatasync or its position's save
      WHAT="$WHAT, at a sync call"
    fi
    pc_bg_stop emit
    pc_daemon_cut
    ncuts=$((ncuts + 1))
    mv "$TB_TMP/daemon.log" "$TB_TMP/daemon-cut.txt"
    pc_mount $flag
    check_position
    pc_daemon_start
    check
    i=$((i + 1))
  done
  td_stop
  pc_daemon_cut
  echo "== ${flag:-default}: $cuts cuts; $(wc -l <"$TB_TMP/journal.txt") test events kept by the journal, $(cat "$TB_TMP/n") written, $dups duplicates"
done
