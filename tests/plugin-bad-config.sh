#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# A bad configuration stops nbdkit before it serves anything, with an error
# that names the file, the JSON path and what was expected; the state
# directory is left exactly as it was.  (A client whose image or version is
# missing is refused alone: tests/plugin-broken-client.sh.)  A bad file written while nbdkit runs
# is refused and the running configuration kept.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" 1048576 1
tb_import "$state" demo "$TB_TMP/master.img"
cfg=$TB_TMP/bad.json
S="\"state_dir\": \"$state\""
snapshot()
{
  (cd "$state" && find . -type f -exec sha256sum {} + | sort)
}
before=$(snapshot)
n=0

# bad JSON-TEXT REGEX: nbdkit must refuse CONFIG and its stderr match REGEX.
bad()
{
  n=$((n + 1))
  printf '%s\n' "$1" >"$cfg"
  tb_refuses_to_start bad$n "$cfg"
  grep -Eq -- "$2" "$TB_TMP/bad$n.log" ||
    tb_fail "config $1: error does not match /$2/: $(cat "$TB_TMP/bad$n.log")"
  echo "ok: $(grep -m1 error "$TB_TMP/bad$n.log")"
}
C='"images": {"demo": {}}'

bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\" }" 'bad.json: line [0-9]+.*JSON'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", } } }" 'bad.json: line [0-9]+'
bad '[1, 2]' 'bad.json: .*expected an object'
bad "{ $C, \"clients\": {} }" 'bad.json: state_dir: missing'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", \"policy\": \"rollbak\" } } }" \
  'clients\.pc01\.policy: expected "rollback" or "persist", got "rollbak"'
bad "{ $S, \"block_size\": \"4096\", $C, \"clients\": {} }" 'block_size: expected .*got "4096"'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", \"keep_sessions\": \"two\" } } }" \
  'clients\.pc01\.keep_sessions: expected an integer'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": 7 } } }" 'clients\.pc01\.image: expected'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", \"allow\": \"unix\" } } }" \
  'clients\.pc01\.allow: expected'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", \"allow\": [\"300.1.1.1/8\"] } } }" \
  'clients\.pc01\.allow\[0\]: .*300\.1\.1\.1/8'
bad "{ $S, \"bogus\": 1, $C, \"clients\": {} }" 'bogus: unknown key'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"demo\", \"polcy\": \"persist\" } } }" \
  'clients\.pc01\.polcy: unknown key'
bad "{ $S, \"block_size\": 3000, $C, \"clients\": {} }" 'block_size: expected a power of two.*3000'
bad "{ $S, \"block_size\": 256, $C, \"clients\": {} }" 'block_size: expected a power of two.*256'
bad "{ $S, \"block_size\": 2097152, $C, \"clients\": {} }" 'block_size: expected a power of two.*2097152'
bad "{ $S, $C, \"clients\": { \"pc01\": { \"image\": \"nope\" } } }" 'clients\.pc01\.image: .*nope'
bad "{ $S, $C, \"clients\": { \"../x\": { \"image\": \"demo\" } } }" 'clients\.\.\./x: not a valid client id'
bad "{ $S, $C, \"watchdog\": { \"scan_timeout\": \"10ms\" }, \"clients\": {} }" \
  'watchdog\.scan_timeout: expected a duration from "100ms" to "1h", got "10ms"'
rm -f "$cfg"
tb_refuses_to_start nofile "$cfg"
tb_assert_log nofile 'bad.json: No such file' "a missing config file"

[ "$(snapshot)" = "$before" ] || tb_fail "a refused configuration changed the state directory"

echo "== a bad file written while nbdkit runs is refused, the running config kept"
tb_config "$TB_TMP/good.json" "$state" '{ "pc01": { "image": "demo" } }'
tb_start s "$TB_TMP/good.json"
tb_io s -e pc01 read:0:4096:1 || tb_fail "pc01 with the good config"
sleep 1 # a new mtime, whatever the filesystem's timestamp granularity
printf '{ "state_dir": 5 }\n' >"$TB_TMP/good.json"
tb_io s -e pc01 read:0:4096:1 || tb_fail "a bad reload must keep the running configuration"
tb_assert_log s 'not reloaded.*state_dir' "the refused reload must be logged with its JSON path"
tb_stop s
tb_check_logs
