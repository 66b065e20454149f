#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Every tabulactl command against a running daemon, for both policies and a
# group: status, clients, client, sessions, rollback, restore, reimage, pin,
# unpin, refresh (client and group), image list/rm/gc, events, reload (a bad
# file is refused and the old one stays), --json, --help, exit codes.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

K=65536
M=$((4 * 1024 * 1024))
state=$TB_TMP/state
tb_make_file "$TB_TMP/v1.img" $M 1
tb_make_file "$TB_TMP/v2.img" $M 2
tb_make_file "$TB_TMP/o1.img" $M 3
conf=$TB_TMP/tabula.json
td_config "$conf" "$state" '{
    "pc01": { "image": "demo", "policy": "rollback", "keep_sessions": 3 },
    "vm01": { "image": "demo", "policy": "persist" },
    "lab1": { "group": "lab" },
    "lab2": { "group": "lab", "policy": "rollback" }
  }' '"groups": { "lab": { "image": "demo", "policy": "persist" } }'
TD_CONF=$conf

echo "== image import / list without a daemon"
tctl image import demo "$TB_TMP/v1.img" --note "first" >"$TB_TMP/out" || tb_fail "import v1"
grep -q "as demo@1" "$TB_TMP/out" || tb_fail "import must say demo@1: $(cat "$TB_TMP/out")"
tctl image import other "$TB_TMP/o1.img" >/dev/null || tb_fail "import other"
tctl image list | grep -Eq '^demo +1 +4\.0 MiB .* first$' || tb_fail "image list: $(tctl image list)"
[ "$(tctl --json image list | jq '[.images[].versions[]] | length')" = 2 ] || tb_fail "image list --json"
td_expect_fail "status without a daemon" "not running" tctl status
st=0; tctl status 2>/dev/null || st=$?
[ $st -eq 3 ] || tb_fail "status without a daemon must exit 3, got $st"

td_start "$conf"

echo "== status, clients"
tctl status >"$TB_TMP/out" || tb_fail "status"
grep -q "nbdkit:   running" "$TB_TMP/out" || tb_fail "status: $(cat "$TB_TMP/out")"
grep -q "4 configured" "$TB_TMP/out" || tb_fail "status clients: $(cat "$TB_TMP/out")"
tctl --json clients | jq -e '[.clients[] | select(.id == "lab1" and .group == "lab" and .policy == "persist")] | length == 1' >/dev/null ||
  tb_fail "lab1 inherits persist from group lab: $(tctl --json clients)"
tctl --json clients | jq -e '.clients[] | select(.id == "lab2") | .policy == "rollback"' >/dev/null ||
  tb_fail "lab2 overrides the group's policy"
tctl clients | grep -Eq '^vm01 +- +persist +- +demo@1 +new' || tb_fail "clients table: $(tctl clients)"

echo "== sessions of both policies, client, sessions"
sock=$state/nbd.sock
tb_io() { "$TB_IO" -s "$sock" "$@"; }
tb_io -e pc01 write:0:$K:11 || tb_fail "pc01 session 1"
tb_wait_idle "$state" pc01
tb_io -e vm01 write:0:$K:21 || tb_fail "vm01 session 1"
tb_wait_idle "$state" vm01
tb_io -e pc01 read:0:$K:1 write:$K:$K:12 || tb_fail "pc01 session 2 starts clean"
tb_wait_idle "$state" pc01
# (a session is a boot that writes: rewrite changes no byte)
tb_io -e vm01 read:0:$K:21 rewrite:0:4096 || tb_fail "vm01 session 2 keeps its overlay"
tb_wait_idle "$state" vm01
tctl client pc01 >"$TB_TMP/out" || tb_fail "client pc01"
grep -q "^policy: *rollback" "$TB_TMP/out" || tb_fail "client pc01: $(cat "$TB_TMP/out")"
grep -q "^base: *demo@1" "$TB_TMP/out" || tb_fail "client pc01 base: $(cat "$TB_TMP/out")"
grep -q "^dirty: *64.0 KiB" "$TB_TMP/out" || tb_fail "client pc01 dirty: $(cat "$TB_TMP/out")"
tctl --json client vm01 | jq -e '.state == "idle" and .session == 2 and .dirty_bytes == 65536 and .keeps_overlay == true and .pinned == false' >/dev/null ||
  tb_fail "client vm01 --json: $(tctl --json client vm01)"
tctl sessions pc01 | grep -Eq '^1 +demo@1 +64.0 KiB' || tb_fail "sessions pc01: $(tctl sessions pc01)"
tctl --json sessions pc01 | jq -e '.sessions | length == 1' >/dev/null || tb_fail "sessions --json"

