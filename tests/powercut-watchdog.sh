#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Power cuts under the watchdog (tests/powercut.c below the state directory),
# with sessions that really write into the guest's ext4 (nbdfuse + debugfs -w):
#   good      a healthy session of a persist client: its overlay is saved as
#             the last known good (clients/ID/good/overlay) and health.json
#             records it;
#   fallback  the last strike: the good overlay is put back, the current one
#             kept as a retained session, the client pinned, health.json reset;
#   quarantine  a rule's quarantine: the scanned overlay moves into
#             clients/ID/quarantine/N with its note;
#   canary    promote demo@2 --canary lab: the group's clients pinned to 2,
#             the others held on 1, then watchdog/canary-demo.json.
# Each case runs once uncut to count its sync calls, then is cut at sync calls
# spread over the operation (TB_POWERCUT_CUTS per case, default 4: 24 cuts), in the
# default mode and in --strict (TB_POWERCUT_CASES="good fallback:strict" runs
# only those).  After each cut the simulator is mounted again, the daemon
# starts, and:
#   - health.json parses; good/overlay is byte for byte the overlay of the
#     session health.json names as the last good one (the copy and its record
#     agree); no temporary is left; no retained session shares the live
#     overlay's file;
#   - the fall-back works: the client boots the good session's files, or its
#     own, never a clean master; if its own, the next strike brings the good
#     one back;
#   - no quarantine is half moved, the live overlay is never a quarantined
#     one, and the quarantined client's next session is clean;
#   - the canary record is whole and its pins are there, or absent and the
#     promote runs again;
#   - a session whose end is recorded was scanned and judged (the watchdog's
#     queue is in memory: the start scans a session end the cut left unscanned).
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"
. "$abs_top_srcdir/tests/powercut-functions.sh"
pc_init
cuts=$(pc_cuts 4)

echo "ok" >"$T/marker"
echo "MZ not really" >"$T/evil.exe"
clients='{
  "pc01": { "image": "demo", "policy": "persist",
            "watchdog": { "health": { "marker": "/healthy", "volume": "whole-ext4", "strikes": 2 } } },
  "qc01": { "image": "demo", "policy": "persist",
            "watchdog": { "rules": [
              { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "quarantine" } ] } },
  "lc01": { "image": "demo", "group": "lab" },
  "oc01": { "image": "demo" }
}'
groups='"groups": { "lab": { "policy": "rollback" } }'
prep=$PC_STATE/disk/state
tw_master "$T/master.img"
tb_import "$prep" demo "$T/master.img"
td_config "$T/prep.json" "$prep" "$clients" "$groups"
td_config "$T/tabula.json" "$PC_MNT/state" "$clients" "$groups"
td_start "$T/prep.json"
# pc01: session 1 healthy (good1.txt): the last known good.
tw_session "$prep" pc01 "write $T/marker healthy
write $T/marker good1.txt"
tw_wait "$prep" '.type == "healthy" and .client == "pc01" and .session == 1 and .saved_overlay' "healthy 1"
# qc01: one session, so the quarantine case has an overlay with history.
tw_session "$prep" qc01 "write $T/marker mine.txt"
until jq -e '.last_good.session == 1' "$prep/clients/pc01/health.json" >/dev/null 2>&1; do sleep 0.1; done
td_stop
cp -a "$PC_STATE/disk" "$T/p-good"
# The good copy of session 1, for the checks.
cp "$prep/clients/pc01/good/overlay" "$T/good1.ovl"
td_start "$T/prep.json"
# pc01: session 2 unhealthy (bad-2.txt, the marker not touched): one strike of 2.
tw_session "$prep" pc01 "write $T/marker bad-2.txt"
tw_wait "$prep" '.type == "strike" and .client == "pc01" and .session == 2' "strike 1"
until jq -e '.strikes == 1' "$prep/clients/pc01/health.json" >/dev/null 2>&1; do sleep 0.1; done
td_stop
cp -a "$PC_STATE/disk" "$T/p-fall"
# The canary case: demo@2 beside demo@1, nothing promoted yet.
cp -a "$T/p-good" "$T/p-canary"
cp "$T/master.img" "$T/v2.img"
debugfs -w -R "write $T/marker v2.txt" "$T/v2.img" >/dev/null 2>&1
tb_import "$T/p-canary/state" demo "$T/v2.img"
rm -rf "$PC_STATE/disk"
st=$PC_MNT/state

