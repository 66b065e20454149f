#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A session is a boot, not a connection (lib/live.c):
#  - a reconnect within reconnect_grace continues the session: a rollback
#    client's writes are still there, no rollback event, the same number;
#    the same after kill -9 and after a clean restart of nbdkit;
#  - another boot id (ID@boot/TOKEN) or a boot marker newer than the session
#    is a new boot: clean, and the old boot's connections get ESHUTDOWN;
#  - the same boot id reconnecting continues;
#  - when the grace runs out the session ends; the next connection is a new one;
#  - opening without a write (a probe) is no session: no turn, no session
#    record, the mailbox stays pending, reads show the disk the turn will give.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
tb_require jq

K=65536
state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
TB_RECONNECT_GRACE=30s tb_config "$TB_TMP/tabula.json" "$state" '{
    "pc41": { "image": "demo", "policy": "rollback", "keep_sessions": 3 },
    "pc42": { "image": "demo", "policy": "rollback", "reconnect_grace": "1s" },
    "vm01": { "image": "demo", "policy": "persist", "reconnect_grace": "0s" },
    "busy1": { "image": "demo" }
  }'
tb_start s "$TB_TMP/tabula.json"
pc=$state/clients/pc41
rollbacks() { tb_count_events rollback pc41 "$state"; }
starts() { tb_count_events session-start pc41 "$state"; }

echo "== a reconnect within the grace continues the session"
tb_io s -e pc41 write:0:$K:11 flush || tb_fail "pc41 first connection"
tb_io s -e pc41 read:0:$K:11 write:$K:4096:12 || tb_fail "pc41 was rolled back by a reconnect"
[ "$(rollbacks)" = 0 ] || tb_fail "a reconnect made a rollback event"
[ "$(starts)" = 1 ] || tb_fail "a reconnect started a new session ($(starts) session-start events)"
tb_event "$state" '.type == "session-reconnect" and .client == "pc41" and .session == 1' "reconnect"
flock -n "$pc/lock" true && tb_fail "the session in its grace must hold the client's lock"

echo "== kill -9 of nbdkit: the restarted nbdkit resumes the session"
tb_kill9 s
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc41 read:0:$K:11 read:$K:4096:12 || tb_fail "pc41 was rolled back by an nbdkit crash"
[ "$(rollbacks)" = 0 ] || tb_fail "a crash made a rollback event"
tb_event "$state" '.type == "session-resume" and .client == "pc41" and .session == 1' "resume"

echo "== a clean restart of nbdkit: the same"
tb_stop s
tb_start s "$TB_TMP/tabula.json"
tb_io s -e pc41 read:0:$K:11 write:$((2 * K)):4096:13 || tb_fail "pc41 was rolled back by a restart"
[ "$(rollbacks)" = 0 ] || tb_fail "a restart made a rollback event"
[ "$(starts)" = 1 ] || tb_fail "a restart started a new session"

echo "== a boot id: the same id continues, another id is a new boot"
tb_io s -e pc41@boot/aaaa-1 read:0:$K:1 write:0:4096:21 ||
  tb_fail "a new boot id must start clean"
[ "$(rollbacks)" = 1 ] || tb_fail "the new boot must roll back session 1"
tb_io s -e pc41@boot/aaaa-1 read:0:4096:21 || tb_fail "the same boot id must continue its session"
[ "$(starts)" = 2 ] || tb_fail "the same boot id started a new session"
tb_io s -e pc41@boot/bbbb-2 read:0:4096:1 || tb_fail "another boot id must start clean"
# It only read: the turn (and its rollback) waits for the boot's first write.
[ "$(rollbacks)" = 1 ] || tb_fail "a boot that only read made a rollback ($(rollbacks))"
st=0
tb_io s -e "pc41@boot/bad/token" read:0:1:0 >/dev/null 2>&1 || st=$?
[ $st -eq 2 ] || tb_fail "an invalid boot token was accepted"

echo "== the connections of an old boot get ESHUTDOWN"
# The old boot writes, waits while the machine "reboots", then reads again.
tb_io s -e pc41@boot/cccc-3 write:0:4096:31 sleep:4000 !read:0:4096:31 >"$TB_TMP/old.out" 2>&1 &
old=$!
i=0
until jq -e '.boot.token == "cccc-3"' "$pc/session.json" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 100 ] || tb_fail "boot cccc-3 never started"
  sleep 0.05
