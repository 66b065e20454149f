#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# `image gc` and `image rm` keep every version the watchdog's state holds: the
# base of a client's last known good overlay (clients/ID/good/overlay), the
# base of each quarantined overlay (clients/ID/quarantine/N/overlay) and the
# last good version health.json names.  Without them a later fall-back to the
# last known good or a `quarantine release --restore` fails at session start.
# demo@1..3 are held so; demo@4 is held by nothing and goes; demo@5 is the
# newest.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup
. "$abs_top_srcdir/tests/daemon-functions.sh"

M=1048576
state=$TB_TMP/state
for v in 1 2 3 4 5; do
  tb_make_file "$TB_TMP/v$v.img" $((4 * M)) $v
done
# Overlays on demo@1 and demo@2: one session each, through the plugin alone.
tb_import "$state" demo "$TB_TMP/v1.img"
tb_config "$TB_TMP/setup.json" "$state" '{ "tmp1": { "image": "demo", "policy": "persist" },
  "tmp2": { "image": "demo", "policy": "persist" } }'
tb_start s "$TB_TMP/setup.json"
tb_io s -e tmp1 write:0:4096:7 flush || tb_fail "session on demo@1"
tb_stop s
tb_import "$state" demo "$TB_TMP/v2.img"
tb_start s "$TB_TMP/setup.json"
tb_io s -e tmp2 write:0:4096:7 flush || tb_fail "session on demo@2"
tb_stop s
for v in 3 4 5; do
  tb_import "$state" demo "$TB_TMP/v$v.img"
done

# pc01's watchdog state, as the watchdog leaves it; the setup clients go.
c=$state/clients/pc01
mkdir -p -m 700 "$c" "$c/good" "$c/quarantine" "$c/quarantine/1"
install -m 600 "$state/clients/tmp1/overlay" "$c/good/overlay"
install -m 600 "$state/clients/tmp2/overlay" "$c/quarantine/1/overlay"
printf '{"session": 4, "time": "2026-01-01T00:00:00Z"}\n' >"$c/quarantine/1/note.json"
printf '{"strikes": 0, "last_good": {"image": "demo", "version": 3, "session": 3,
  "time": "2026-01-01T00:00:00Z", "overlay": true}}\n' >"$c/health.json"
chmod 600 "$c/quarantine/1/note.json" "$c/health.json"
rm -rf "$state/clients/tmp1" "$state/clients/tmp2"

td_config "$TB_TMP/tabula.json" "$state" '{ "pc01": { "image": "demo", "policy": "persist" } }'
td_start "$TB_TMP/tabula.json"
for v in 1 2 3; do
  if tctl image rm demo@$v >"$TB_TMP/rm.out" 2>&1; then
    tb_fail "image rm demo@$v must be refused: $(cat "$TB_TMP/rm.out")"
  fi
done
grep -q "in use" "$TB_TMP/rm.out" || tb_fail "image rm: $(cat "$TB_TMP/rm.out")"
tctl --json image gc >"$TB_TMP/gc.json" || tb_fail "image gc"
for v in 1 2 3 5; do
  [ -f "$state/images/demo/$v.json" ] ||
    tb_fail "image gc removed demo@$v, which pc01's watchdog state holds: $(cat "$TB_TMP/gc.json")"
done
[ ! -f "$state/images/demo/4.json" ] || tb_fail "image gc must remove demo@4: $(cat "$TB_TMP/gc.json")"

# An overlay whose header cannot be read names no base: any version may be
# its base, so gc and rm remove nothing and say which file stops them
# (before: demo@1, the base of the damaged good overlay, was removed).
printf 'garbage!' | dd of="$c/good/overlay" conv=notrunc status=none
if tctl image rm demo@1 >"$TB_TMP/rm.out" 2>&1; then
  tb_fail "image rm demo@1 beside an unreadable overlay must be refused: $(cat "$TB_TMP/rm.out")"
fi
grep -q "cannot tell which versions are in use.*good" "$TB_TMP/rm.out" ||
  tb_fail "image rm must name the unreadable overlay: $(cat "$TB_TMP/rm.out")"
if tctl image gc >"$TB_TMP/gc.out" 2>&1; then
  tb_fail "image gc beside an unreadable overlay must be refused: $(cat "$TB_TMP/gc.out")"
fi
grep -q "removed nothing" "$TB_TMP/gc.out" || tb_fail "image gc: $(cat "$TB_TMP/gc.out")"
[ -f "$state/images/demo/1.json" ] || tb_fail "demo@1 was removed beside an unreadable overlay"
td_stop
tb_check_logs