reset_disk()
{
  rm -rf "$PC_STATE/disk"
  case $1 in
  fallback) cp -a "$T/p-fall" "$PC_STATE/disk" ;;
  canary) cp -a "$T/p-canary" "$PC_STATE/disk" ;;
  *) cp -a "$T/p-good" "$PC_STATE/disk" ;;
  esac
}

# ev_count JQ-COND: events that match, read as a cut may leave the journal
# (a torn last line, a NUL run: such lines are skipped).
ev_count()
{
  tr -d '\000' 2>/dev/null <"$st/events.jsonl" | jq -cR "fromjson? | select($1)" 2>/dev/null | wc -l
}

# ev_wait JQ-COND N WHAT: until more than N events match (30 s).
ev_wait()
{
  _i=0
  until [ "$(ev_count "$1")" -gt "$2" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$WHAT: $3: no event with $1 within 30 s: $(tail -n 5 "$st/events.jsonl")"
    sleep 0.1
  done
}

# settle ID: after the start, the session the cut left active is ended (the
# plugin's sweep, within a second or two), and the watchdog is done with the
# end of ID's last session (clients/ID/watchdog.json: a session that ended
# before the cut and was not scanned is scanned at the start); bounded.
settle()
{
  tb_wait_idle "$st" "$1"
  _i=0
  until [ "$(jq -r '.ended // 0' "$st/clients/$1/watchdog.json" 2>/dev/null || echo 0)" -ge \
    "$(jq -r '.session // 0' "$st/clients/$1/session.json" 2>/dev/null || echo 0)" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || tb_fail "$WHAT: the watchdog did not scan the end of $1's last session: $(cat "$st/clients/$1/session.json")"
    sleep 0.1
  done
  sleep 0.3
}

# ended ID N: had session N of ID ended before the cut (its record on the
# disk the cut left says so: not a session the start ended as an orphan)?
ended()
{
  jq -e ".state != \"active\" and .session >= $2" "$T/cut-records/$1.json" >/dev/null 2>&1
}

# A session of ID that may be cut: nothing fails, every step is bounded.
loose_session()
{
  mkdir -p "$T/nf"
  nbdfuse "$T/nf/disk" "nbd+unix:///$1?socket=$st/nbd.sock" >"$T/nbdfuse.log" 2>&1 &
  _nf=$!
  _i=0
  until [ -f "$T/nf/disk" ]; do
    _i=$((_i + 1))
    kill -0 $_nf 2>/dev/null && [ $_i -lt 100 ] || break
    sleep 0.1
  done
  [ -f "$T/nf/disk" ] && printf '%s\n' "$2" | timeout 60 debugfs -w "$T/nf/disk" >"$T/debugfs.log" 2>&1
  fusermount3 -u "$T/nf" 2>/dev/null || fusermount3 -uz "$T/nf" 2>/dev/null || true
  _i=0
  while kill -0 $_nf 2>/dev/null && [ $_i -lt 100 ]; do
    _i=$((_i + 1))
    sleep 0.1
  done
  kill -9 $_nf 2>/dev/null || true
  wait $_nf 2>/dev/null || true
  return 0
}

# until an event matches COND, the simulator is gone, or 30 s.
loose_wait()
{
  _i=0
  until [ "$(ev_count "$1")" -gt 0 ]; do
    [ -f "$TB_TMP/powercut.bgpid" ] && kill -0 "$(cat "$TB_TMP/powercut.bgpid")" 2>/dev/null || return 0
    _i=$((_i + 1))
    [ $_i -lt 300 ] || return 0
    sleep 0.1
  done
}

# op CASE: the operation, up to the watchdog's last write for it.
op()
{
  case $1 in
  good)
    loose_session pc01 "rm healthy
write $T/marker healthy
write $T/marker good2.txt"
    loose_wait '.type == "healthy" and .client == "pc01" and .session == 2'
    ;;
  fallback)
    loose_session pc01 "write $T/marker bad-3.txt"
    loose_wait '.type == "last-known-good" and .client == "pc01"'
    ;;
  canary)
    tctl image promote demo@2 --canary lab >"$T/promote.out" 2>&1 || true
    ;;
  quarantine)
    loose_session qc01 "write $T/evil.exe apps/evil.exe"
    loose_wait '.type == "quarantine" and .client == "qc01"'
    ;;
  esac
  # health.json (or the quarantine) is written just after the event
  sleep 0.5
}

