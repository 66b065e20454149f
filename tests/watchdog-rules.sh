#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Watchdog file rules in the daemon, driven by real writes into the guest's
# ext4 through NBD (nbdfuse + debugfs -w):
#  - a created *.exe quarantines the overlay at session end: it is listed by
#    `tabulactl quarantine`, its note says why, and the next session is clean;
#  - a system file changed in place (content only: found through the dirty
#    map) asks for a rollback: the next session has the master's file again;
#  - a crash dump that exists locks the client down: its export is refused,
#    status shows the reason, `tabulactl unlock` serves it again;
#  - an alert rule on a live client fires within its interval, once.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"

tw_setup '{
  "pc01": { "image": "demo", "policy": "persist",
            "watchdog": { "rules": [
              { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "quarantine" },
              { "name": "hosts", "path": "/etc/hosts", "volume": "whole-ext4",
                "on": "changed", "action": "rollback" } ] } },
  "pc02": { "image": "demo",
            "watchdog": { "rules": [
              { "name": "dump", "path": "/crash/*.dmp", "on": "exists", "action": "lockdown" } ] } },
  "pc03": { "image": "demo", "policy": "persist",
            "watchdog": { "interval": "1s", "rules": [
              { "name": "notes", "path": "/home/*/notes.txt", "on": "deleted", "action": "alert" } ] } }
}'

echo "== a created .exe: quarantine, the next session is clean"
echo "MZ not really" >"$T/evil.exe"
echo "kept?" >"$T/mine.txt"
tw_session "$state" pc01 "write $T/evil.exe apps/evil.exe
write $T/mine.txt home/user/mine.txt"
tw_wait "$state" '.type == "watchdog-rule" and .client == "pc01" and .rule == "exe" and
  .kind == "created" and .path == "whole-ext4/apps/evil.exe" and .action == "quarantine"' "exe rule"
tw_wait "$state" '.type == "quarantine" and .client == "pc01" and .number == 1' "quarantine event"
# The diff went through the base version's index: a few files looked at, no fallback.
tw_wait "$state" '.type == "watchdog-scan" and .client == "pc01" and .scan == "session-end" and
  .index_files > 0 and .diff_fallbacks == 0 and .files_examined < 100' "indexed scan event"
[ ! -e "$state/clients/pc01/overlay" ] || tb_fail "the quarantined overlay is still the client's"
[ -f "$state/clients/pc01/quarantine/1/overlay" ] || tb_fail "no clients/pc01/quarantine/1/overlay"
tctl quarantine list >"$T/qlist" || tb_fail "quarantine list"
grep -Eq '^pc01 +1 +1 +demo@1 .*rule exe: created whole-ext4/apps/evil.exe' "$T/qlist" ||
  tb_fail "quarantine list: $(cat "$T/qlist")"
tctl quarantine show pc01 1 >"$T/qshow" || tb_fail "quarantine show"
jq -e '.hits[0].path == "whole-ext4/apps/evil.exe" and .session == 1 and .version == 1' \
  "$T/qshow" >/dev/null || tb_fail "quarantine show: $(cat "$T/qshow")"
tw_read "$state" pc01 "ls -l /apps" >"$T/ls"
grep -q tool.txt "$T/ls" || tb_fail "the next session cannot read /apps: $(cat "$T/ls")"
grep -q evil.exe "$T/ls" && tb_fail "evil.exe is still there in the next session"
tw_read "$state" pc01 "ls -l /home/user" | grep -q mine.txt &&
  tb_fail "the next session of a quarantined client is not clean"
[ "$(tw_count "$state" '.type == "quarantine"')" = 1 ] || tb_fail "a clean session was quarantined"

echo "== release with --restore, then release"
tctl quarantine release pc01 1 --restore >"$T/out" || tb_fail "release --restore: $(cat "$T/out")"
tw_read "$state" pc01 "ls -l /home/user" | grep -q mine.txt ||
  tb_fail "the restored overlay is not the client's at its next session"
tw_boot "$state" pc01
tw_wait "$state" '.type == "quarantine" and .client == "pc01" and .number == 2' "quarantined again"
tctl quarantine release pc01 2 >"$T/out" || tb_fail "release: $(cat "$T/out")"
[ ! -e "$state/clients/pc01/quarantine/2" ] || tb_fail "release left quarantine/2"
tctl quarantine list pc01 | grep -q 'no quarantined overlays' || tb_fail "list after release"
td_expect_fail "release of a missing one" 'no quarantined overlay 7' tctl quarantine release pc01 7

echo "== a system file changed in place: rollback"
tw_disk "$state" pc01
blk=$(debugfs -R "bmap etc/hosts 0" "$T/nf/disk" 2>/dev/null)
[ -n "$blk" ] || tb_fail "debugfs bmap"
printf '6.6.6.6 update.example\n' | dd of="$T/nf/disk" bs=4096 seek="$blk" conv=notrunc,fsync status=none
tw_undisk "$state" pc01
tw_wait "$state" '.type == "watchdog-rule" and .client == "pc01" and .rule == "hosts" and
  .kind == "changed" and .path == "whole-ext4/etc/hosts"' "hosts rule"
tw_wait "$state" '.type == "rollback" and .client == "pc01" and .by == "watchdog"' "rollback event"
tctl --json client pc01 | jq -e '.pending | index("rollback")' >/dev/null ||
  tb_fail "no pending rollback: $(tctl --json client pc01)"
tw_read "$state" pc01 "cat /etc/hosts" | grep -q '127.0.0.1 localhost' ||
  tb_fail "the next session does not have the master's /etc/hosts"

echo "== an existing crash dump: lockdown until unlock"
tw_session "$state" pc02 "mkdir crash
write $T/mine.txt crash/mem.dmp"
tw_wait "$state" '.type == "lockdown" and .client == "pc02" and .by == "watchdog"' "lockdown"
tctl client pc02 >"$T/client" || tb_fail "client pc02"
grep -q 'lockdown: rule dump: exists whole-ext4/crash/mem.dmp' "$T/client" ||
  tb_fail "status does not show the lockdown reason: $(cat "$T/client")"
# An admin may look (read-only); nothing may change the disk.
"$TB_IO" -s "$state/nbd.sock" -e pc02 !write:0:512:1 >"$T/out" 2>&1 ||
  tb_fail "a locked down client must be readable by an admin, not writable: $(cat "$T/out")"
tctl unlock pc02 >"$T/out" || tb_fail "unlock: $(cat "$T/out")"
grep -q 'unlocked' "$T/out" || tb_fail "unlock says: $(cat "$T/out")"
"$TB_IO" -s "$state/nbd.sock" -e pc02 rewrite:0:4096 >"$T/out" 2>&1 ||
  tb_fail "unlock did not restore the export: $(cat "$T/out")"
tw_wait "$state" '.type == "unlock" and .client == "pc02"' "unlock event"
td_expect_fail "unlock twice" 'not locked down' tctl unlock pc02

echo "== an interval scan of a live client"
tw_disk "$state" pc03
debugfs -w -R "rm home/user/notes.txt" "$T/nf/disk" >/dev/null 2>&1
sync
tw_wait "$state" '.type == "watchdog-rule" and .client == "pc03" and .scan == "interval" and
  .kind == "deleted"' "interval scan"
sleep 2.2
[ "$(tw_count "$state" '.type == "watchdog-rule" and .client == "pc03"')" = 1 ] ||
  tb_fail "a live client's hit was reported more than once"
tw_undisk "$state" pc03

td_stop
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T/daemon.log" && tb_fail "sanitizer report in the daemon"
exit 0