echo "== rollback of a persist client"
tctl rollback vm01 | grep -q "rollback at the next session" || tb_fail "rollback message"
tctl --json client vm01 | jq -e '.pending == ["rollback"]' >/dev/null || tb_fail "rollback pending"
tb_io -e vm01 read:0:$K:1 rewrite:0:4096 || tb_fail "vm01 must start clean after rollback"
tb_wait_idle "$state" vm01
tctl --json client vm01 | jq -e '.pending == []' >/dev/null || tb_fail "rollback applied"
tb_event "$state" '.type == "rollback" and .client == "vm01" and .applies == "next-session"' "rollback event"

echo "== restore a retained session"
tctl restore vm01 --session 2 | grep -q "session 2" || tb_fail "restore"
tb_io -e vm01 read:0:$K:21 rewrite:0:4096 || tb_fail "vm01 must see session 2's data after restore"
tb_wait_idle "$state" vm01
td_expect_fail "restore of a missing session" "no retained session 99" tctl restore vm01 --session 99

echo "== pin / unpin"
tctl image import demo "$TB_TMP/v2.img" --note second >/dev/null
tctl --json client pc01 | jq -e '.next_version == 2' >/dev/null || tb_fail "pc01 follows the newest"
tctl pin pc01 1 | grep -q "pinned to demo@1" || tb_fail "pin"
tctl --json client pc01 | jq -e '.next_version == 1 and .pinned == true' >/dev/null || tb_fail "pinned"
tb_io -e pc01 read:0:$K:1 rewrite:0:4096 || tb_fail "pinned pc01 must run on version 1"
tb_wait_idle "$state" pc01
tctl unpin pc01 | grep -q "unpinned" || tb_fail "unpin"
tb_io -e pc01 read:0:$K:2 rewrite:0:4096 || tb_fail "unpinned pc01 must run on version 2"
tb_wait_idle "$state" pc01
td_expect_fail "pin to a missing version" "no version 9" tctl pin pc01 9

echo "== persist stays pinned to its base; refresh moves it"
tb_io -e vm01 read:0:$K:21 || tb_fail "vm01 stays on version 1 with its overlay"
tb_wait_idle "$state" vm01
tctl refresh vm01 | grep -q "current version" || tb_fail "refresh"
tb_io -e vm01 read:0:$K:2 rewrite:0:4096 || tb_fail "vm01 must be on version 2 after refresh"
tb_wait_idle "$state" vm01

echo "== refresh of a group"
tb_io -e lab1 write:0:$K:31 || tb_fail "lab1"
tb_wait_idle "$state" lab1
tctl refresh --group lab | grep -q "group lab: 2 clients" || tb_fail "refresh --group"
tctl --json client lab1 | jq -e '.pending == ["refresh"]' >/dev/null || tb_fail "lab1 refresh pending"
tctl --json client lab2 | jq -e '.pending == ["refresh"]' >/dev/null || tb_fail "lab2 refresh pending"
td_expect_fail "refresh of an unknown group" 'no client is in group "nope"' tctl refresh --group nope

echo "== reimage"
tctl reimage lab1 other@1 | grep -q "other@1" || tb_fail "reimage"
tb_io -e lab1 read:0:$K:3 rewrite:0:4096 || tb_fail "lab1 must start on other@1"
tb_wait_idle "$state" lab1
tctl --json client lab1 | jq -e '.image == "other" and .version == 1' >/dev/null || tb_fail "lab1 on other@1"
td_expect_fail "reimage to a missing image" "no versions" tctl reimage lab1 nothere

echo "== image rm / gc"
tctl image import demo "$TB_TMP/v1.img" --note third >/dev/null # demo@3
td_expect_fail "rm of a version in use" "in use.*(vm01|lab1)" tctl image rm demo@2
tctl rollback pc01 >/dev/null
tctl image gc --dry-run >"$TB_TMP/out" || tb_fail "gc --dry-run"
grep -q "would free" "$TB_TMP/out" || tb_fail "gc --dry-run: $(cat "$TB_TMP/out")"
[ -f "$state/images/demo/1.json" ] || tb_fail "dry run removed something"
tctl --json image gc >"$TB_TMP/gc.json" || tb_fail "gc"
# demo@1 is referenced by retained sessions of pc01/vm01; demo@2 by overlays.
jq -e '.removed == []' "$TB_TMP/gc.json" >/dev/null || tb_fail "gc removed a referenced version: $(cat "$TB_TMP/gc.json")"
rm -rf "$state/clients/pc01/sessions" "$state/clients/vm01/sessions" "$state/clients/lab1/sessions" "$state/clients/lab2/sessions"
tctl image gc >"$TB_TMP/out" || tb_fail "gc 2"
grep -q "removed demo@1" "$TB_TMP/out" || tb_fail "gc must free demo@1 once unreferenced: $(cat "$TB_TMP/out")"
grep -q "freed 1 version" "$TB_TMP/out" || tb_fail "gc summary: $(cat "$TB_TMP/out")"
[ ! -f "$state/images/demo/1.json" ] || tb_fail "demo@1 still published"
tctl image rm demo@3 2>/dev/null && tb_fail "rm of the newest version that clients follow must be refused"
tb_event "$state" '.type == "image-gc"' "gc event"