done
tb_io s -e pc41@boot/dddd-4 write:0:4096:41 || tb_fail "boot dddd-4"
wait $old || tb_fail "the old boot's connection must fail: $(cat "$TB_TMP/old.out")"
grep -q "ESHUTDOWN" "$TB_TMP/old.out" ||
  tb_fail "the old boot's connection must fail with ESHUTDOWN: $(cat "$TB_TMP/old.out")"
tb_io s -e pc41@boot/dddd-4 read:0:4096:41 || tb_fail "the new boot lost its write"

echo "== a boot marker newer than the session is a new boot"
n=$(starts)
printf '{"seq": 1, "at": %s, "via": "dhcp", "detail": "test"}' "$(($(date +%s%3N) + 6000))" \
  >"$pc/boot"
tb_io s -e pc41 read:0:4096:1 write:0:4096:51 || tb_fail "the marker's boot must start clean"
[ "$(starts)" = $((n + 1)) ] || tb_fail "a boot marker did not start a new session"
tb_event "$state" '.type == "session-start" and .client == "pc41" and .boot == "dhcp"' "boot via dhcp"
tb_io s -e pc41 read:0:4096:51 || tb_fail "a reconnect after the marker's boot must continue it"
[ "$(starts)" = $((n + 1)) ] || tb_fail "an old marker started another session"

echo "== the grace runs out: the session ends, the next connection is a new boot"
tb_io s -e pc42 write:0:4096:61 || tb_fail "pc42"
tb_wait_idle "$state" pc42
tb_io s -e pc42 read:0:4096:1 || tb_fail "pc42 after its grace must be clean"

echo "== probes change nothing: no turn, no record, the mailbox stays pending"
tb_io s -e vm01 write:0:4096:71 || tb_fail "vm01 session 1"
tb_stop s
printf '{"rollback": true}' >"$state/clients/vm01/mailbox.json"
tb_start s "$TB_TMP/tabula.json"
rec=$(cat "$state/clients/vm01/session.json")
# A probe reads the disk the next boot will get: the rollback is pending.
tb_io s -e vm01 read:0:4096:1 || tb_fail "a probe must see the disk the pending rollback gives"
# Listing works even with a locked-down client (an admin sees it read-only)
# and a client another process serves (busy: not listed, its views are).
printf '{"lockdown": "test"}' >"$state/clients/pc42/mailbox.json"
mkdir -p "$state/clients/busy1"
flock -o "$state/clients/busy1/lock" sleep 20 &
echo $! >"$TB_TMP/busy.bgpid"
if command -v nbdinfo >/dev/null 2>&1; then
  nbdinfo "nbd+unix:///vm01?socket=$TB_TMP/s.sock" >/dev/null || tb_fail "nbdinfo vm01"
  nbdinfo --list "nbd+unix:///?socket=$TB_TMP/s.sock" >"$TB_TMP/list.out" 2>&1 ||
    tb_fail "nbdinfo --list: $(cat "$TB_TMP/list.out")"
  grep -q 'export="busy1@live"' "$TB_TMP/list.out" || tb_fail "busy1's views must be listed"
  grep -q 'export="busy1"' "$TB_TMP/list.out" && tb_fail "busy1 is busy: its export must not be listed"
fi
rm "$state/clients/pc42/mailbox.json"
kill "$(cat "$TB_TMP/busy.bgpid")"
if command -v qemu-img >/dev/null 2>&1; then
  qemu-img info "nbd+unix:///vm01?socket=$TB_TMP/s.sock" >/dev/null || tb_fail "qemu-img info"
fi
jq -e '.rollback == true' "$state/clients/vm01/mailbox.json" >/dev/null ||
  tb_fail "a probe consumed the pending rollback"
[ "$(cat "$state/clients/vm01/session.json")" = "$rec" ] || tb_fail "a probe wrote a session record"
[ "$(tb_count_events session-start vm01 "$state")" = 1 ] || tb_fail "a probe started a session"
tb_io s -e vm01 read:0:4096:1 write:4096:4096:72 || tb_fail "the next real boot"
jq -e '.rollback != true' "$state/clients/vm01/mailbox.json" >/dev/null ||
  tb_fail "the boot that wrote must apply the rollback"
[ "$(tb_count_events session-start vm01 "$state")" = 2 ] || tb_fail "the boot must be session 2"
tb_stop s
tb_check_logs
