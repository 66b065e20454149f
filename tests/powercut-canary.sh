#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under the canary's session counting (tests/powercut.c below the
# state directory).  demo@2 runs as a canary for group lab (promote_after and
# withdraw_after too high to end it); lab's client lc01 (rollback) boots one
# session after another, each ending without the health marker: a strike
# judged into clients/lc01/health.json, then counted into
# watchdog/canary-demo.json.  The power is cut at a random moment (0.1 to
# 0.9 s in), or at the first sync call after it, or at the next write of the
# canary record or of health.json (pc_arm: inside the judging or the
# counting); TB_POWERCUT_CUTS cuts (default 8, in the default mode and then
# in --strict: 16).  After each cut the daemon starts,
# tabulactl status is sane, and the canary record, once the start has judged
# what the cut left unjudged, counts each session of lc01 that ended on
# demo@2 exactly once: healthy + strikes = the sessions that
# ran, never more (a session judged again at the start counted twice) and,
# within 30 s, never fewer (a cut between health.json and the canary record
# lost the count: the start saw the session judged and did not count it).
# The sessions that ran are counted by the test itself, outside the mount: a
# session whose first write was acknowledged, and the one the cut left
# active (the restart ends it as an orphan).  Not the session counter: a cut
# inside a turn, after clients/lc01/seq and before session.json, uses up a
# number no session ran under (lib/session.c), and the next boot takes the
# one after it.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
pc_init
cuts=$(pc_cuts 8)
T=$TB_TMP

clients='{ "lc01": { "image": "demo", "group": "lab" }, "oc01": { "image": "demo" } }'
extra='"groups": { "lab": { "policy": "rollback" } },
  "watchdog": { "health": { "marker": "/healthy", "strikes": 1000 },
                "canary": { "promote_after": 1000, "withdraw_after": 1000 } }'
prep=$PC_STATE/disk/state
st=$PC_MNT/state
tw_master "$T/master.img"
tb_import "$prep" demo "$T/master.img"
echo v2 >"$T/v2.txt"
cp "$T/master.img" "$T/v2.img"
debugfs -w -R "write $T/v2.txt v2.txt" "$T/v2.img" >/dev/null 2>&1
tb_import "$prep" demo "$T/v2.img"
td_config "$T/prep.json" "$prep" "$clients" "$extra"
td_config "$T/tabula.json" "$st" "$clients" "$extra"
td_start "$T/prep.json"
tctl image promote demo@2 --canary lab >"$T/promote.out" 2>&1 || tb_fail "promote --canary: $(cat "$T/promote.out")"
td_stop
jq -e '.state == "running" and .version == 2' "$prep/watchdog/canary-demo.json" >/dev/null ||
  tb_fail "the canary does not run: $(cat "$prep/watchdog/canary-demo.json")"
pc_snapshot

# lc01's sessions, one after another, until the cut; each waits until the
# watchdog has finished the previous one (clients/lc01/watchdog.json), as a
# PC's reboots do: the watchdog's queue is in memory, and the start judges
# the last session end it had not finished, not several queued behind it
# (README, Durability: a limit).
sessions()
{
  (
    while :; do
      "$TB_IO" -s "$st/nbd.sock" -e lc01 rewrite:0:4096 >/dev/null 2>&1 || { sleep 0.1; continue; }
      _s=$(jq -r .session "$st/clients/lc01/session.json" 2>/dev/null) || continue
      echo "$_s" >>"$T/ran"
      _j=0
      until jq -e --argjson s "$_s" '.ended >= $s' "$st/clients/lc01/watchdog.json" >/dev/null 2>&1; do
        _j=$((_j + 1))
        [ $_j -lt 100 ] || break
        sleep 0.1
      done
    done
  ) &
  echo $! >"$T/sessions.bgpid"
}

# The sessions of lc01 that ran, all on demo@2 (the first session is the
# first after the canary's start): those $T/ran lists, and the one the
# record on the disk names after a cut (ended, or active: an orphan the
# restart ends).  Called after the remount, before the daemon starts.
ended()
{
  jq -r '.session // empty' "$st/clients/lc01/session.json" >>"$T/ran" 2>/dev/null || true
  sort -un "$T/ran" | grep -c . || true
}

counted()
{
  jq -r '.healthy + .strikes' "$st/watchdog/canary-demo.json" 2>/dev/null || echo -1
}

for flag in "" --strict; do
  pc_restore
  rm -f "$T/ran"
  pc_mount $flag
  pc_daemon_start
  i=1
  while [ $i -le "$cuts" ]; do
    WHAT="cut $i${flag:+ ($flag)}"
    sessions
    pc_pause
    case $((i % 4)) in
    1) pc_arm && WHAT="$WHAT, at a sync call" ;;
    2) pc_arm canary-demo.json.tmp 20 && WHAT="$WHAT, at the canary record's write" ;;
    3) pc_arm health.json.tmp 20 && WHAT="$WHAT, at health.json's write" ;;
    esac
    pc_bg_stop sessions
    pc_daemon_cut
    mv "$T/daemon.log" "$T/daemon-cut.txt"
    pc_mount $flag
    want=$(ended)
    pc_daemon_start
    tctl --json status >"$T/status.json" 2>"$T/status.err" || tb_fail "$WHAT: tabulactl status: $(cat "$T/status.err")"
    jq -e '.nbdkit.state == "running"' "$T/status.json" >/dev/null ||
      tb_fail "$WHAT: status is not sane: $(cat "$T/status.json")"
    jq -e '.state == "running" and .version == 2' "$st/watchdog/canary-demo.json" >/dev/null ||
      tb_fail "$WHAT: the canary record: $(cat "$st/watchdog/canary-demo.json")"
    _i=0
    while [ "$(counted)" -lt "$want" ]; do
      _i=$((_i + 1))
      [ $_i -lt 300 ] ||
        tb_fail "$WHAT: the canary counted $(counted) of lc01's $want ended sessions: $(cat "$st/watchdog/canary-demo.json")"
      sleep 0.1
    done
    [ "$(counted)" -eq "$want" ] ||
      tb_fail "$WHAT: the canary counted $(counted) sessions, lc01 ended $want: $(cat "$st/watchdog/canary-demo.json")"
    i=$((i + 1))
  done
  td_stop
  pc_daemon_cut
  echo "== ${flag:-default}: $cuts cuts, $want sessions counted once each"
done
