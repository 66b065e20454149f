#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Guest file names the watchdog must record whatever their bytes (issue 14,
# items 1 and 2): a session creates, in its ext4, evil<0xFF>.exe (not UTF-8:
# any guest user can make one), a name with an OSC terminal escape, and
# hide/me.exe (a '/' in a name, written into the directory block raw, as a
# guest with raw disk access can).  A lockdown rule and a quarantine rule on
# /**/*.exe must both fire on all three: watchdog-rule events with the paths
# in the documented encoding (tb_guest_name: \xHH, "\\"), a lockdown the
# plugin enforces, a quarantine with its note, and no raw control byte in
# tabulactl's output.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"
. "$abs_top_srcdir/tests/watchdog-functions.sh"

tw_setup '{
  "pc01": { "image": "demo", "policy": "persist",
            "watchdog": { "rules": [
              { "name": "exe-lock", "path": "/**/*.exe", "on": "created", "action": "lockdown" },
              { "name": "exe", "path": "/**/*.exe", "on": "created", "action": "quarantine" } ] } }
}'

echo "MZ" >"$T/x.exe"
evil=$(printf 'evil\377.exe')
tw_disk "$state" pc01
printf 'write %s apps/%s\nwrite %s apps/QQQQpwnedQx.exe\nwrite %s apps/hideXme.exe\n' \
  "$T/x.exe" "$evil" "$T/x.exe" "$T/x.exe" | debugfs -w "$T/nf/disk" >"$T/debugfs.log" 2>&1
sync
# Bytes debugfs cannot type go into the directory block itself (libtsk does
# not check ext4's directory checksums, nor does a hostile guest keep them):
# hideXme.exe -> hide/me.exe, QQQQpwnedQx.exe -> ESC]0;pwned BEL x.exe.
patch_name()
{
  _offs=$(grep -obUa "$1" "$T/nf/disk" | cut -d: -f1)
  [ -n "$_offs" ] || tb_fail "$1 is not on the disk: $(cat "$T/debugfs.log")"
  for _o in $_offs; do
    printf "$2" | dd of="$T/nf/disk" bs=1 seek="$_o" conv=notrunc status=none
  done
}
patch_name 'hideXme\.exe' 'hide/me.exe'
patch_name 'QQQQpwnedQx\.exe' '\033]0;pwned\007x.exe'
sync
tw_undisk "$state" pc01

for p in 'evil\\xff.exe' '\\x1b]0;pwned\\x07x.exe' 'hide\\\\x2fme.exe'; do
  for r in exe-lock exe; do
    tw_wait "$state" ".type == \"watchdog-rule\" and .client == \"pc01\" and .rule == \"$r\" and
      .path == \"whole-ext4/apps/$p\"" "rule $r on $p"
  done
done
tw_wait "$state" '.type == "lockdown" and .client == "pc01" and .by == "watchdog"' "lockdown"
tw_wait "$state" '.type == "quarantine" and .client == "pc01" and .number == 1' "quarantine"
jq -e '.lockdown | test("^rule exe(-lock)?: created whole-ext4/apps/")' \
  "$state/clients/pc01/mailbox.json" >/dev/null ||
  tb_fail "the mailbox has no lockdown: $(cat "$state/clients/pc01/mailbox.json" 2>&1)"
"$TB_IO" -s "$state/nbd.sock" -e pc01 write:0:4096:1 >"$T/out" 2>&1 &&
  tb_fail "a locked down client was written"
[ -f "$state/clients/pc01/quarantine/1/overlay" ] || tb_fail "no quarantine/1/overlay"
jq -e '.hits | length == 6' "$state/clients/pc01/quarantine/1/note.json" >/dev/null ||
  tb_fail "the note does not list the hits: $(cat "$state/clients/pc01/quarantine/1/note.json")"
tctl quarantine list >"$T/qlist" 2>&1 || tb_fail "quarantine list: $(cat "$T/qlist")"
tctl client pc01 >"$T/client" 2>&1 || tb_fail "client: $(cat "$T/client")"
tctl events --last 50 >"$T/events" 2>&1 || tb_fail "events: $(cat "$T/events")"
for f in qlist client events; do
  LC_ALL=C grep -q "$(printf '[\001-\010\016-\037\177]')" "$T/$f" &&
    tb_fail "tabulactl printed a raw control character ($f): $(od -c "$T/$f" | head -20)"
done
grep -q 'cannot encode\|watchdog-error' "$T/daemon.log" "$state/events.jsonl" &&
  tb_fail "something was not recorded: $(grep 'cannot encode\|watchdog-error' "$T/daemon.log" "$state/events.jsonl")"

td_stop
tb_check_logs
grep -E 'AddressSanitizer|runtime error' "$T/daemon.log" && tb_fail "sanitizer report in the daemon"
exit 0
