#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A client whose image has no version yet, whose pinned version is missing
# or has a corrupt manifest, or whose preserved or protected partition is not
# on its version is refused alone, at its own connection, with the reason in
# nbdkit's log and in a "refused" event; nbdkit starts and serves the other
# clients (issue 18: one such client crash-looped nbdkit for everybody).
# Fixing the cause (importing the missing version) serves the client again
# without a restart.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" 1048576 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_import "$state" torn "$TB_TMP/master.img"
chmod u+w "$state/images/torn/1.json"
printf '{"image": "torn", "vers' >"$state/images/torn/1.json"
cat >"$TB_TMP/c.json" <<EOF2
{
  "state_dir": "$state",
  "reconnect_grace": "0s",
  "images": { "demo": {}, "other": {}, "torn": {} },
  "clients": {
    "pc01": { "image": "demo" },
    "noversion": { "image": "other" },
    "pinned": { "image": "demo", "version": 7 },
    "corrupt": { "image": "torn", "version": 1 },
    "preserve": { "image": "demo", "preserve": ["partition:3"] },
    "protect": { "image": "demo", "watchdog": { "protect": [
      { "name": "sys", "region": "partition:2", "action": "deny" } ] } }
  }
}
EOF2
tb_start s "$TB_TMP/c.json"

tb_io s -e pc01 read:0:4096:1 || tb_fail "pc01 must be served beside the broken clients"

# refused ID REGEX: ID's connection fails; the log and a refused event say why.
refused()
{
  if tb_io s -e "$1" read:0:4096:1 >"$TB_TMP/$1.out" 2>&1; then
    tb_fail "client $1 was served"
  fi
  tb_assert_log s "client \"$1\" refused: .*$2" "the refusal of $1"
  jq -e -c "select(.type == \"refused\" and .client == \"$1\" and (.reason | test(\"$2\")))" \
    "$state/events.jsonl" >/dev/null || tb_fail "no refused event for $1 matching /$2/"
  echo "ok: $1: $(grep -m1 "client \"$1\" refused" "$TB_TMP/s.log")"
}
refused noversion 'image .other. has no versions yet.*tabulactl image import other'
refused pinned 'demo@7.*no version 7'
refused corrupt 'torn@1.*1.json: not valid JSON'
refused preserve 'clients.preserve.preserve.0. on demo@1.*partition 3'
refused protect 'clients.protect: demo@1.*protect .sys.'
tb_assert_log s 'client noversion is refused until this is fixed' "the start-up warning"

echo "== importing the missing version serves the client, without a restart"
tb_import "$state" other "$TB_TMP/master.img"
tb_io s -e noversion read:0:4096:1 || tb_fail "noversion after its image got a version"
tb_io s -e pc01 read:0:4096:1 || tb_fail "pc01 again"
tb_stop s
tb_check_logs