echo "== events"
tctl events --last 3 | wc -l | grep -qx 3 || tb_fail "events --last 3: $(tctl events --last 3)"
tctl --json events --client vm01 --last 50 | jq -se 'all(.client == "vm01") and length > 3' >/dev/null ||
  tb_fail "events --client vm01"
tctl events --follow --client pc01 --last 0 >"$TB_TMP/follow.out" 2>&1 &
fpid=$!
sleep 0.5
tb_io -e pc01 read:0:4096:1 rewrite:0:4096 || tb_fail "pc01 session for follow (demo@3 = v1)"
tb_wait_idle "$state" pc01
i=0
until grep -q "session-end" "$TB_TMP/follow.out"; do
  i=$((i + 1)); [ $i -lt 100 ] || tb_fail "events --follow did not show session-end: $(cat "$TB_TMP/follow.out")"
  sleep 0.1
done
kill $fpid; wait $fpid 2>/dev/null || true
grep -q "vm01" "$TB_TMP/follow.out" && tb_fail "events --follow --client pc01 showed vm01"

echo "== reload: a bad file is refused, the old one stays"
cp "$conf" "$TB_TMP/good.json"
sed -i 's/"rollback", "keep_sessions": 3/"rollbak", "keep_sessions": 3/' "$conf"
td_expect_fail "reload of a bad file" 'clients.pc01.policy: expected "rollback" or "persist", got "rollbak"' tctl reload
tctl status >/dev/null || tb_fail "daemon must keep serving after a refused reload"
kill -HUP "$(td_pid)"
sleep 0.3
grep -q "configuration not reloaded" "$TB_TMP/daemon.log" || tb_fail "SIGHUP with a bad file must be logged"
cp "$TB_TMP/good.json" "$conf"
jq '.clients.pc02 = {"image": "demo"}' "$TB_TMP/good.json" >"$conf"
tctl reload | grep -q "5 clients" || tb_fail "reload with a new client"
tctl --json clients | jq -e '[.clients[].id] | index("pc02") != null' >/dev/null || tb_fail "pc02 after reload"

echo "== errors and help"
td_expect_fail "unknown client" 'no client "nobody"' tctl client nobody
td_expect_fail "bad id" "invalid client id" tctl client ../x
st=0; tctl merge 2>/dev/null || st=$?
[ $st -eq 2 ] || tb_fail "merge without arguments must exit 2, got $st"
for c in status clients client sessions rollback restore merge reimage pin unpin refresh events reload; do
  tctl $c --help | grep -q "^usage: tabulactl $c" || tb_fail "$c --help"
done
tctl image --help | grep -q "image import" || tb_fail "image --help"
# image publish and pull are in the command table like the rest (issue 17
# §5): its --help, its unknown-option and operand messages with the usage
# line, exit 2, and options checked before the configuration is read.
for c in "image publish" "image pull"; do
  tctl $c --help | grep -q "^usage: tabulactl $c" || tb_fail "$c --help"
  st=0; "$TD_CTL" -c "$TB_TMP/no-such.json" $c demo --bogus 2>"$TB_TMP/err" || st=$?
  [ $st -eq 2 ] && grep -q "^tabulactl: unknown option --bogus" "$TB_TMP/err" &&
    grep -q "^usage: tabulactl $c " "$TB_TMP/err" || tb_fail "$c --bogus: exit $st: $(cat "$TB_TMP/err")"
done
st=0; tctl image publish demo 2>"$TB_TMP/err" || st=$?
[ $st -eq 2 ] && grep -q "^tabulactl: expected IMAGE\[@N\] DIR" "$TB_TMP/err" ||
  tb_fail "image publish with one operand: exit $st: $(cat "$TB_TMP/err")"
td_expect_fail "image pull --from without a value" "^tabulactl: option --from needs a value" \
  tctl image pull demo --from
td_expect_fail "merge --into without a value" "^tabulactl: option --into needs a value" \
  tctl merge pc01 --into
st=0; tctl image pull demo --parallel 0 2>"$TB_TMP/err" || st=$?
[ $st -eq 2 ] && grep -q "^usage: tabulactl image pull " "$TB_TMP/err" ||
  tb_fail "image pull --parallel 0: exit $st: $(cat "$TB_TMP/err")"
"$TD_DAEMON" --help | grep -q "^usage: tabula-restored" || tb_fail "tabula-restored --help"
# --help says what each command does (issue 18 §5): a line under each.
tctl --help | grep -A1 '^  merge ' | grep -q '^  *Build IMAGE@N+1' || tb_fail "--help: no line for merge"
tctl --help | grep -A1 '^  status ' | grep -q '^  *Show the daemon' || tb_fail "--help: no line for status"

td_stop
tb_check_logs
grep -Eq 'AddressSanitizer|runtime error' "$TB_TMP/daemon.log" && tb_fail "sanitizer: $(cat "$TB_TMP/daemon.log")"
echo PASS
