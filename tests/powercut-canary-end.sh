#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts while a canary ends (tests/powercut.c below the state directory).
# demo@2 runs as a canary for group lab: lc01 (rollback) and lp01 (persist)
# are in lab, oc01 is not (held on demo@1).  lc01 boots one session after
# another.  In the withdraw case demo@2 lacks the health marker and
# withdraw_after is 2: the second strike withdraws it (lab pinned back to
# demo@1, lp01's overlay, built on demo@2, refreshed); in the promote case
# it has the marker and promote_after is 2: the second healthy session
# promotes it (oc01's pin lifted).  Each of those is several writes: the
# clients' mailboxes, then the canary record.  The power is cut at a random
# moment, at the next sync call after it, at the next mailbox write or at
# the next write of the canary record (pc_arm); TB_POWERCUT_CUTS cuts per
# case (default 3, in the default mode and then in --strict: 12 in all).
# After each cut the daemon starts, lc01 boots again until the canary has
# ended (at most 20 sessions), and then the end is whole: the record says
# withdrawn (promoted), and every client's next session runs the version it
# must, demo@1 for all three (demo@2 for all three).  Never a lab client
# left on a withdrawn version, or oc01 held back after a promotion.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
pc_init
cuts=$(pc_cuts 3)
T=$TB_TMP

clients='{ "lc01": { "image": "demo", "group": "lab" },
  "lp01": { "image": "demo", "group": "lab", "policy": "persist" },
  "oc01": { "image": "demo" } }'
prep=$PC_STATE/disk/state
st=$PC_MNT/state
tw_master "$T/master.img"
echo ok >"$T/marker"
cp "$T/master.img" "$T/healthy.img"
debugfs -w -R "write $T/marker healthy" "$T/healthy.img" >/dev/null 2>&1

# prepare CASE MASTER2 PROMOTE WITHDRAW: demo@1, demo@2 from MASTER2, the
# canary started for lab, lp01's first session (its persist overlay on
# demo@2); the disk kept as $TB_TMP/CASE.
prepare()
{
  rm -rf "$PC_STATE/disk"
  mkdir -p "$PC_STATE/disk"
  extra="\"groups\": { \"lab\": { \"policy\": \"rollback\" } },
  \"watchdog\": { \"health\": { \"marker\": \"/healthy\", \"strikes\": 1000 },
                \"canary\": { \"promote_after\": $3, \"withdraw_after\": $4 } }"
  tb_import "$prep" demo "$T/master.img"
  tb_import "$prep" demo "$2"
  td_config "$T/prep.json" "$prep" "$clients" "$extra"
  td_config "$T/$1.json" "$st" "$clients" "$extra"
  td_start "$T/prep.json"
  tctl image promote demo@2 --canary lab >"$T/promote.out" 2>&1 ||
    tb_fail "promote --canary: $(cat "$T/promote.out")"
  "$TB_IO" -s "$prep/nbd.sock" -e lp01 rewrite:0:4096 >/dev/null || tb_fail "lp01's first session"
  tb_wait_idle "$prep" lp01
  td_stop
  jq -e '.state == "running" and .version == 2' "$prep/watchdog/canary-demo.json" >/dev/null ||
    tb_fail "$1: the canary does not run: $(cat "$prep/watchdog/canary-demo.json")"
  jq -e '.version == 2' "$prep/clients/lp01/session.json" >/dev/null ||
    tb_fail "$1: lp01 is not on demo@2: $(cat "$prep/clients/lp01/session.json")"
  pc_snapshot "$1"
}

# session ID: one session of ID (a rewrite of bytes already there), then
# wait until the watchdog is done with its end (clients/ID/watchdog.json).
session()
{
  "$TB_IO" -s "$st/nbd.sock" -e "$1" rewrite:0:4096 >/dev/null 2>&1 || return 1
  _s=$(jq -r .session "$st/clients/$1/session.json" 2>/dev/null) || return 1
  _j=0
  until jq -e --argjson s "$_s" '.ended >= $s' "$st/clients/$1/watchdog.json" >/dev/null 2>&1; do
    _j=$((_j + 1))
    [ $_j -lt 100 ] || return 0
    sleep 0.1
  done
}

boots()
{
  while :; do session lc01 || sleep 0.1; done
}

# version_of ID: the version ID's next session runs.
version_of()
{
  "$TB_IO" -s "$st/nbd.sock" -e "$1" rewrite:0:4096 >/dev/null 2>&1 || tb_fail "$WHAT: a session of $1"
  tb_wait_idle "$st" "$1"
  jq -r .version "$st/clients/$1/session.json"
}

prepare withdraw "$T/master.img" 1000 2
prepare promote "$T/healthy.img" 2 1000

for flag in "" --strict; do
  for case in withdraw promote; do
    if [ $case = withdraw ]; then final=withdrawn want=1; else final=promoted want=2; fi
    cp "$T/$case.json" "$T/tabula.json"
    i=1
    while [ $i -le "$cuts" ]; do
      WHAT="$case, cut $i${flag:+ ($flag)}"
      pc_restore $case
      pc_mount $flag
      pc_daemon_start
      boots &
      echo $! >"$T/boots.bgpid"
      pc_pause
      case $((i % 4)) in
      1) pc_arm && WHAT="$WHAT, at a sync call" ;;
      2) pc_arm mailbox.json.tmp 10 && WHAT="$WHAT, at a mailbox write" ;;
      3) pc_arm canary-demo.json.tmp 10 && WHAT="$WHAT, at the canary record's write" ;;
      esac
      pc_bg_stop boots
      pc_daemon_cut
      pc_mount $flag
      pc_daemon_start
      tctl --json status >"$T/status.json" 2>"$T/status.err" ||
        tb_fail "$WHAT: tabulactl status: $(cat "$T/status.err")"
      jq -e '.nbdkit.state == "running"' "$T/status.json" >/dev/null ||
        tb_fail "$WHAT: status is not sane: $(cat "$T/status.json")"
      _n=0
      until jq -e --arg f $final '.state == $f' "$st/watchdog/canary-demo.json" >/dev/null 2>&1; do
        _n=$((_n + 1))
        [ $_n -le 20 ] ||
          tb_fail "$WHAT: the canary did not end in 20 sessions: $(cat "$st/watchdog/canary-demo.json")"
        session lc01 || tb_fail "$WHAT: a session of lc01"
      done
      for id in lc01 lp01 oc01; do
        v=$(version_of $id)
        [ "$v" = $want ] ||
          tb_fail "$WHAT: $id runs demo@$v after the canary was $final (want demo@$want): mailbox $(cat "$st/clients/$id/mailbox.json" 2>/dev/null)"
      done
      td_stop
      pc_daemon_cut
      i=$((i + 1))
    done
    echo "== $case${flag:+ ($flag)}: $cuts cuts, the canary $final whole each time"
  done
done
exit 0