ls_of() # ID: the root directory the next session of ID shows
{
  tw_read "$st" "$1" "ls -l /" >"$T/ls" 2>&1
}

# Every file of clients/ID: temporaries, and retained sessions that are the
# live overlay's file (a restore point that would change with the guest).
check_files()
{
  _c=$st/clients/$1
  _left=$({ ls -A "$_c"; ls -A "$_c/good" 2>/dev/null; } | grep -E 'tmp|^overlay\.|^next-' || true)
  [ -z "$_left" ] || tb_fail "$WHAT: a temporary is left in clients/$1: $_left"
  if [ -f "$_c/overlay" ]; then
    _ino=$(stat -c %i "$_c/overlay")
    for _s in "$_c"/sessions/* "$_c"/quarantine/*/overlay; do
      [ -f "$_s" ] || continue
      [ "$(stat -c %i "$_s")" != "$_ino" ] ||
        tb_fail "$WHAT: ${_s#"$st"/} is the live overlay's file"
    done
  fi
  return 0
}

check_health_file()
{
  h=$st/clients/pc01/health.json
  jq -e 'type == "object"' "$h" >/dev/null 2>&1 || tb_fail "$WHAT: health.json is not valid: $(cat "$h")"
  good=$(jq -r '.last_good.session' "$h")
  case $good in
  1) ref=$T/good1.ovl ;;
  2) ref=$T/good2.ovl ;;
  *) tb_fail "$WHAT: health.json names session $good as the last good one: $(cat "$h")" ;;
  esac
  jq -e '.last_good.overlay' "$h" >/dev/null || tb_fail "$WHAT: health.json has no good overlay: $(cat "$h")"
  cmp -s "$ref" "$st/clients/pc01/good/overlay" ||
    tb_fail "$WHAT: good/overlay is not the overlay of session $good, the last good one health.json names"
}

# strike_session FILE: a session of pc01 without the marker (whatever the cut
# left of it) that writes FILE; returns once the watchdog judged it (the next
# session must not hold the client's lock while the fall-back runs).
strike_session()
{
  _n=$(ev_count '.type == "strike" and .client == "pc01"')
  tw_session "$st" pc01 "rm healthy
write $T/marker $1"
  ev_wait '.type == "strike" and .client == "pc01"' "$_n" "a session without the marker is a strike"
  sleep 0.5 # the fall-back and health.json come just after the strike
}

