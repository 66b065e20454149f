#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Leftovers of interrupted work are reclaimed: a manifest temporary
# (images/demo/2.json.tmp.*, a publish cut between its write and its rename),
# an interrupted pull's partial image (pulls/demo/SHA/partial.img: a pull
# that failed with ENOSPC), a restore's overlay.restore and an overlay
# temporary in clients/ID.  The daemon's start removes the temporaries but
# keeps the interrupted pull (it resumes); tabulactl image gc reclaims it too.
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$abs_top_srcdir/tests/daemon-functions.sh"
tb_setup

state=$TB_TMP/state
tb_make_file "$TB_TMP/master.img" $((4 * 1024 * 1024)) 1
tb_import "$state" demo "$TB_TMP/master.img"
td_config "$TB_TMP/tabula.json" "$state" '{ "vm01": { "image": "demo", "policy": "persist" } }'
plant()
{
  printf '{"partial' >"$state/images/demo/2.json.tmp.Ab12Cd"
  mkdir -p -m 700 "$state/clients/vm01" "$state/pulls/demo/0123abcd"
  head -c 65536 /dev/urandom >"$state/clients/vm01/overlay.restore"
  head -c 4096 /dev/zero >"$state/clients/vm01/overlay.tmp.Qw34Er"
  head -c 1048576 /dev/urandom >"$state/pulls/demo/0123abcd/partial.img"
  printf '{"url": "http://127.0.0.1:1", "version": 2}\n' >"$state/pulls/demo/0123abcd/pull.json"
  : >"$state/pulls/demo/0123abcd/lock"
  chmod 600 "$state/images/demo/2.json.tmp.Ab12Cd" "$state/clients/vm01/"* "$state/pulls/demo/0123abcd/"*
}
plant
td_start "$TB_TMP/tabula.json"
for f in images/demo/2.json.tmp.Ab12Cd clients/vm01/overlay.restore clients/vm01/overlay.tmp.Qw34Er; do
  [ ! -e "$state/$f" ] || tb_fail "the daemon's start left $f"
done
[ -f "$state/pulls/demo/0123abcd/partial.img" ] ||
  tb_fail "the daemon's start removed an interrupted pull (it would resume)"
plant
tctl image gc >"$TB_TMP/gc.out" || tb_fail "image gc: $(cat "$TB_TMP/gc.out")"
for f in images/demo/2.json.tmp.Ab12Cd clients/vm01/overlay.restore clients/vm01/overlay.tmp.Qw34Er \
  pulls/demo/0123abcd; do
  [ ! -e "$state/$f" ] || tb_fail "tabulactl image gc left $f: $(cat "$TB_TMP/gc.out")"
done
tb_io() { "$TB_IO" -s "$state/nbd.sock" "$@"; }
tb_io -e vm01 write:0:4096:3 flush || tb_fail "vm01 after gc"
td_stop
