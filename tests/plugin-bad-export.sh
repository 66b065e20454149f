#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Bad export names are refused, each with its own clear error in nbdkit's log,
# and the server keeps serving everyone else: "../x", "a/b", 300 characters,
# an unknown client, the empty name when no client has the peer's address,
# admin-looking names with bad numbers, and names with odd bytes.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" 1048576 1
tb_import "$state" demo "$TB_TMP/master.img"
tb_config "$TB_TMP/tabula.json" "$state" '{ "pc01": { "image": "demo", "policy": "persist" } }'
tb_start s "$TB_TMP/tabula.json"
tb_hold s keep -e pc01 write:0:4096:2 flush # a session in progress all along

long=$(printf 'a%.0s' $(seq 300))
# refused EXPORT LOG-REGEX
refused()
{
  : >"$TB_TMP/s.log.mark"
  lines=$(wc -l <"$TB_TMP/s.log")
  st=0
  tb_io s -e "$1" read:0:1:0 >"$TB_TMP/client.out" 2>&1 || st=$?
  [ $st -eq 2 ] || tb_fail "export '$1' was not refused at connect (exit $st): $(cat "$TB_TMP/client.out")"
  tail -n +$((lines + 1)) "$TB_TMP/s.log" >"$TB_TMP/new.log"
  grep -Eq -- "$2" "$TB_TMP/new.log" ||
    tb_fail "export '$1': nbdkit's error does not match /$2/: $(cat "$TB_TMP/new.log")"
  echo "ok: $(grep -m1 -E -- "$2" "$TB_TMP/new.log" | cut -c1-160)"
  # Nothing else is affected.
  tb_io s -e pc01 read:0:4096:2 read:4096:4096:1 || tb_fail "pc01 broken after refusing '$1'"
}

refused '../x' 'invalid export name "\.\./x"'
refused 'a/b' 'unknown client "a/b"' # a disk's name (ID/DISK), of no client here
refused 'a/b/c' 'invalid export name "a/b/c"'
refused 'pc01/' 'invalid export name "pc01/"'
refused "$long" 'invalid export name "a{80}\.\.\."'
refused 'nobody' 'unknown client "nobody"'
refused '' 'no client is configured for address unix'
refused '.hidden' 'invalid export name'
refused 'pc01@session/0' 'invalid export name|no such|not retained'
refused 'pc01@session/99' 'pc01@session/99'
refused 'demo@7' 'export "demo@7": image demo has no version 7'
refused 'other@1' 'export "other@1": no image other'
refused 'nobody@live' 'export "nobody@live": no client nobody'
refused 'nobody@session/1' 'export "nobody@session/1": no client nobody'
# Bytes from the network never reach the log raw (no terminal escapes).
refused "$(printf 'pc01\033[2J')" 'invalid export name "pc01\?\[2J"'
grep 'error:' "$TB_TMP/s.log" | grep -q "$(printf '\033')" &&
  tb_fail "a raw escape character reached the plugin's error messages"

[ ! -e "$TB_TMP/x" ] && [ ! -e "$state/x" ] && [ ! -e "$state/clients/x" ] ||
  tb_fail "a path was created from a refused export name"
ls "$state/clients" | grep -qvx 'pc01' && tb_fail "unexpected client dirs: $(ls "$state/clients")"
tb_release keep
tb_stop s
tb_check_logs