check()
{
  tctl --json status >"$T/status.json" 2>"$T/status.err" || tb_fail "$WHAT: tabulactl status: $(cat "$T/status.err")"
  jq -e '.nbdkit.state == "running"' "$T/status.json" >/dev/null ||
    tb_fail "$WHAT: status is not sane: $(cat "$T/status.json")"
  case $1 in
  good)
    settle pc01
    check_files pc01
    # good2.ovl: the overlay as session 2 left it (no session since).
    cp "$st/clients/pc01/overlay" "$T/good2.ovl"
    check_health_file
    ! ended pc01 2 || jq -e '.judged >= 2' "$h" >/dev/null ||
      tb_fail "$WHAT: session 2 ended, and it was never judged: $(cat "$h")"
    # The fall-back after the cut: sessions without the marker (whatever the
    # cut left of it) until the strikes (two, or one if the cut run's session
    # counted as one) bring the recorded session back.
    nf=$(ev_count '.type == "last-known-good" and .client == "pc01"')
    for k in 1 2 3; do
      [ "$(ev_count '.type == "last-known-good" and .client == "pc01"')" -gt "$nf" ] && break
      [ $k -lt 3 ] || tb_fail "$WHAT: no fall-back after two strikes: $(tail -n 5 "$st/events.jsonl")"
      strike_session "after-$k.txt"
    done
    [ "$(ev_count '.type == "last-known-good" and .client == "pc01" and .overlay')" -gt "$nf" ] ||
      tb_fail "$WHAT: the fall-back did not put the good overlay back: $(tail -n 3 "$st/events.jsonl")"
    ls_of pc01
    grep -q good1.txt "$T/ls" || tb_fail "$WHAT: after the fall-back good1.txt is missing: $(cat "$T/ls")"
    ! grep -q after- "$T/ls" || tb_fail "$WHAT: after the fall-back the bad sessions' files are there: $(cat "$T/ls")"
    if [ "$good" = 2 ]; then
      grep -q good2.txt "$T/ls" || tb_fail "$WHAT: session 2 is the last good one, its good2.txt is missing"
    else
      ! grep -q good2.txt "$T/ls" || tb_fail "$WHAT: session 1 is the last good one, yet good2.txt is there"
    fi
    ;;
  fallback)
    settle pc01
    check_files pc01
    h=$st/clients/pc01/health.json
    jq -e 'type == "object" and .last_good.session == 1' "$h" >/dev/null 2>&1 ||
      tb_fail "$WHAT: health.json: $(cat "$h")"
    cmp -s "$T/good1.ovl" "$st/clients/pc01/good/overlay" || tb_fail "$WHAT: good/overlay changed"
    ls_of pc01
    if grep -q bad-2.txt "$T/ls"; then # its own disk: the next strike brings the good one back
      nf=$(ev_count '.type == "last-known-good" and .client == "pc01" and .overlay')
      strike_session after.txt
      ev_wait '.type == "last-known-good" and .client == "pc01" and .overlay' "$nf" \
        "the client kept its bad disk, and the next strike brought no fall-back"
      ls_of pc01
    fi
    grep -q good1.txt "$T/ls" || tb_fail "$WHAT: neither the good session nor the client's own disk: $(cat "$T/ls")"
    ! grep -q 'bad-\|after' "$T/ls" || tb_fail "$WHAT: the fall-back left bad files: $(cat "$T/ls")"
    # The bad overlay is kept as a retained session.
    ls "$st/clients/pc01/sessions" 2>/dev/null | grep -q . || tb_fail "$WHAT: no retained session"
    check_files pc01
    ;;
  canary)
    # The canary record is written after the pins: present, it is whole and
    # its pins are there; absent, the promote was not acknowledged and runs
    # again.
    cf=$st/watchdog/canary-demo.json
    if [ -e "$cf" ]; then
      jq -e '.state == "running" and .version == 2 and .previous == 1 and .group == "lab"' "$cf" >/dev/null 2>&1 ||
        tb_fail "$WHAT: the canary record is not whole: $(cat "$cf")"
    else
      tctl image promote demo@2 --canary lab >"$T/promote.out" 2>&1 ||
        tb_fail "$WHAT: promote --canary after the cut: $(cat "$T/promote.out")"
    fi
    jq -e '.pin == 2' "$st/clients/lc01/mailbox.json" >/dev/null 2>&1 ||
      tb_fail "$WHAT: lc01 (group lab) is not pinned to the canary: $(cat "$st/clients/lc01/mailbox.json" 2>&1)"
    jq -e '.pin == 1' "$st/clients/oc01/mailbox.json" >/dev/null 2>&1 ||
      tb_fail "$WHAT: oc01 is not held on version 1: $(cat "$st/clients/oc01/mailbox.json" 2>&1)"
    ! ls -A "$st/watchdog" | grep -q tmp || tb_fail "$WHAT: a temporary is left in watchdog/: $(ls -A "$st/watchdog")"
    ;;
  quarantine)
    settle qc01
    check_files qc01
    for qd in "$st"/clients/qc01/quarantine/*/; do
      [ -d "$qd" ] || continue
      [ -f "$qd/overlay" ] && [ -f "$qd/note.json" ] ||
        tb_fail "$WHAT: a half-moved quarantine: $qd holds $(ls "$qd")"
      jq -e '.number and .reason' "$qd/note.json" >/dev/null 2>&1 ||
        tb_fail "$WHAT: $qd/note.json: $(cat "$qd/note.json")"
    done
    ls_of qc01
    if ended qc01 2 && ! ls "$st/clients/qc01/quarantine" 2>/dev/null | grep -q '^[0-9]'; then
      tb_fail "$WHAT: the session that wrote evil.exe ended, and it was never quarantined"
    fi
    if ls "$st/clients/qc01/quarantine" 2>/dev/null | grep -q '^[0-9]'; then
      ! grep -q 'evil.exe\|mine.txt' "$T/ls" || tb_fail "$WHAT: quarantined, yet the next session is not clean: $(cat "$T/ls")"
    else
      grep -q mine.txt "$T/ls" || tb_fail "$WHAT: not quarantined, and the client lost its disk: $(cat "$T/ls")"
    fi
    ;;
  esac
}

runs=${TB_POWERCUT_CASES:-good good:strict fallback fallback:strict quarantine quarantine:strict canary canary:strict}
for run in $runs; do
  case=${run%:strict}
  flag=
  [ "$case" = "$run" ] || flag=--strict
  reset_disk "$case"
  pc_mount $flag
  pc_daemon_start
  s0=$(wc -l <"$PC_STATE/syncs.log")
  op "$case"
  s1=$(wc -l <"$PC_STATE/syncs.log")
  td_stop
  pc_daemon_cut "$T/nf"
  n=$((s1 - s0))
  echo "== $case${flag:+ ($flag)}: $n sync calls; $cuts cuts"
  [ "$n" -gt 0 ] || tb_fail "$case made no sync call"
  i=1
  while [ $i -le "$cuts" ]; do
    at=$((s0 + (i * n + cuts - 1) / cuts)) # spread over the operation, its last call included
    [ $i -gt "$n" ] && at=$((s0 + $(od -An -N2 -tu2 /dev/urandom) % n + 1))
    reset_disk "$case"
    pc_mount $flag --cut-at $at
    pc_daemon_start_loose
    op "$case"
    pc_daemon_cut "$T/nf"
    WHAT="$case${flag:+ ($flag)}, cut at sync call $at ($(sed -n "${at}p" "$PC_STATE/syncs.log" | cut -d' ' -f2-))"
    mv "$T/daemon.log" "$T/daemon-cut.txt"
    rm -rf "$T/cut-records"
    mkdir "$T/cut-records"
    for id in pc01 qc01; do
      cp "$PC_STATE/disk/state/clients/$id/session.json" "$T/cut-records/$id.json" 2>/dev/null || true
    done
    pc_mount $flag
    pc_daemon_start
    check "$case"
    td_stop
    pc_daemon_cut "$T/nf"
    i=$((i + 1))
  done
done
grep -E 'AddressSanitizer|runtime error' "$T"/daemon*.txt "$T/daemon.log" 2>/dev/null &&
  tb_fail "sanitizer report in the daemon"
exit 0
